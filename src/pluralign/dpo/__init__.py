"""The DPO family: DPO and MixDPO losses on the policy margin, and the learnable beta distribution."""

from pluralign.dpo.lerch import log_mean_sigmoid_gamma
from pluralign.dpo.losses import (
    BetaDistribution,
    beta_distribution_stats,
    dpo_loss,
    mixdpo_gamma_loss,
    mixdpo_lognormal_loss,
)

__all__ = [
    "BetaDistribution",
    "beta_distribution_stats",
    "dpo_loss",
    "log_mean_sigmoid_gamma",
    "mixdpo_gamma_loss",
    "mixdpo_lognormal_loss",
]
