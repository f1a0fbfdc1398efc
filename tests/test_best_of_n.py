"""Best-of-n for a user (`pluralign generate`, :func:`pluralign.dpo.best_of_n.best_of_n`).

The best answer is the argmax of ``estimator.reward`` for that user over the returned candidates; users of
opposite tastes (examples/train.jsonl: ana and ben prefer short answers, cleo and dev long ones) pick
different answers from the same candidates; the same seed gives the same candidates; unknown users get the
zero-shot weights and are flagged; the CLI's --json and table, its errors, and docs/best_of_n.md's commands.
Tiny random causal LMs built offline; one slow test with the real SmolLM2.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.dpo.best_of_n import best_of_n, load_reward_model, open_policy, policy_for_user
from pluralign.dpo.generate import PolicyRun, generate_texts
from pluralign.dpo.models import tiny_causal_lm, word_tokenizer
from pluralign.errors import PluralignError
from pluralign.estimator import PALB

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "train.jsonl"
PROMPT = "How do I boil an egg?"
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
runner = CliRunner()


class LengthEncoder:
    """Texts as (characters / 100, 1): with a linear item map, every reward is monotone in length."""

    id = "test-length"
    dim = 2

    def encode(self, texts, *, batch_size=64, show_progress=False):
        return np.array([[len(t) / 100, 1.0] for t in texts], dtype=np.float32)


def example_words() -> list[str]:
    rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    return [row[key] for row in rows for key in ("prompt", "chosen", "rejected")]


def save_tiny(folder: Path, chat: bool = False) -> Path:
    tokenizer = word_tokenizer([*example_words(), "<user> <assistant>"])
    if chat:
        tokenizer.chat_template = CHAT
    model = tiny_causal_lm(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="module")
def length_reward():
    return PALB(n_prototypes=2, f_layers=1, encoder=LengthEncoder(), seed=0).fit(EXAMPLES)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """The README's quickstart model (examples/train.jsonl, MiniLM), trained through the CLI."""
    out = tmp_path_factory.mktemp("reward") / "mine"
    result = runner.invoke(app, ["train", str(EXAMPLES), "--out", str(out), "--epochs", "100"])
    assert result.exit_code == 0, result.output
    return out


def texts_of(result) -> list[str]:
    return [text for text, _ in result.candidates]


def test_best_is_the_argmax_of_the_users_rewards(length_reward, policy_dir):
    result = best_of_n(length_reward, policy_dir, PROMPT, "ana", n=8, max_new_tokens=12, seed=1)
    texts = texts_of(result)
    assert len(texts) == 8 and len(set(texts)) > 1  # sampled, not 8 copies of one answer
    rewards = length_reward.reward("ana", PROMPT, texts)
    np.testing.assert_allclose([r for _, r in result.candidates], rewards)
    assert result.best == texts[int(np.argmax(rewards))] and result.best_reward == pytest.approx(
        rewards.max()
    )
    assert result.best_index == int(np.argmax(rewards)) and result.known_user
    assert result.policy["chat_template"] is False and result.policy["source"] == "policy"


def test_opposite_tastes_pick_different_answers_from_the_same_candidates(length_reward, policy_dir):
    results = {
        user: best_of_n(length_reward, policy_dir, PROMPT, user, n=8, max_new_tokens=12)
        for user in ("ana", "ben", "cleo", "dev")
    }
    texts = texts_of(results["ana"])
    assert all(texts_of(r) == texts for r in results.values())  # one candidate set
    lengths = [len(t) for t in texts]
    shortest, longest = texts[int(np.argmin(lengths))], texts[int(np.argmax(lengths))]
    assert shortest != longest
    assert results["ana"].best == results["ben"].best == shortest
    assert results["cleo"].best == results["dev"].best == longest


