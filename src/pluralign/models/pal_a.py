"""PAL-A: users as ideal points, mixtures of K prototypes, in the space of a learned map f.

    a_u = w_u P                      (P: K prototype points in the joint input space R^{Dx+Dc})
    r_u(x, c) = -|| f(x; c) - f(a_u) ||^2

The closer an item's image is to the user's ideal point, the more the user likes it (paper eq. 4).
"""

from __future__ import annotations

import torch
from torch import nn

from pluralign.models.base import Batch, PreferenceModel, Tables, joint_pairs
from pluralign.models.mlp import MLP, MLPConfig


class PALAModel(PreferenceModel):
    kind = "pal_a"

    def __init__(
        self,
        n_users: int,
        n_prototypes: int,
        item_dim: int,
        context_dim: int,
        dim: int = 16,
        f_config: MLPConfig = MLPConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        generator = torch.Generator() if generator is None else generator
        super().__init__(n_users, n_prototypes, generator)
        joint_dim = item_dim + context_dim
        self.f = MLP(joint_dim, dim, f_config, generator)
        # Prototypes live where the inputs live; scaled like unit-norm embeddings.
        self.prototypes = nn.Parameter(
            torch.randn(n_prototypes, joint_dim, generator=generator) / joint_dim**0.5
        )

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        joint, chosen_pos, rejected_pos = joint_pairs(batch, tables)
        mapped = self.f(joint)
        ideal = self.f(weights @ self.prototypes)[user_pos]
        d_chosen = (mapped[chosen_pos] - ideal).square().sum(-1)
        d_rejected = (mapped[rejected_pos] - ideal).square().sum(-1)
        return d_rejected - d_chosen

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        ideal = self.f(weights @ self.prototypes)
        return -(self.f(torch.cat([items, contexts], dim=-1)) - ideal).square().sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "maps": list(self.f.parameters()),
            "prototypes": [self.prototypes],
            "users": [self.user_logits],
        }
