"""PluralDPOTrainer and MixDPOTrainer on tiny causal LMs: equal to TRL's DPO, weights, training, beta."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from pluralign.dpo.losses import BetaDistribution
from pluralign.dpo.models import tiny_causal_lm, word_tokenizer
from pluralign.dpo.trainers import WEIGHT_COLUMN, MixDPOConfig, MixDPOTrainer, PluralDPOTrainer

ROWS = [
    {"user_id": f"u{i % 3}", "prompt": f"question {i} : ", "chosen": "red apple", "rejected": "blue sky now"}
    for i in range(8)
]
TOKENIZER = word_tokenizer([r["prompt"] + r["chosen"] + " " + r["rejected"] for r in ROWS])


def config(cls=DPOConfig, tmp_path=None, **overrides):
    settings = {
        "output_dir": str(tmp_path or "unused"),
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "beta": 0.5,
    }
    settings.update(overrides)
    return cls(**settings)


def make(trainer_cls, args, rows=ROWS, seed=0):
    model = tiny_causal_lm(len(TOKENIZER), seed=seed)
    ref = tiny_causal_lm(len(TOKENIZER), seed=seed + 1)
    return trainer_cls(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=TOKENIZER,
    )


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_dpo_loss_equals_trl(tmp_path):
    ours = make(PluralDPOTrainer, config(tmp_path=tmp_path))
    theirs = make(DPOTrainer, config(tmp_path=tmp_path))
    batch = first_batch(theirs)
    with torch.no_grad():
        expected = theirs.compute_loss(theirs.model, batch)
        got = ours.compute_loss(ours.model, batch)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_precomputed_reference_matches_reference_model(tmp_path):
    live = make(PluralDPOTrainer, config(tmp_path=tmp_path))
    pre = make(PluralDPOTrainer, config(tmp_path=tmp_path, precompute_ref_log_probs=True))
    assert "ref_chosen_logps" in pre.train_dataset.column_names
    batch = first_batch(pre)
    with torch.no_grad():
        a = pre.compute_loss(pre.model, batch)
        b = live.compute_loss(live.model, {k: v for k, v in batch.items() if not k.startswith("ref_")})
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_weights_scale_pairs(tmp_path):
    weights = [0.0, 1.0, 2.0, 0.5, 1.0, 3.0, 0.0, 0.5]
    rows = [{**r, WEIGHT_COLUMN: w} for r, w in zip(ROWS, weights, strict=True)]
    trainer = make(PluralDPOTrainer, config(tmp_path=tmp_path), rows=rows)
    batch = first_batch(trainer)
    assert WEIGHT_COLUMN in batch
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        delta, _ = trainer.policy_margin(trainer.model, batch)
    w = batch[WEIGHT_COLUMN]
    per_pair = F.softplus(-0.5 * delta)
    # sum_i w_i l_i / (batch size * mean weight over the dataset)
    expected = (w * per_pair).sum() / (len(w) * (sum(weights) / len(weights)))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("bad", [[-1.0] + [1.0] * 7, [0.0] * 8, [float("nan")] + [1.0] * 7])
def test_bad_weights(tmp_path, bad):
    rows = [{**r, WEIGHT_COLUMN: w} for r, w in zip(ROWS, bad, strict=True)]
    with pytest.raises(ValueError, match=WEIGHT_COLUMN):
        make(PluralDPOTrainer, config(tmp_path=tmp_path), rows=rows)


def test_unsupported_options(tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        make(PluralDPOTrainer, config(tmp_path=tmp_path, loss_type=["ipo"]))
    with pytest.raises(TypeError, match="MixDPOConfig"):
        make(MixDPOTrainer, config(tmp_path=tmp_path))
    with pytest.raises(ValueError, match="beta_distribution"):
        config(MixDPOConfig, tmp_path, beta_distribution="weibull")
    with pytest.raises(ValueError, match="beta_spread"):
        config(MixDPOConfig, tmp_path, beta_spread=0.0)
    with pytest.raises(ValueError, match="beta_samples"):
        config(MixDPOConfig, tmp_path, beta_samples=0)


def loss_after(trainer) -> tuple[float, float]:
    batch = first_batch(trainer)
    with torch.no_grad():
        before = trainer.compute_loss(trainer.model, batch).item()
    trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(trainer.model, batch).item()
    return before, after


@pytest.mark.parametrize(
    ("cls", "cfg", "extra"),
    [
        (PluralDPOTrainer, DPOConfig, {}),
        (MixDPOTrainer, MixDPOConfig, {"beta_distribution": "lognormal", "beta_samples": 64}),
        (MixDPOTrainer, MixDPOConfig, {"beta_distribution": "gamma"}),
    ],
)
def test_training_reduces_loss(tmp_path, cls, cfg, extra):
    trainer = make(cls, config(cfg, tmp_path, max_steps=8, **extra))
    before, after = loss_after(trainer)
    assert after < before - 0.05


def test_mixdpo_matches_beta_distribution_loss(tmp_path):
    trainer = make(MixDPOTrainer, config(MixDPOConfig, tmp_path, beta_distribution="gamma", beta_spread=0.7))
    batch = first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        delta, _ = trainer.policy_margin(trainer.model, batch)
    reference = BetaDistribution("gamma", mean=0.5, spread=0.7)
    assert loss.item() == pytest.approx(reference.loss(delta).mean().item(), rel=1e-6)
    assert trainer.beta_stats()["mean"] == pytest.approx(0.5)
    assert trainer.beta_stats()["cv"] == pytest.approx(0.7)


def test_mixdpo_learns_logs_and_saves_beta(tmp_path):
    args = config(MixDPOConfig, tmp_path, max_steps=4, beta_distribution="lognormal", beta_learning_rate=0.1)
    trainer = make(MixDPOTrainer, args)
    start = dict(trainer.beta_distribution.params())
    start = {k: v.item() for k, v in start.items()}
    trainer.train()
    moved = {k: v.item() for k, v in trainer.beta_distribution.params().items()}
    assert moved != start  # the distribution's parameters are in the optimizer
    logged = [h for h in trainer.state.log_history if "beta/mean" in h]
    assert logged and {"beta/mean", "beta/std", "beta/cv"} <= set(logged[-1])
    trainer.save_model(str(tmp_path / "model"))
    saved = json.loads((tmp_path / "model" / "beta_distribution.json").read_text())
    assert saved["kind"] == "lognormal"
    assert saved["params"]["mu"] == pytest.approx(moved["mu"])
    assert saved["stats"]["mean"] == pytest.approx(trainer.beta_stats()["mean"])
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_mixdpo_is_reproducible(tmp_path):
    losses = []
    for run in range(2):
        args = config(MixDPOConfig, tmp_path / str(run), max_steps=3, beta_distribution="lognormal")
        trainer = make(MixDPOTrainer, args)
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert losses[0] == losses[1]


def test_mixdpo_resume_restores_beta(tmp_path):
    # a checkpoint holds beta_distribution.json; train(resume_from_checkpoint=True) restores it first
    args = config(
        MixDPOConfig,
        tmp_path,
        max_steps=2,
        beta_distribution="gamma",
        beta_learning_rate=0.5,
        save_strategy="steps",
        save_steps=1,
    )
    first = make(MixDPOTrainer, args)
    first.train()
    saved = json.loads((tmp_path / "checkpoint-2" / "beta_distribution.json").read_text())
    start = BetaDistribution("gamma", mean=0.5, spread=0.5).params()
    assert any(abs(saved["params"][k] - float(v.detach())) > 1e-4 for k, v in start.items())  # it moved
    again = make(MixDPOTrainer, args)
    assert again.beta_stats()["mean"] == pytest.approx(0.5)  # fresh
    again.train(resume_from_checkpoint=True)  # already at max_steps: restores, trains no further
    for name, value in saved["params"].items():
        assert getattr(again.beta_distribution, name).item() == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match="a gamma distribution"):
        make(
            MixDPOTrainer, config(MixDPOConfig, tmp_path, beta_distribution="lognormal")
        ).load_beta_distribution(tmp_path / "checkpoint-2")


def test_one_pair_left_over_in_the_last_batch(tmp_path):
    # 9 pairs at batch 8: the last batch holds 1 pair (it used to crash in the metrics gather)
    rows = [{**ROWS[i % len(ROWS)], "prompt": f"question {i % 8} : "} for i in range(9)]
    trainer = make(PluralDPOTrainer, config(tmp_path=tmp_path, num_train_epochs=1), rows=rows)
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert len(logged) == 2 and all(0.0 <= h["rewards/accuracies"] <= 1.0 for h in logged)


def test_unsupported_versions_fail_with_one_line(monkeypatch):
    from pluralign.dpo import compat
    from pluralign.errors import PluralignError

    compat.check_versions()  # the installed stack is supported
    fake = {
        "trl": "0.29.1",
        "transformers": "5.23.0",
        "peft": None,
        "accelerate": "1.15.0",
        "datasets": "6.0",
    }
    monkeypatch.setattr(compat, "installed_versions", lambda: fake)
    with pytest.raises(PluralignError) as info:
        compat.check_versions()
    message = str(info.value)
    assert "\n" not in message
    assert "trl 0.29.1 is outside the supported >=1.13,<2" in message
    assert "datasets 6.0 is outside the supported >=5.2,<6" in message and "transformers" not in message
    with pytest.raises(PluralignError, match="peft is not installed"):
        compat.check_versions(("peft",))
