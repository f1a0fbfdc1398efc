"""pluralign.rl.PrototypePolicies (one GRPO LoRA policy per prototype), `pluralign rl train/generate`, prompt
files, and the personal-policy benchmark at toy size.

The reward model is PAL-B K = 2 over a length encoder on examples/train.jsonl (ana and ben prefer short
answers, cleo and dev long ones), so the prototypes reward length in opposite directions; policies are tiny
random Llamas with a word tokenizer, saved to a folder (adapters record it as their base).
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.data.prompts import read_prompts
from pluralign.dpo.mmra import min_max_regret
from pluralign.errors import DataError, PluralignError
from pluralign.estimator import PALB
from pluralign.estimator.params import dataclass_params
from pluralign.rl.policies import POLICIES_FILE, PrototypePolicies, PrototypePolicyConfig
from test_best_of_n import EXAMPLES, LengthEncoder, save_tiny

pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I boil an egg?", "What is a good first bike?", "How should I learn to cook?"]
runner = CliRunner()


def tiny_config(**overrides) -> PrototypePolicyConfig:
    settings = dict(
        max_steps=2,
        prompts_per_step=2,
        num_generations=2,
        max_completion_length=6,
        lora_r=2,
        lora_alpha=4,
        eval_samples=2,
        logging_steps=1,
        lora_targets="q_proj,v_proj",
    )
    return PrototypePolicyConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def reward():
    return PALB(n_prototypes=2, f_layers=1, encoder=LengthEncoder(), seed=0).fit(EXAMPLES)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="module")
def fitted(reward, base_dir):
    return PrototypePolicies(reward, str(base_dir), tiny_config()).fit(PROMPTS)


def lora(model, adapter):
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n and "lora_B" in n
    }


def test_each_prototype_trains_its_own_adapter(fitted):
    b0, b1 = lora(fitted.model_, "prototype_0"), lora(fitted.model_, "prototype_1")
    assert b0 and b1 and len(b0) == len(b1)
    assert all(v.abs().sum() > 0 for v in b0.values()) and all(v.abs().sum() > 0 for v in b1.values())
    assert any(not torch.equal(b0[n], b1[n.replace("prototype_0", "prototype_1")]) for n in b0)
    assert [h["steps"] for h in fitted.history_] == [2, 2]
    assert all(h["seconds_per_step"] > 0 and h["log"] for h in fitted.history_)
    logged = fitted.history_[1]["log"][0]
    assert "rewards/pluralign_prototype_1_reward/mean" in logged  # prototype 1's reward drove adapter 1


def test_training_one_adapter_leaves_the_others_unchanged(reward, base_dir):
    policies = PrototypePolicies(reward, str(base_dir), tiny_config(max_steps=1))
    seen = {}
    original = PrototypePolicies._train_one

    def spy(self, model, *args):
        k = args[3]
        before = {a: lora(model, a) for a in ("prototype_0", "prototype_1")}
        out = original(self, model, *args)
        after = {a: lora(model, a) for a in ("prototype_0", "prototype_1")}
        seen[k] = {a: any(not torch.equal(before[a][n], after[a][n]) for n in before[a]) for a in before}
        return out

    PrototypePolicies._train_one = spy
    try:
        policies.fit(PROMPTS)
    finally:
        PrototypePolicies._train_one = original
    assert seen == {
        0: {"prototype_0": True, "prototype_1": False},
        1: {"prototype_0": False, "prototype_1": True},
    }


def test_values_are_prototype_rewards_of_each_policys_answers(fitted, reward):
    """values_[k, s] recomputed independently: policy s's sampled answers scored by prototype k alone."""
    n = fitted.config.eval_samples
    contexts = [p for p in PROMPTS for _ in range(n)]
    for s in range(2):
        answers = fitted.sample(PROMPTS, s)
        for k in range(2):
            expected = reward.reward(None, contexts, answers, weights=np.eye(2)[k]).mean()
            assert fitted.values_[k, s] == pytest.approx(expected, rel=1e-6)
    with fitted.model_.disable_adapter():
        base = fitted.sample(PROMPTS, None)
    for k in range(2):
        expected = reward.reward(None, contexts, base, weights=np.eye(2)[k]).mean()
        assert fitted.base_values_[k] == pytest.approx(expected, rel=1e-6)
    reference = min_max_regret(fitted.values_, normalize=True)
    np.testing.assert_allclose(fitted.mmra_.weights, reference.weights)
    assert fitted.mmra_.max_regret == pytest.approx(reference.max_regret)


