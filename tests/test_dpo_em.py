"""EM-DPO: Plackett-Luce and posteriors against direct formulas, type recovery on a planted mixture, MMRA."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from trl import DPOConfig

from pluralign.dpo.em import EMDPOTrainer, plackett_luce_log_likelihood, type_posteriors
from pluralign.dpo.models import tiny_causal_lm, word_tokenizer

RESPONSES = [" red apple", " blue sky", " green tree"]


def brute_force_pl(rewards: list[float]) -> float:
    """log P(ranking) = sum_i log(exp(r_i) / sum_{j >= i} exp(r_j)), term by term."""
    total = 0.0
    for i in range(len(rewards) - 1):
        total += rewards[i] - math.log(sum(math.exp(r) for r in rewards[i:]))
    return total


def test_plackett_luce_matches_direct_formula():
    rng = np.random.default_rng(0)
    lengths = [2, 3, 5, 4]
    padded = torch.full((2, len(lengths), 5), 99.0, dtype=torch.float64)  # padding must be ignored
    expected = np.zeros((2, len(lengths)))
    for t in range(2):
        for r, m in enumerate(lengths):
            values = rng.normal(size=m) * 3
            padded[t, r, :m] = torch.from_numpy(values)
            expected[t, r] = brute_force_pl(values.tolist())
    got = plackett_luce_log_likelihood(padded, torch.tensor(lengths))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # pairs: Bradley-Terry
    pair = torch.tensor([[1.5, -0.25]], dtype=torch.float64)
    assert plackett_luce_log_likelihood(pair, torch.tensor([2])).item() == pytest.approx(
        torch.nn.functional.logsigmoid(torch.tensor(1.75, dtype=torch.float64)).item()
    )
    # the probabilities of all orderings of 3 items sum to 1
    rewards = [0.3, -1.2, 2.0]
    total = sum(math.exp(brute_force_pl([rewards[i] for i in p])) for p in itertools.permutations(range(3)))
    assert total == pytest.approx(1.0)


def test_type_posteriors_is_bayes_rule():
    ll = np.array([[-1.0, -2.0], [-0.5, -3.0], [-4.0, -0.1]])
    users = np.array([0, 0, 1])
    posterior, per_user = type_posteriors(ll, users, 2, np.log([0.7, 0.3]))
    np.testing.assert_allclose(per_user, [[-1.5, -5.0], [-4.0, -0.1]])
    joint = np.array(
        [[0.7 * math.exp(-1.5), 0.3 * math.exp(-5.0)], [0.7 * math.exp(-4.0), 0.3 * math.exp(-0.1)]]
    )
    np.testing.assert_allclose(posterior, joint / joint.sum(1, keepdims=True))
    # no underflow for very unlikely users
    posterior, _ = type_posteriors(ll * 1e4, users, 2, np.log([0.5, 0.5]))
    assert np.isfinite(posterior).all()


def planted(pairs: bool, seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """16 users of type 0 (red > blue > green) and 8 of type 1 (the reverse), 6 questions each."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for u in range(24):
        t = int(u < 8)
        truth[f"u{u}"] = t
        order = [0, 1, 2] if t == 0 else [2, 1, 0]
        for q in range(6):
            ranked = [RESPONSES[i] for i in order]
            if pairs:
                keep = np.sort(rng.choice(3, 2, replace=False))
                ranked = [ranked[keep[0]], ranked[keep[1]]]
            rows.append({"user_id": f"u{u}", "prompt": f"question {q} :", "responses": ranked})
    return pd.DataFrame(rows), truth


def em_config(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 16,
        "num_train_epochs": 2,
        "learning_rate": 5e-3,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "logging_strategy": "no",
        "beta": 0.5,
    }
    settings.update(overrides)
    return DPOConfig(**settings)


