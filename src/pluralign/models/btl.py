"""BTL: one shared reward for everyone (the homogeneous baseline, PAL with K = 1).

r(x, c) = MLP([x; c])
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import Batch, PreferenceModel, Tables, joint_pairs
from pluralign.models.mlp import MLP, MLPConfig


class BTLModel(PreferenceModel):
    kind = "btl"

    def __init__(
        self,
        n_users: int,
        item_dim: int,
        context_dim: int,
        f_config: MLPConfig = MLPConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        generator = torch.Generator() if generator is None else generator
        super().__init__(n_users, 1, generator)
        self.user_logits.requires_grad_(False)  # one prototype: every weight is 1
        self.f = MLP(item_dim + context_dim, 1, f_config, generator)

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        joint, chosen_pos, rejected_pos = joint_pairs(batch, tables)
        reward = self.f(joint).squeeze(-1)
        return reward[chosen_pos] - reward[rejected_pos]

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        return self.f(torch.cat([items, contexts], dim=-1)).squeeze(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"maps": list(self.f.parameters()), "prototypes": [], "users": []}