def test_routes_known_users_by_weight_and_unknown_users_by_mmra(fitted, reward):
    weights = reward.user_weights()
    for user in weights.index:
        route = fitted.route(user)
        assert route.prototype == int(np.argmax(weights.loc[user])) and route.source == "user-argmax"
        assert route.known_user
    draws = [fitted.route("ana", strategy="sample", seed=s).prototype for s in range(400)]
    w = weights.loc["ana"].to_numpy()
    assert np.mean(draws) == pytest.approx(w[1], abs=0.08)  # drawn in proportion to the weights
    assert draws == [fitted.route("ana", strategy="sample", seed=s).prototype for s in range(400)]  # seeded
    stranger = fitted.route("stranger", seed=3)
    assert stranger.source == "mmra" and not stranger.known_user
    assert stranger.weights == pytest.approx(fitted.mmra_.weights.tolist())
    assert fitted.route(weights=[0.1, 0.9]).prototype == 1
    assert fitted.route(weights=[3, 1]).weights == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"user": "ana", "weights": [0.5, 0.5]}, "not both"),
        ({"weights": [1.0]}, "2 non-negative numbers"),
        ({"weights": [-1.0, 2.0]}, "non-negative"),
        ({"weights": [0.0, 0.0]}, "not all 0"),
        ({"user": "ana", "strategy": "best"}, "argmax' or 'sample"),
    ],
)
def test_bad_routes_are_refused(fitted, kwargs, message):
    with pytest.raises(PluralignError, match=message):
        fitted.route(**kwargs)


