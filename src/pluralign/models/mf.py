"""Matrix factorisation with free user vectors: the collaborative-filtering baseline (as Community Notes'
rater-note model, r = mu + b_note + u_rater . f_note, with the note's terms a function of its embedding).

    r_u(x, c) = b(x, c) + u_u^T g(x, c)       b: [x; c] -> R,  g: [x; c] -> R^K,  u_u in R^K free

trained with the Bradley-Terry loss plus  user_l2 / 2 * ||u_u||^2  per user. b is the population's reward
(a user with u = 0, the zero-shot prediction) and has BTL's shape (``f_layers``: 1 = linear, 2 = the same
small MLP); g has the same shape with K outputs. A new user fits u_u with b and g frozen: the margin is
affine in u_u, so that is a ridge logistic regression (training.ridge), with the training penalty as ridge.

Relation to PAL: with K = 0 (or every u = 0) it is BTL. It is PAL-B's "reward linear in the user's
vector" without the simplex: u_u is any point of R^K, not a convex combination of K prototypes, and the
population term b is separate. So users are not mixtures of types (u_u's entries have no sign or scale
constraint, their size is set by the L2 penalty) and the zero-shot user is the origin (the population
reward b), not the mean of the users. ``user_weights()`` of this model are these free vectors.
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import Batch, FreeUserModel, Tables, joint_pairs
from pluralign.models.mlp import MLP, MLPConfig


class MFModel(FreeUserModel):
    kind = "mf"

    def __init__(
        self,
        n_users: int,
        n_factors: int,
        item_dim: int,
        context_dim: int,
        config: MLPConfig = MLPConfig(),
        user_l2: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        generator = torch.Generator() if generator is None else generator
        super().__init__(n_users, n_factors, user_l2, generator)
        self.b = MLP(item_dim + context_dim, 1, config, generator)
        self.g = MLP(item_dim + context_dim, n_factors, config, generator)

    def linear_features(self, batch: Batch, tables: Tables) -> tuple[torch.Tensor, torch.Tensor]:
        joint, chosen_pos, rejected_pos = joint_pairs(batch, tables)
        b, g = self.b(joint).squeeze(-1), self.g(joint)
        return b[chosen_pos] - b[rejected_pos], g[chosen_pos] - g[rejected_pos]

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        offset, features = self.linear_features(batch, tables)
        return offset + (features * weights[user_pos]).sum(-1)

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([items, contexts], dim=-1)
        return self.b(joint).squeeze(-1) + (self.g(joint) * weights).sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "maps": [*self.b.parameters(), *self.g.parameters()],
            "prototypes": [],
            "users": [self.user_logits],
        }
