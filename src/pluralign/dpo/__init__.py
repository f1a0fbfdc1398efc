"""The DPO family: DPO and MixDPO losses on the policy margin, the learnable beta distribution, and
min-max-regret aggregation over per-type policies (EM-DPO)."""

from pluralign.dpo.lerch import log_mean_sigmoid_gamma
from pluralign.dpo.losses import (
    BetaDistribution,
    beta_distribution_stats,
    dpo_loss,
    mixdpo_gamma_loss,
    mixdpo_lognormal_loss,
)
from pluralign.dpo.mmra import MinMaxRegret, min_max_regret

__all__ = [
    "BetaDistribution",
    "MinMaxRegret",
    "beta_distribution_stats",
    "dpo_loss",
    "log_mean_sigmoid_gamma",
    "min_max_regret",
    "mixdpo_gamma_loss",
    "mixdpo_lognormal_loss",
]