def test_fit_leaves_the_callers_random_streams_alone(reward, base_dir):
    random.seed(11)
    np.random.seed(11)  # noqa: NPY002 - the global streams are what is checked
    torch.manual_seed(11)
    expected = (random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002
    random.seed(11)
    np.random.seed(11)  # noqa: NPY002
    torch.manual_seed(11)
    PrototypePolicies(reward, str(base_dir), tiny_config(max_steps=1)).fit(PROMPTS[:2])
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected  # noqa: NPY002


def test_same_seed_same_policies(reward, base_dir, fitted):
    again = PrototypePolicies(reward, str(base_dir), tiny_config()).fit(PROMPTS)
    np.testing.assert_allclose(again.values_, fitted.values_)
    for a in ("prototype_0", "prototype_1"):
        first, second = lora(fitted.model_, a), lora(again.model_, a)
        assert all(torch.allclose(first[n], second[n]) for n in first)


def test_save_and_load_round_trip(fitted, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = fitted.save(tmp_path / "policies")
    state = json.loads((out / POLICIES_FILE).read_text())
    assert state["adapters"] == ["prototype_0", "prototype_1"] and state["mmra"]["normalize"] is True
    loaded = PrototypePolicies.load(out)
    np.testing.assert_allclose(loaded.values_, fitted.values_)
    np.testing.assert_allclose(loaded.mmra_.weights, fitted.mmra_.weights)
    assert loaded.user_weights_.equals(fitted.user_weights_)
    ids = torch.tensor([[3, 4, 5, 6]])
    fitted.model_.eval()
    for k in range(2):
        fitted.model_.set_adapter(f"prototype_{k}")
        loaded.model_.set_adapter(f"prototype_{k}")
        torch.testing.assert_close(loaded.model_(ids).logits, fitted.model_(ids).logits)
        alone = AutoPeftModelForCausalLM.from_pretrained(out / f"prototype_{k}")  # standard tools load it
        torch.testing.assert_close(alone(ids).logits, fitted.model_(ids).logits)
        card = (out / f"prototype_{k}" / "README.md").read_text()
        assert "base_model:" in card and "library_name: peft" in card and "- grpo" in card
    for user in ("ana", "cleo", "stranger"):
        assert loaded.generate(PROMPTS[0], user, max_new_tokens=4) == fitted.generate(
            PROMPTS[0], user, max_new_tokens=4
        )
    with pytest.raises(PluralignError, match="not empty"):
        fitted.save(out)
    fitted.save(out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no staging left behind


def test_generate_says_what_served_it(fitted):
    result = fitted.generate(PROMPTS[1], "stranger", max_new_tokens=4)
    assert result["source"] == "mmra" and result["known_user"] is False and isinstance(result["text"], str)
    assert fitted.generate(PROMPTS[1], "cleo", max_new_tokens=4)["source"] == "user-argmax"


def test_unfitted_and_misuse_errors(reward, tmp_path):
    with pytest.raises(PluralignError, match="not fitted"):
        PrototypePolicies(reward).route("ana")
    with pytest.raises(PluralignError, match="needs the reward model"):
        PrototypePolicies(None).fit(PROMPTS)
    with pytest.raises(PluralignError, match="list of prompts"):
        PrototypePolicies(reward).fit("one prompt")
    with pytest.raises(PluralignError, match="position"):
        PrototypePolicies(reward).fit(["ok", "  "])
    with pytest.raises(PluralignError, match=r"no policies\.json"):
        PrototypePolicies.load(tmp_path)
    with pytest.raises(PluralignError, match="num_generations"):
        PrototypePolicyConfig(num_generations=1)
    with pytest.raises(PluralignError, match="chat_template"):
        PrototypePolicyConfig(chat_template="yes")


def test_cli_options_come_from_the_config():
    params = {p.name: p for p in dataclass_params(PrototypePolicyConfig, "GRPO")}
    defaults = PrototypePolicyConfig()
    assert set(params) == set(vars(defaults))
    assert all(params[name].default == getattr(defaults, name) for name in params)
    result = runner.invoke(app, ["rl", "train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in params:
        assert "--" + name.replace("_", "-") in result.output


# --- prompt files ---------------------------------------------------------------------------------------
def test_read_prompts_formats_and_repeats(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("How do I boil an egg?\n\nWhat is a good first bike?\nHow do I boil an egg?\n")
    assert read_prompts(txt) == (["How do I boil an egg?", "What is a good first bike?"], 1)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n"b"\n{"prompt": "a"}\n')
    assert read_prompts(jsonl) == (["a", "b"], 1)
    listed = tmp_path / "p.json"
    listed.write_text('["a", {"prompt": "c"}]')
    assert read_prompts(listed).prompts == ["a", "c"]
    assert read_prompts(EXAMPLES).prompts  # a preference file works


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a"}\n{"text": "b"}\n', r"p.jsonl:2: field 'prompt': required"),
        ('{"prompt": "a"}\n{"prompt": 3}\n', r"p.jsonl:2: field 'prompt': expected a prompt string, got int"),
        ('"a"\n{"prompt": "  "}\n', r"p.jsonl:2: field 'prompt': empty prompt"),
        ('"a"\nnot json\n', r"p.jsonl:2: not JSON"),
        ("\n\n", "no prompts"),
    ],
)
def test_read_prompts_errors_name_file_line_field(tmp_path, text, message):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_prompts(path)


# --- the CLI --------------------------------------------------------------------------------------------
DOCS = ROOT / "docs" / "policies.md"
TINY = [
    "--max-steps",
    "1",
    "--prompts-per-step",
    "2",
    "--num-generations",
    "2",
    "--max-completion-length",
    "4",
]
TINY += ["--lora-r", "2", "--eval-samples", "1", "--lora-targets", "q_proj"]


def docs_commands() -> list[list[str]]:
    text = DOCS.read_text()
    block = text[text.index("<!-- rl-commands -->") : text.index("<!-- /rl-commands -->")]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("pluralign ")]


def test_docs_commands_run(base_dir, tmp_path, monkeypatch):
    """docs/policies.md's commands, in order, in a scratch folder: the tiny policy for 'smollm2' and tiny
    GRPO settings appended; their outputs are checked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES, tmp_path / "examples" / "train.jsonl")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    train, rl_train, known, unknown = docs_commands()
    assert (
        train[0] == "train"
        and rl_train[:2] == ["rl", "train"]
        and known[:2] == unknown[:2] == ["rl", "generate"]
    )
    result = runner.invoke(app, train)
    assert result.exit_code == 0, result.output
    rl_train = [str(base_dir) if arg == "smollm2" else arg for arg in rl_train]
    result = runner.invoke(app, [*rl_train, *TINY], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "base model" in result.stdout and "MMRA worst-prototype regret" in result.stdout
    state = json.loads((tmp_path / "runs" / "policies" / POLICIES_FILE).read_text())
    assert state["users"] == ["ana", "ben", "cleo", "dev"] and len(state["adapters"]) == 2
    again = runner.invoke(app, [*rl_train, *TINY])
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    result = runner.invoke(app, [*rl_train, *TINY, "--json", "--overwrite"])
    summary = json.loads(result.stdout)
    assert summary["n_prototypes"] == 2 and summary["steps"] == [1, 1]
    assert np.array(summary["values"]).shape == (2, 2)
    served = runner.invoke(app, known)
    assert served.exit_code == 0, served.output
    assert "user-argmax" in served.stdout and "ana" in served.stdout
    stranger = runner.invoke(app, unknown)
    answer = json.loads(stranger.stdout)
    assert answer["source"] == "mmra" and answer["known_user"] is False and answer["user"] == "someone-new"
    bad = runner.invoke(app, [*known, "--weights", "a,b"])
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output


# --- the benchmark --------------------------------------------------------------------------------------
def test_benchmark_runs_end_to_end_at_toy_size(tmp_path):
    import argparse

    from conftest import HashEncoder
    from pluralign.dpo.models import tiny_causal_lm, word_tokenizer
    from pluralign.dpo.run import load_causal_lm

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import personal_policy as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tokenizer = word_tokenizer([*bench.prompts_for(200, 0), "yes no maybe good bad"])
    tiny_causal_lm(len(tokenizer), seed=0).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    settings = argparse.Namespace(
        users=6, minority=0.34, pairs=6, noise=0.1, train_prompts=4, test_prompts=2, candidates=4,
        max_tokens=6, steps=2, prompts_per_step=2, generations=2, lr=1e-3, dpo_lr=1e-4, eval_samples=2,
        value_prompts=2, dpo=False, seed=0, dpo_model=str(tmp_path / "base"),
        partial=tmp_path / "partial.json",
    )  # fmt: skip
    result = bench.run(settings, lm=lambda: load_causal_lm(str(tmp_path / "base")), encoder=HashEncoder())
    methods = [r["method"] for r in result["rows"]]
    assert methods[0] == "base model" and len(methods) == 5
    assert result["rows"][0]["win long"] == pytest.approx(0.5)  # the base against itself
    assert all(0 <= r[f"win {k}"] <= 1 for r in result["rows"] for k in ("long", "short"))
    assert set(result["mmra"]["worst_type_regret"]) == {"MMRA over prototype policies", "pooled GRPO policy"}
    assert result["pairs"] == 6 * 6
    assert json.loads((tmp_path / "partial.json").read_text())["rows"] == result["rows"]


def test_grpo_moves_each_policy_towards_its_prototype(reward, base_dir):
    """Prototype 0 rewards short answers (ana, ben), prototype 1 long ones (cleo, dev): after GRPO, policy
    0 answers shorter than the base model and policy 1 longer, and each prototype values its own policy
    most (so MMRA, with nothing to prefer, mixes them)."""
    assert reward.user_weights().loc["ana", "w0"] > 0.5 > reward.user_weights().loc["cleo", "w0"]
    config = PrototypePolicyConfig(
        max_steps=20,
        prompts_per_step=3,
        num_generations=4,
        max_completion_length=12,
        lora_r=4,
        lora_alpha=8,
        eval_samples=4,
        learning_rate=3e-2,
        lora_targets="q_proj,v_proj",
    )
    policies = PrototypePolicies(reward, str(base_dir), config).fit(PROMPTS)
    length = [np.mean([len(t) for t in policies.sample(PROMPTS, k, n=8, seed=5)]) for k in range(2)]
    with policies.model_.disable_adapter():
        base = np.mean([len(t) for t in policies.sample(PROMPTS, None, n=8, seed=5)])
    assert length[0] < base < length[1]
    assert policies.values_[0, 0] > policies.values_[0, 1] and policies.values_[1, 1] > policies.values_[1, 0]
    assert policies.mmra_.weights.min() > 0.2  # each prototype's best policy is the other's worst


def test_reward_models_without_prototype_weights_are_refused(base_dir):
    from pluralign.estimator import MatrixFactorization

    mf = MatrixFactorization(n_prototypes=2, encoder=LengthEncoder(), seed=0).fit(EXAMPLES)
    with pytest.raises(PluralignError, match="not weights over prototypes"):
        PrototypePolicies(mf, str(base_dir), tiny_config()).fit(PROMPTS)


def test_fewer_prompts_than_a_step_takes_still_train_every_step(reward, base_dir):
    """3 prompts, 4 per step: TRL's sampler would yield no batch (0 steps, silently); a step takes all 3."""
    policies = PrototypePolicies(reward, str(base_dir), tiny_config(prompts_per_step=4)).fit(PROMPTS)
    assert [h["steps"] for h in policies.history_] == [2, 2]
    assert [h["prompts_per_step"] for h in policies.history_] == [3, 3]
