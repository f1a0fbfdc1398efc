"""One call from a preference file to a trained DPO-family model on disk (what `pluralign dpo train` runs)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pluralign.atomic import atomic_write_json
from pluralign.errors import PluralignError

__all__ = ["METHODS", "DPORunConfig", "load_causal_lm", "train_dpo_family"]

log = logging.getLogger(__name__)

METHODS = ("dpo", "mixdpo-lognormal", "mixdpo-gamma", "em-dpo")


@dataclass(frozen=True)
class DPORunConfig:
    """One run's hyperparameters; ``blocks``: trainable last decoder blocks (0: all); ``lora_r`` > 0: LoRA."""

    method: str = "dpo"
    model: str = "smollm2"
    epochs: float = 1.0
    learning_rate: float = 1e-4
    beta: float = 0.1
    batch_size: int = 8
    n_types: int = 2
    em_iterations: int = 2
    blocks: int = 2
    lora_r: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "learning_rate", "beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "n_types", "em_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.blocks < 0 or self.lora_r < 0:
            raise ValueError("blocks and lora_r must be >= 0")


def load_causal_lm(name_or_path: str) -> tuple[Any, Any]:
    """(model, tokenizer): "smollm2" for the bundled SmolLM2-135M-Instruct, else a local HF model folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path == "smollm2":
        from pluralign.dpo.models import load_smollm2

        return load_smollm2()
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise PluralignError(f"{path}: not a local Hugging Face model folder (no config.json), nor 'smollm2'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _dpo_args(config: DPORunConfig, out: Path, cls: Any, **extra: Any) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        beta=config.beta,
        seed=config.seed,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        # TRL defaults to bf16, which needs a GPU; on CPU train in float32
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )


def train_dpo_family(data: str | Path, out: str | Path, config: DPORunConfig) -> dict[str, Any]:
    """Train ``config.method`` on a rankings/pairs file; save the model(s) and ``summary.json`` in ``out``."""
    from trl import DPOConfig

    from pluralign.dpo.data import pairs_dataset, read_rankings
    from pluralign.dpo.models import train_last_blocks

    rankings = read_rankings(data)
    out = Path(out)
    model, tokenizer = load_causal_lm(config.model)
    peft_config = None
    if config.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear")
    elif config.blocks:
        train_last_blocks(model, config.blocks)
    summary: dict[str, Any] = {"method": config.method, "data": str(data), "rankings": len(rankings)}
    if config.method == "em-dpo":
        from pluralign.dpo.em import EMDPOTrainer

        em = EMDPOTrainer(
            model,
            args=_dpo_args(config, out, DPOConfig),
            train_dataset=rankings,
            processing_class=tokenizer,
            n_types=config.n_types,
            n_iterations=config.em_iterations,
            peft_config=peft_config,
            seed=config.seed,
        )
        em.train()
        em.save_model(out)
        mmra, _ = em.mmra()
        summary.update(
            eta=em.eta_.tolist(),
            history=em.history_,
            type_sizes=em.assignments().value_counts().sort_index().to_dict(),
            mmra_weights=mmra.weights.tolist(),
        )
    else:
        from pluralign.dpo.trainers import MixDPOConfig, MixDPOTrainer, PluralDPOTrainer

        pairs = pairs_dataset(rankings, tokenizer, model)  # reference log-probs of the untrained model
        if config.method == "dpo":
            args, cls = _dpo_args(config, out, DPOConfig), PluralDPOTrainer
        else:
            family = config.method.removeprefix("mixdpo-")
            args, cls = _dpo_args(config, out, MixDPOConfig, beta_distribution=family), MixDPOTrainer
        trainer = cls(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=pairs,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        result = trainer.train()
        trainer.save_model(str(out))
        tokenizer.save_pretrained(out)
        summary.update(pairs=len(pairs), train_loss=result.training_loss, steps=trainer.state.global_step)
        if isinstance(trainer, MixDPOTrainer):
            summary["beta"] = trainer.beta_stats()
    atomic_write_json(out / "summary.json", summary)
    return summary