TOKENIZER = word_tokenizer(["question 0 1 2 3 4 5 :", *RESPONSES])


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [False, True])
def test_em_recovers_planted_types(tmp_path, pairs):
    frame, truth = planted(pairs)
    em = EMDPOTrainer(
        tiny_causal_lm(len(TOKENIZER)),
        args=em_config(tmp_path),
        train_dataset=frame,
        processing_class=TOKENIZER,
        n_types=2,
        n_iterations=2,
    )
    em.train()
    assigned = em.assignments()
    labels = np.array([truth[u] for u in assigned.index])
    # the same partition up to relabeling
    agree = (assigned.to_numpy() == labels).mean()
    assert max(agree, 1 - agree) == 1.0
    np.testing.assert_allclose(sorted(em.eta_), [1 / 3, 2 / 3], atol=0.02)
    assert em.history_[-1]["mean_log_likelihood"] > em.history_[0]["mean_log_likelihood"]
    # each type's policy prefers its own users' best response
    texts = np.array([text for ranked in frame["responses"] for text in ranked])
    minority = int(np.round(assigned.to_numpy()[labels == 1].mean()))
    for t, best, worst in ((minority, 2, 0), (1 - minority, 0, 2)):
        rewards = em.rewards(t).numpy()
        assert rewards[texts == RESPONSES[best]].mean() > rewards[texts == RESPONSES[worst]].mean()

    result, policy = em.mmra()
    assert result.weights.sum() == pytest.approx(1.0)
    # both types have a policy of their own: the LP mixes them
    assert result.weights.min() > 0.05
    prompt = torch.tensor([TOKENIZER("question 1 :")["input_ids"]])
    out = policy.generate(prompt, max_new_tokens=3, do_sample=False, rng=0, pad_token_id=0)
    assert out.shape[0] == 1 and prompt.shape[1] < out.shape[1] <= prompt.shape[1] + 3

    saved = em.save_model(tmp_path / "saved")
    assert (saved / "type_0" / "config.json").is_file() and (saved / "type_1" / "model.safetensors").is_file()
    state = json.loads((saved / "em_dpo.json").read_text())
    assert set(state["posteriors"]) == set(truth)


@pytest.mark.slow
def test_em_with_one_lora_adapter_per_type(tmp_path):
    from peft import LoraConfig

    frame, truth = planted(pairs=False)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    base = tiny_causal_lm(len(TOKENIZER))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    em = EMDPOTrainer(
        base,
        args=em_config(tmp_path, learning_rate=2e-2),
        train_dataset=frame,
        processing_class=TOKENIZER,
        n_types=2,
        n_iterations=2,
        peft_config=peft_config,
    )
    em.train()
    labels = np.array([truth[u] for u in em.assignments().index])
    agree = (em.assignments().to_numpy() == labels).mean()
    assert max(agree, 1 - agree) == 1.0
    # the two adapters differ and the shared base weights are untouched
    assert not torch.allclose(em.rewards(0), em.rewards(1))
    base_now = {
        k.replace("base_model.model.", ""): v for k, v in em._shared.state_dict().items() if "lora" not in k
    }
    for key, value in before.items():
        match = [v for k, v in base_now.items() if k.replace(".base_layer", "") == key]
        assert match and torch.equal(match[0], value)


def test_bad_arguments(tmp_path):
    frame, _ = planted(pairs=False)
    model = tiny_causal_lm(len(TOKENIZER))
    common = {"args": em_config(tmp_path), "train_dataset": frame, "processing_class": TOKENIZER}
    with pytest.raises(ValueError, match="n_types"):
        EMDPOTrainer(model, n_types=0, **common)
    with pytest.raises(ValueError, match="n_iterations"):
        EMDPOTrainer(model, n_iterations=0, **common)
    with pytest.raises(ValueError, match="init"):
        EMDPOTrainer(model, init="kmeans", **common)
    bad = frame.copy()
    bad.loc[3, "responses"] = ["only one"]
    with pytest.raises(ValueError, match="train_dataset:4: field 'responses'"):
        EMDPOTrainer(model, **{**common, "train_dataset": bad})
    em = EMDPOTrainer(model, n_iterations=1, **common)
    with pytest.raises(RuntimeError, match="train"):
        em.assignments()
    with pytest.raises(ValueError, match="out of range"):
        em.policy(2)