def test_same_seed_same_candidates_and_the_callers_rng_is_untouched(length_reward, policy_dir):
    state = torch.random.get_rng_state()
    first = best_of_n(length_reward, policy_dir, PROMPT, "ana", n=6, max_new_tokens=8, seed=3)
    again = best_of_n(length_reward, policy_dir, PROMPT, "cleo", n=6, max_new_tokens=8, seed=3)
    other = best_of_n(length_reward, policy_dir, PROMPT, "ana", n=6, max_new_tokens=8, seed=4)
    assert texts_of(first) == texts_of(again) != texts_of(other)
    assert torch.equal(torch.random.get_rng_state(), state)
    # one batched generate call: the same texts as generate_texts with n answers
    run = open_policy(policy_dir)
    batched = generate_texts(
        run.model, run.tokenizer, PROMPT, chat=False, n=6, max_new_tokens=8, do_sample=True, seed=3
    )
    assert [t.strip() for t in batched] == texts_of(first)


def test_unknown_users_get_the_zero_shot_weights(length_reward, policy_dir):
    result = best_of_n(length_reward, policy_dir, PROMPT, "zed", n=4, max_new_tokens=8)
    assert not result.known_user and result.to_dict()["user_weights"] == "zero-shot"
    stranger = best_of_n(length_reward, policy_dir, PROMPT, "yolanda", n=4, max_new_tokens=8)
    assert [r for _, r in stranger.candidates] == [r for _, r in result.candidates]
    mean = length_reward.zero_shot_weights_.float()  # the seen users' mean weights
    items = torch.from_numpy(LengthEncoder().encode(texts_of(result)))
    contexts = torch.from_numpy(LengthEncoder().encode([PROMPT] * 4))  # PAL-B's g maps the prompt
    assert length_reward.context_dim_ == LengthEncoder.dim
    with torch.no_grad():
        expected = length_reward.model_.rewards(mean[None].expand(4, -1), items, contexts)
    np.testing.assert_allclose([r for _, r in result.candidates], expected.double().numpy(), rtol=1e-5)


def test_chat_policies_are_prompted_with_their_template(length_reward, tmp_path):
    chat_dir = save_tiny(tmp_path / "chat", chat=True)
    result = best_of_n(length_reward, chat_dir, PROMPT, "ana", n=3, max_new_tokens=6, seed=2)
    assert result.policy["chat_template"] is True
    run = open_policy(chat_dir)
    chat = generate_texts(
        run.model, run.tokenizer, PROMPT, chat=True, n=3, max_new_tokens=6, do_sample=True, seed=2
    )
    raw = generate_texts(
        run.model, run.tokenizer, PROMPT, chat=False, n=3, max_new_tokens=6, do_sample=True, seed=2
    )
    assert texts_of(result) == [t.strip() for t in chat] != [t.strip() for t in raw]


def test_em_dpo_runs_serve_a_known_users_type_and_mmra_otherwise(length_reward, policy_dir):
    base = open_policy(policy_dir)
    models = [base.model, tiny_causal_lm(len(base.tokenizer), seed=5)]
    posteriors = pd.DataFrame([[0.9, 0.1], [0.2, 0.8]], index=["ana", "cleo"])

    class TwoTypes:  # what select_policy reads from a loaded EM-DPO run
        n_types = 2
        mmra = SimpleNamespace(weights=np.array([0.0, 1.0]))

        def __init__(self):
            self.posteriors = posteriors

        def policy(self, t):
            return models[t]

        def type_of(self, user):
            return int(np.argmax(posteriors.loc[user].to_numpy()))

    run = PolicyRun(base.folder, "em-dpo", False, base.tokenizer, em=TwoTypes())
    assert policy_for_user(run, "ana")[1] == {
        "source": "user",
        "user": "ana",
        "type": 0,
        "posterior": [0.9, 0.1],
    }
    model, info = policy_for_user(run, "zed", seed=2)  # unknown to the policy run: the MMRA mixture
    assert model is models[1] and info["source"] == "mmra" and info["type"] == 1
    result = best_of_n(length_reward, run, PROMPT, "cleo", n=3, max_new_tokens=6)
    assert result.policy["source"] == "user" and result.policy["type"] == 1
    expected = generate_texts(
        models[1], base.tokenizer, PROMPT, chat=False, n=3, max_new_tokens=6, do_sample=True
    )
    assert texts_of(result) == [t.strip() for t in expected]


