"""Per-user independent reward models: the "no sharing" end of the spectrum.

    r_u(x, c) = theta_u^T phi(x, c)         theta_u in R^D free, one per user

trained with the Bradley-Terry loss plus  user_l2 / 2 * ||theta_u||^2  per user. All users train at once
(one [n_users, D] table, the sum of the users' losses), and since no parameter is shared the sum splits
into independent problems: each theta_u is the L2-regularised logistic regression of its user's difference
vectors phi(chosen) - phi(rejected) (scikit-learn's ``LogisticRegression(C=1 / user_l2,
fit_intercept=False)``), up to the optimiser's convergence. phi(x, c) = [x; x * c] over the frozen
response and prompt embeddings (x alone without prompts; ``models.base.linear_features``, and
``pluralign.models.lore`` for why).

A user not seen in training gets the mean of the seen users' theta (about the population's reward). A new
user's few-shot theta is their own ridge logistic regression shrunk toward that mean: the prior is
theta ~ N(theta_mean, I / user_l2), i.e. ``user_l2 / 2 * ||theta - theta_mean||^2`` (training.ridge).

Relation to PAL: it is the K = n_users limit where every user is their own prototype with a linear map
(PAL-B with f the identity and one constant g per user, w_u a one-hot vector), so nothing is pooled. What
differs: theta_u is free (no simplex, no shared basis), and a user with few rows learns only from them and
the prior mean.
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import (
    Batch,
    FreeUserModel,
    Tables,
    linear_feature_dim,
    linear_features,
    linear_pair_features,
)


class PerUserModel(FreeUserModel):
    kind = "per_user"

    def __init__(
        self,
        n_users: int,
        item_dim: int,
        context_dim: int = 0,
        user_l2: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(n_users, linear_feature_dim(item_dim, context_dim), user_l2, generator)

    def linear_features(self, batch: Batch, tables: Tables) -> tuple[torch.Tensor, torch.Tensor]:
        vectors, chosen_pos, rejected_pos = linear_pair_features(batch, tables)
        features = vectors[chosen_pos] - vectors[rejected_pos]  # [B, D']
        return torch.zeros(len(features), dtype=features.dtype, device=features.device), features

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        _, features = self.linear_features(batch, tables)
        return (features * weights[user_pos]).sum(-1)

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        return (linear_features(items, contexts) * weights).sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"maps": [], "prototypes": [], "users": [self.user_logits]}
