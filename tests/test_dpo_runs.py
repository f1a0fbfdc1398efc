"""`pluralign dpo train` / `generate` end to end on a tiny local model: what a run leaves on disk.

Every saved policy loads with the standard Auto classes from its folder alone and generates; EM-DPO runs
restore (types, posteriors, MMRA); held-out log-prob changes are reported, with a warning when training did
not move the policy; a run that fails leaves no folder; 9 pairs at batch 8 train.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.dpo.models import tiny_causal_lm, word_tokenizer

runner = CliRunner()
WORDS = ["red apple", "blue sky", "green tree"]
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def save_tiny(folder, chat: bool):
    tokenizer = word_tokenizer(["question 0 1 2 3 4 5 : <user> <assistant>", *WORDS])
    if chat:
        tokenizer.chat_template = CHAT
    model = tiny_causal_lm(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_lm"), chat=False)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_chat_lm"), chat=True)


def write_rankings(path, users=6, questions=4, minority=True):
    rows = []
    for u in range(users):
        order = WORDS if u < users * 2 // 3 or not minority else WORDS[::-1]
        for q in range(questions):
            rows.append(
                {"user_id": f"u{u}", "prompt": f"question {q} :", "responses": [" " + w for w in order]}
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    return write_rankings(tmp_path_factory.mktemp("data") / "rankings.jsonl")


def train(out, data, model, *extra):
    result = invoke(
        "dpo", "train", data, "--out", out, "--model", model, "--lr", 5e-2, "--threads", 1, *extra
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir, chat_model_dir, rankings):
    root = tmp_path_factory.mktemp("runs")
    made = {}
    agree = write_rankings(root / "agree.jsonl", minority=False)  # one taste: held-out pairs are learnable
    made["dpo"] = train(root / "dpo", agree, model_dir, "--method", "dpo", "--epochs", 2)
    made["mixdpo-lora"] = train(
        root / "mixdpo-lora",
        rankings,
        chat_model_dir,
        "--method",
        "mixdpo-gamma",
        "--lora-r",
        4,
        "--epochs",
        2,
    )
    made["em"] = train(root / "em", rankings, model_dir, "--method", "em-dpo", "--epochs", 2)
    made["em-lora"] = train(
        root / "em-lora", rankings, chat_model_dir, "--method", "em-dpo", "--lora-r", 4, "--epochs", 2
    )
    return root, made


def auto_generate(model, tokenizer, text):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return out


def test_policies_load_with_auto_classes_and_generate(runs, model_dir, chat_model_dir):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = runs
    folders = {
        root / "dpo": False,
        root / "mixdpo-lora": True,
        root / "em" / "type_0": False,
        root / "em" / "type_1": False,
        root / "em-lora" / "type_0": True,
        root / "em-lora" / "type_1": True,
    }
    for folder, adapter in folders.items():
        cls = AutoPeftModelForCausalLM if adapter else AutoModelForCausalLM
        model = cls.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        auto_generate(model, tokenizer, "question 1 :")
        assert (folder / "generation_config.json").is_file()
        card = (folder / "README.md").read_text()
        assert (
            card.startswith("---\nbase_model:")
            and f"library_name: {'peft' if adapter else 'transformers'}" in card
        )
        assert '"beta"' not in card or "| beta |" in card  # hyperparameters table
        if adapter:
            config = json.loads((folder / "adapter_config.json").read_text())
            base = chat_model_dir if "lora" in str(folder) else model_dir
            assert config["base_model_name_or_path"] == str(base.resolve())
            # only this type's adapter: no nested adapter folders
            assert not [p for p in folder.iterdir() if p.is_dir()]
    assert "beta_distribution" in (root / "mixdpo-lora" / "README.md").read_text()
    assert "users_assigned" in (root / "em" / "type_1" / "README.md").read_text()


def test_em_run_folders_and_restore(runs):
    from pluralign.dpo.artifacts import load_em_dpo

    root, made = runs
    for name in ("em", "em-lora"):
        folder = root / name
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["type_0", "type_1"]
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
        state = json.loads((folder / "em_dpo.json").read_text())
        assert set(state["mmra"]) >= {"weights", "values", "regret", "max_regret", "normalize"}
        assert state["mmra"]["normalize"] is True
        assert state["mmra"]["values_from"] == "held-out rankings"
        loaded = load_em_dpo(folder)
        assert loaded.n_types == 2 and loaded.peft == (name == "em-lora")
        assert set(loaded.posteriors.index) == {f"u{u}" for u in range(6)}
        assert loaded.mmra.weights.tolist() == pytest.approx(made[name]["mmra_weights"])
        assert loaded.chat_template == (name == "em-lora")
        t = loaded.type_of("u0")
        assert t == int(max(range(2), key=lambda k: state["posteriors"]["u0"][k]))
        # the two restored policies are different models
        ids = loaded.tokenizer("question 1 : red apple", return_tensors="pt")
        with torch.no_grad():
            a = loaded.policy(0)(**ids).logits.clone()
            b = loaded.policy(1)(**ids).logits
        assert not torch.allclose(a, b)


def test_summary_reports_held_out_shift(runs):
    _, made = runs
    shift = made["dpo"]["heldout"]
    assert shift["pairs"] == 6  # 2 held-out rankings x 3 pairs
    assert shift["moved"] is True and shift["implicit_reward_accuracy"] == 1.0
    assert shift["mean_logp_change_chosen"] > shift["mean_logp_change_rejected"]
    assert set(made["em"]["heldout"]) <= {"type_0", "type_1"} and made["em"]["heldout"]
    assert made["mixdpo-lora"]["chat_template"] is True and made["dpo"]["chat_template"] is False


def test_untrained_adapter_is_flagged(tmp_path, model_dir, rankings, caplog):
    with caplog.at_level(logging.WARNING, logger="pluralign.dpo.evaluate"):
        summary = train(
            tmp_path / "still", rankings, model_dir, "--lora-r", 4, "--max-steps", 1, "--lr", 1e-12
        )
    assert summary["steps"] == 1
    assert summary["heldout"]["moved"] is False
    assert abs(summary["heldout"]["mean_logp_change_chosen"]) < 1e-4
    assert "did not move the policy" in caplog.text


@pytest.mark.parametrize("method", ["dpo", "mixdpo-gamma", "em-dpo"])
def test_one_pair_left_over_trains(tmp_path, model_dir, method):
    # 3 rankings of 3 responses = 9 pairs at batch 8: the last batch holds 1 pair
    data = write_rankings(tmp_path / "r.jsonl", users=3, questions=1)
    summary = train(tmp_path / "out", data, model_dir, "--method", method, "--holdout", 0, "--batch-size", 8)
    assert summary["rankings"] == 3
    if method != "em-dpo":
        assert summary["pairs"] == 9 and summary["steps"] == 2


def test_failed_run_leaves_no_folder(tmp_path, model_dir, rankings, monkeypatch):
    import pluralign.dpo.artifacts as artifacts

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifacts, "write_model_card", boom)
    out = tmp_path / "runs" / "late"
    with pytest.raises(RuntimeError, match="disk full"):
        invoke("dpo", "train", rankings, "--out", out, "--model", model_dir, "--max-steps", 1)
    # the model was saved before the failure: kept, marked, beside out (and out itself never appears)
    failed = tmp_path / "runs" / "late.failed"
    assert not out.exists() and [p.name for p in (tmp_path / "runs").iterdir()] == ["late.failed"]
    state = json.loads((failed / "FAILED.json").read_text())
    assert state["error"] == "RuntimeError: disk full" and "model.safetensors" in state["files"]
    # a failure before anything is saved leaves nothing
    import pluralign.dpo.run as run_module

    monkeypatch.setattr(run_module, "load_causal_lm", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        invoke("dpo", "train", rankings, "--out", tmp_path / "runs" / "early", "--model", model_dir)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["late.failed"]
    # an existing non-empty folder is refused before any training
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = invoke("dpo", "train", rankings, "--out", out, "--model", model_dir)
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def generate_json(*args):
    result = invoke("dpo", "generate", *args, "--max-new-tokens", 3, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_from_every_source(runs):
    root, made = runs
    out = generate_json(root / "dpo", "--prompt", "question 2 :")
    assert out["source"] == "policy" and out["method"] == "dpo" and out["chat_template"] is False
    assert isinstance(out["text"], str)
    out = generate_json(root / "mixdpo-lora", "--prompt", "question 2 :")
    assert out["chat_template"] is True
    for name in ("em", "em-lora"):
        out = generate_json(root / name, "--prompt", "question 2 :", "--type", 1)
        assert out["source"] == "type" and out["type"] == 1
        out = generate_json(root / name, "--prompt", "question 2 :", "--user", "u5")
        posterior = json.loads((root / name / "em_dpo.json").read_text())["posteriors"]["u5"]
        assert out["source"] == "user" and out["type"] == max(range(2), key=lambda k: posterior[k])
        out = generate_json(root / name, "--prompt", "question 2 :", "--unknown-user", "--seed", 3)
        assert out["source"] == "mmra" and out["mixture_weights"] == pytest.approx(made[name]["mmra_weights"])
    # the same text through the Python API, and generate == the type's own greedy continuation
    from pluralign.dpo.generate import generate

    again = generate(root / "em", "question 2 :", type=1, max_new_tokens=3)
    assert again["text"] == generate_json(root / "em", "--prompt", "question 2 :", "--type", 1)["text"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", 5], "type 5 out of range"),
        (["--user", "nobody"], "unknown user 'nobody'"),
        ([], "choose --type T, --user U or --unknown-user"),
        (["--type", 0, "--unknown-user"], "give one of"),
    ],
)
def test_generate_errors_for_em_runs(runs, args, message):
    root, _ = runs
    result = invoke("dpo", "generate", root / "em", "--prompt", "question 1 :", *args)
    assert result.exit_code == 2 and message in result.output.replace("\n", "")


def test_generate_errors_for_single_policies(runs, tmp_path):
    root, _ = runs
    result = invoke("dpo", "generate", root / "dpo", "--prompt", "question 1 :", "--user", "u1")
    assert result.exit_code == 2 and "--user is for EM-DPO runs" in result.output.replace("\n", "")
    result = invoke("dpo", "generate", tmp_path, "--prompt", "question 1 :")
    assert result.exit_code == 2 and "not a saved policy" in result.output.replace("\n", "")
