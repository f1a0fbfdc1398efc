"""The DPO family for Hugging Face causal LMs, on TRL.

- losses: DPO and MixDPO (LogNormal Monte Carlo, Gamma closed form through the Lerch transcendent) on the
  policy margin, and the learnable beta distribution;
- trainers: ``PluralDPOTrainer`` (TRL's DPO with per-example weights) and ``MixDPOTrainer`` /
  ``MixDPOConfig``, drop-in replacements for ``trl.DPOTrainer`` / ``trl.DPOConfig``;
- EM-DPO: ``EMDPOTrainer`` (latent preference types, one policy or LoRA adapter per type) and MinMax-Regret
  Aggregation (``min_max_regret``, ``MixturePolicy``) to serve users whose type is unknown;
- data: rankings (``responses`` best first) and pairs, validated, as HF datasets; one chat-template policy
  for training and generation (``formatting``);
- artifacts: every saved policy loads with the standard Auto classes; ``load_em_dpo`` restores an EM-DPO run.

The trainers import TRL, so they load lazily: ``from pluralign.dpo import MixDPOTrainer`` needs the
``dpo`` extra (``pip install 'pluralign[dpo]'``); the losses need only torch.
"""

from __future__ import annotations

from typing import Any

from pluralign.dpo.lerch import log_mean_sigmoid_gamma
from pluralign.dpo.losses import (
    BetaDistribution,
    beta_distribution_stats,
    dpo_loss,
    mixdpo_gamma_loss,
    mixdpo_lognormal_loss,
)
from pluralign.dpo.mmra import MinMaxRegret, min_max_regret, mmra_values

_LAZY = {
    "PluralDPOTrainer": "pluralign.dpo.trainers",
    "MixDPOTrainer": "pluralign.dpo.trainers",
    "MixDPOConfig": "pluralign.dpo.trainers",
    "EMDPOTrainer": "pluralign.dpo.em",
    "MixturePolicy": "pluralign.dpo.em",
    "read_rankings": "pluralign.dpo.data",
    "load_smollm2": "pluralign.dpo.models",
    "load_em_dpo": "pluralign.dpo.artifacts",
    "load_policy": "pluralign.dpo.artifacts",
}

__all__ = [
    "BetaDistribution",
    "EMDPOTrainer",
    "MinMaxRegret",
    "MixDPOConfig",
    "MixDPOTrainer",
    "MixturePolicy",
    "PluralDPOTrainer",
    "beta_distribution_stats",
    "dpo_loss",
    "load_em_dpo",
    "load_policy",
    "load_smollm2",
    "log_mean_sigmoid_gamma",
    "min_max_regret",
    "mixdpo_gamma_loss",
    "mixdpo_lognormal_loss",
    "mmra_values",
    "read_rankings",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pluralign.dpo' has no attribute {name!r}")
