"""LoRe (Bose et al. 2025, "LoRe: Personalizing LLMs via Low-Rank Reward Modeling"): every user's reward is
a mixture of K linear basis rewards over a frozen embedding.

    r_u(x, c) = w_u^T V phi(x, c)        V: K x D learned basis,  w_u on the simplex (softmax of logits)

trained with the Bradley-Terry loss  -log sigmoid(r_u(chosen) - r_u(rejected)). A new user fits only w_u
with V frozen (LoRe's few-shot step), a convex problem on the simplex.

The paper's phi is a reward model's embedding of the prompt and response together; pluralign embeds them
separately (x the response, c the prompt), so phi(x, c) = [x; x * c] (``models.base.linear_features``;
x alone for data without prompts): the prompt's own linear part would cancel in every margin, and the
elementwise product is the cheapest term through which a linear reward depends on the prompt (on Polis,
where the statement is the prompt and the responses are Yes / No, it is all the signal there is).

Relation to PAL: LoRe is the special case of PAL-B (r_u = s <f(x), sum_k w_uk g_k(c)>) with f the identity
(no map, no normalisation onto the sphere), each g_k a fixed linear function of the prompt (the k-th row
of V read against [1; c], elementwise) and no learned scale s: K linear prototype rewards v_k^T phi(x, c)
mixed by simplex weights. What differs: PAL-B learns nonlinear maps of the item and of the prompt; LoRe
learns nothing but V and the weights, so it is a PAL-B with one linear layer in place of two MLPs.
As for PAL-B, margins are linear in w_u and few-shot fits are solved exactly (training.simplex).
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import (
    Batch,
    PreferenceModel,
    Tables,
    linear_feature_dim,
    linear_features,
    linear_pair_features,
)


class LoReModel(PreferenceModel):
    kind = "lore"
    linear_in_weights = True

    def __init__(
        self,
        n_users: int,
        n_prototypes: int,
        item_dim: int,
        context_dim: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        generator = torch.Generator() if generator is None else generator
        super().__init__(n_users, n_prototypes, generator)
        width = linear_feature_dim(item_dim, context_dim)
        # the basis rewards v_k, scaled like nn.Linear's default (U(+-1/sqrt(D)) has this variance)
        self.basis = nn.Parameter(torch.randn(n_prototypes, width, generator=generator) / (3 * width) ** 0.5)

    def prototype_margins(self, batch: Batch, tables: Tables) -> torch.Tensor:
        """Margin of each row under each basis reward alone, [B, K]; a user's margin is this @ w_u."""
        features, chosen_pos, rejected_pos = linear_pair_features(batch, tables)  # [P, D'], [B], [B]
        projected = features @ self.basis.T  # [P, K]
        return projected[chosen_pos] - projected[rejected_pos]

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        return (self.prototype_margins(batch, tables) * weights[user_pos]).sum(-1)

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        return (linear_features(items, contexts) @ self.basis.T * weights).sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"maps": [], "prototypes": [self.basis], "users": [self.user_logits]}
