"""One call from a preference file to a trained DPO-family model on disk (what `pluralign dpo train` runs).

The run is built in a staging folder beside ``out`` and renamed into place only when everything is saved,
so ``out`` is never half-written (and an existing non-empty ``out`` is refused up front). A run that fails
after saving something keeps it, clearly marked, in ``<out>.failed/`` with ``FAILED.json`` (the error);
one that fails before saving anything leaves no folder. A share of the
rankings (``holdout``) is kept out of training to report whether training moved the policy
(:mod:`pluralign.dpo.evaluate`) and, for EM-DPO, to compute the MMRA values on unseen prompts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.atomic import atomic_write_json
from pluralign.errors import PluralignError

__all__ = ["METHODS", "DPORunConfig", "load_causal_lm", "split_holdout", "train_dpo_family"]

log = logging.getLogger(__name__)

METHODS = ("dpo", "mixdpo-lognormal", "mixdpo-gamma", "em-dpo")


@dataclass(frozen=True)
class DPORunConfig:
    """One run's hyperparameters; ``blocks``: trainable last decoder blocks (0: all); ``lora_r`` > 0: LoRA.

    ``max_steps`` > 0 overrides ``epochs`` (per M-step for EM-DPO). MixDPO: ``beta_spread`` (initial cv),
    ``beta_learning_rate`` (5e-2: at 1e-2 the spread barely moves in a short run), ``beta_samples``
    (LogNormal). EM-DPO: ``n_types``, ``em_iterations``, ``em_init``, ``mmra_normalize``. ``chat_template``:
    "auto" / "on" / "off" (:mod:`pluralign.dpo.formatting`). ``holdout``: share of rankings held out.
    """

    method: str = "dpo"
    model: str = "smollm2"
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    beta: float = 0.1
    batch_size: int = 8
    n_types: int = 2
    em_iterations: int = 2
    em_init: str = "disagreement"
    mmra_normalize: bool = True
    beta_spread: float = 0.5
    beta_learning_rate: float = 5e-2
    beta_samples: int = 16
    blocks: int = 2
    lora_r: int = 0
    chat_template: str = "auto"
    holdout: float = 0.1
    logging_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "learning_rate", "beta", "beta_spread", "beta_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "n_types", "em_iterations", "beta_samples", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be > 0 (or -1: use epochs), got {self.max_steps}")
        if self.blocks < 0 or self.lora_r < 0:
            raise ValueError("blocks and lora_r must be >= 0")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.em_init not in ("disagreement", "random"):
            raise ValueError(f"em_init must be 'disagreement' or 'random', got {self.em_init!r}")
        if self.chat_template not in ("auto", "on", "off"):
            raise ValueError(f"chat_template must be auto, on or off, got {self.chat_template!r}")


def load_causal_lm(name_or_path: str) -> tuple[Any, Any]:
    """(model, tokenizer): "smollm2" for the bundled SmolLM2-135M-Instruct, else a local HF model folder.

    The model's ``name_or_path`` is an absolute folder it loads from (for SmolLM2 the plain copy built once
    by :func:`~pluralign.dpo.models.smollm2_base_dir`), which LoRA adapters record as their base.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path == "smollm2":
        from pluralign.dpo.models import smollm2_base_dir

        path = smollm2_base_dir()
    else:
        path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise PluralignError(f"{path}: not a local Hugging Face model folder (no config.json), nor 'smollm2'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path.resolve()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def split_holdout(rankings: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held out): a seeded random ``share`` of the rankings held out (none if that leaves < 1)."""
    n_hold = int(np.floor(share * len(rankings)))
    if n_hold < 1 or n_hold >= len(rankings):
        return rankings, rankings.iloc[:0]
    held = np.zeros(len(rankings), dtype=bool)
    held[np.random.default_rng(seed).choice(len(rankings), n_hold, replace=False)] = True
    return rankings[~held].reset_index(drop=True), rankings[held].reset_index(drop=True)


def _dpo_args(config: DPORunConfig, out: Path, cls: Any, **extra: Any) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        beta=config.beta,
        seed=config.seed,
        report_to=[],
        save_strategy="no",
        logging_steps=config.logging_steps,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        # TRL defaults to bf16 even with use_cpu, and accelerate then leaves the model's forward wrapped in
        # bf16 autocast after training: on CPU train (and score afterwards) in float32
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        **extra,
    )