def test_bad_arguments_are_clear_errors(length_reward, policy_dir, reward_run, tmp_path):
    with pytest.raises(PluralignError, match="n must be an integer >= 1"):
        best_of_n(length_reward, policy_dir, PROMPT, "ana", n=0)
    with pytest.raises(PluralignError, match="not a causal LM"):
        best_of_n(length_reward, tmp_path, PROMPT, "ana")
    with pytest.raises(PluralignError, match="not a causal LM"):  # the reward model given as the policy
        best_of_n(length_reward, reward_run / "model", PROMPT, "ana")
    with pytest.raises(PluralignError, match="no such run directory"):
        load_reward_model(tmp_path / "nothing")
    cases = [
        ([str(tmp_path / "nothing"), "--policy", str(policy_dir)], "no such run directory"),
        ([str(reward_run), "--policy", str(tmp_path)], "not a causal LM"),
        ([str(reward_run), "--policy", str(tmp_path / "nope")], "no such policy folder"),
        ([str(reward_run), "--policy", str(policy_dir), "--n", "0"], "--n must be >= 1"),
        ([str(reward_run), "--policy", str(policy_dir), "--temperature", "0"], "temperature must be > 0"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["generate", *args, "--user", "ana", "--prompt", PROMPT])
        assert result.exit_code == 2 and message in result.output.replace("\n", ""), (args, result.output)


def test_cli_json_matches_the_python_api_and_the_reward_model(reward_run, policy_dir):
    args = ["generate", str(reward_run), "--policy", str(policy_dir), "--user", "cleo", "--prompt", PROMPT]
    args += ["--n", "5", "--max-new-tokens", "10", "--seed", "7"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    texts = [c["text"] for c in out["candidates"]]
    est = load_reward_model(reward_run)
    rewards = est.reward("cleo", PROMPT, texts)
    np.testing.assert_allclose([c["reward"] for c in out["candidates"]], rewards, rtol=1e-6)
    assert out["best"] == texts[int(np.argmax(rewards))] and out["best_index"] == int(np.argmax(rewards))
    assert out["known_user"] is True and out["user_weights"] == "fitted" and out["settings"]["n"] == 5
    api = best_of_n(est, policy_dir, PROMPT, "cleo", n=5, max_new_tokens=10, seed=7)
    assert texts_of(api) == texts
    table = runner.invoke(app, [*args[:4], "--user", "newcomer", *args[6:]])
    assert table.exit_code == 0, table.output
    assert "unknown: zero-shot weights" in table.stdout and "best: " in table.stdout


def doc_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "best_of_n.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- best-of-n commands.*?-->\n```bash\n(.*?)```", text, re.S)
    assert block, "docs/best_of_n.md has no marked command block"
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_the_docs_commands_run_on_a_tiny_policy(policy_dir, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = doc_commands()
    assert [c[:2] for c in commands] == [
        ["pluralign", "train"],
        ["pluralign", "generate"],
        ["pluralign", "generate"],
    ]
    outputs = []
    for argv in commands:
        argv = [str(policy_dir) if a == "smollm2" else a for a in argv[1:]]
        result = runner.invoke(app, [*argv, "--json"])
        assert result.exit_code == 0, (argv, result.output)
        outputs.append(json.loads(result.stdout))
    _, ana, cleo = outputs
    assert ana["user"] == "ana" and cleo["user"] == "cleo" and len(ana["candidates"]) == 8
    assert [c["text"] for c in ana["candidates"]] == [c["text"] for c in cleo["candidates"]]


@pytest.mark.slow
def test_best_of_8_with_smollm2_as_in_the_docs(reward_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))  # the plain SmolLM2 copy goes there
    result = best_of_n(reward_run, "smollm2", PROMPT, "ana", n=8, max_new_tokens=48, temperature=0.7)
    texts = texts_of(result)
    assert len(set(texts)) == 8 and all(texts)
    assert result.policy["method"] == "smollm2" and result.policy["chat_template"] is True
    rewards = load_reward_model(reward_run).reward("ana", PROMPT, texts)
    assert result.best == texts[int(np.argmax(rewards))]