def _prepare_out(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PluralignError(f"{out} exists and is not empty: choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))


def train_dpo_family(data: str | Path, out: str | Path, config: DPORunConfig) -> dict[str, Any]:
    """Train ``config.method`` on a rankings/pairs file; save the model(s) and ``summary.json`` in ``out``."""
    from pluralign.dpo.data import read_rankings

    rankings = read_rankings(data)
    train, held = split_holdout(rankings, config.holdout, config.seed)
    out = Path(out)
    staging = _prepare_out(out)
    try:
        summary = _train(data, staging, train, held, config)
        atomic_write_json(staging / "summary.json", summary)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException as exc:
        _keep_partial(staging, out, exc)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _keep_partial(staging: Path, out: Path, exc: BaseException) -> None:
    """Move what a failed run saved to ``<out>.failed/`` with FAILED.json; nothing saved: nothing kept."""
    if not staging.is_dir() or not any(staging.iterdir()):
        return
    failed = out.with_name(out.name + ".failed")
    try:
        atomic_write_json(
            staging / "FAILED.json",
            {"error": f"{type(exc).__name__}: {exc}", "files": sorted(p.name for p in staging.iterdir())},
        )
        if failed.exists():
            shutil.rmtree(failed)
        os.replace(staging, failed)
        log.error("the run failed; what it had saved is in %s (see FAILED.json)", failed)
    except OSError:  # keeping the partial state must not hide the original error
        log.exception("could not keep the partial run in %s", failed)


def _versions() -> dict[str, str | None]:
    from pluralign.dpo.compat import installed_versions

    return installed_versions()


def _train(
    data: str | Path, out: Path, train: pd.DataFrame, held: pd.DataFrame, config: DPORunConfig
) -> dict[str, Any]:
    from pluralign.dpo.evaluate import response_logps
    from pluralign.dpo.formatting import use_chat_template
    from pluralign.dpo.models import train_last_blocks

    model, tokenizer = load_causal_lm(config.model)
    chat = use_chat_template(tokenizer, config.chat_template)
    base_path = str(Path(model.config.name_or_path).resolve())
    if config.blocks and not config.lora_r:
        train_last_blocks(model, config.blocks)
    # the held-out responses under the untrained model: the reference for "did training move the policy?"
    held_ref = response_logps(model, tokenizer, held, chat=chat) if len(held) else None
    summary: dict[str, Any] = {
        "method": config.method,
        "data": str(data),
        "rankings": len(train) + len(held),
        "train_rankings": len(train),
        "heldout_rankings": len(held),
        "chat_template": chat,
        "base_model": base_path,
        "config": asdict(config),
        "versions": _versions(),
    }
    card = {"datasets": [Path(data).name], **_card_hparams(config)}
    if config.method == "em-dpo":
        summary.update(_train_em(model, tokenizer, train, held, held_ref, out, config, chat, base_path, card))
    else:
        summary.update(
            _train_single(model, tokenizer, train, held, held_ref, out, config, chat, base_path, card)
        )
    return summary


def _card_hparams(config: DPORunConfig) -> dict[str, Any]:
    keys = ["epochs", "max_steps", "learning_rate", "beta", "batch_size", "blocks", "lora_r", "seed"]
    if config.method.startswith("mixdpo"):
        keys += ["beta_spread", "beta_learning_rate", "beta_samples"]
    if config.method == "em-dpo":
        keys += ["n_types", "em_iterations", "em_init", "mmra_normalize"]
    return {k: getattr(config, k) for k in keys}


def _train_single(
    model: Any,
    tokenizer: Any,
    train: pd.DataFrame,
    held: pd.DataFrame,
    held_ref: torch.Tensor | None,
    out: Path,
    config: DPORunConfig,
    chat: bool,
    base_path: str,
    card: dict[str, Any],
) -> dict[str, Any]:
    from trl import DPOConfig

    from pluralign.dpo.artifacts import write_model_card
    from pluralign.dpo.data import pairs_dataset
    from pluralign.dpo.evaluate import policy_shift, response_logps
    from pluralign.dpo.trainers import MixDPOConfig, MixDPOTrainer, PluralDPOTrainer

    pairs = pairs_dataset(train, tokenizer, chat=chat)  # TRL precomputes the reference log-probs
    scratch = Path(tempfile.mkdtemp(prefix="dpo-run-"))
    try:
        if config.method == "dpo":
            args, cls = _dpo_args(config, scratch, DPOConfig), PluralDPOTrainer
        else:
            mix = {
                "beta_distribution": config.method.removeprefix("mixdpo-"),
                "beta_spread": config.beta_spread,
                "beta_learning_rate": config.beta_learning_rate,
                "beta_samples": config.beta_samples,
            }
            args, cls = _dpo_args(config, scratch, MixDPOConfig, **mix), MixDPOTrainer
        trainer = cls(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=pairs,
            processing_class=tokenizer,
            peft_config=peft_config_for(config),
        )
        result = trainer.train()
        trainer.save_model(str(out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    policy = trainer.model
    tokenizer.save_pretrained(out)
    (policy.get_base_model() if config.lora_r else policy).generation_config.save_pretrained(out)
    summary: dict[str, Any] = {
        "pairs": len(pairs),
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
    }
    learned: dict[str, Any] = {}
    if isinstance(trainer, MixDPOTrainer):
        summary["beta"] = learned["beta_distribution"] = trainer.beta_stats()
    if held_ref is not None:
        logps = response_logps(policy, tokenizer, held, chat=chat)
        summary["heldout"] = policy_shift(logps, held_ref, held, beta=config.beta, label=config.method)
        learned["heldout"] = summary["heldout"]
    write_model_card(
        out,
        title=f"{config.method} policy",
        base_model=base_path,
        adapter=bool(config.lora_r),
        method=config.method,
        hyperparameters={k: v for k, v in card.items() if k != "datasets"},
        learned=learned,
        chat_template=chat,
        datasets=card["datasets"],
    )
    return summary


def peft_config_for(config: DPORunConfig) -> Any:
    """The LoRA config of a run (None without ``lora_r``)."""
    if not config.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear")


def _train_em(
    model: Any,
    tokenizer: Any,
    train: pd.DataFrame,
    held: pd.DataFrame,
    held_ref: torch.Tensor | None,
    out: Path,
    config: DPORunConfig,
    chat: bool,
    base_path: str,
    card: dict[str, Any],
) -> dict[str, Any]:
    from trl import DPOConfig

    from pluralign.dpo.em import EMDPOTrainer
    from pluralign.dpo.evaluate import policy_shift, response_logps

    scratch = Path(tempfile.mkdtemp(prefix="em-dpo-run-"))
    try:
        em = EMDPOTrainer(
            model,
            args=_dpo_args(config, scratch, DPOConfig),
            train_dataset=train,
            processing_class=tokenizer,
            n_types=config.n_types,
            n_iterations=config.em_iterations,
            init=config.em_init,
            peft_config=peft_config_for(config),
            seed=config.seed,
            chat_template=chat,
        )
        em.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mmra, _ = em.mmra(rankings=held if len(held) else None, normalize=config.mmra_normalize)
    summary: dict[str, Any] = {
        "eta": em.eta_.tolist(),
        "history": em.history_,
        "type_sizes": em.assignments().value_counts().sort_index().to_dict(),
        "mmra_weights": mmra.weights.tolist(),
        "mmra_regret": mmra.regret.tolist(),
        "mmra_values_from": em.mmra_["values_from"],
    }
    if held_ref is not None:
        # each held-out pair judged by the policy of its user's most probable type
        assigned = em.assignments()
        users = held["user_id"].to_numpy()
        lengths = np.fromiter((len(r) for r in held["responses"]), dtype=np.int64, count=len(held))
        pair_users = np.repeat(users, lengths * (lengths - 1) // 2)
        pair_type = np.array([assigned.get(u, -1) for u in pair_users])
        per_type = {}
        for t in range(em.n_types):
            logps = response_logps(em.policy(t), tokenizer, held, chat=chat)
            mask = pair_type == t
            if mask.any():
                per_type[f"type_{t}"] = policy_shift(
                    logps, held_ref, held, beta=config.beta, pair_mask=mask, label=f"em-dpo type {t}"
                )
        summary["heldout"] = per_type
    em.save_model(out, base_model_path=base_path, card=card)
    return summary
