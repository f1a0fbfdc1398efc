"""PAL-B: users as mixtures of K prototype preference mappings g_k of the context.

    f: items -> unit sphere,  g_k: contexts -> unit sphere
    z_u(c) = sum_k w_uk g_k(c)
    r_u(x, c) = s * <f(x), z_u(c)>      (s = exp(log_scale), learnable and clamped, as CLIP's logit scale)

The reward is linear in w_u, so fitting a new user's weights is a convex problem on the simplex
(see pluralign.training.simplex).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pluralign.models.base import Batch, PreferenceModel, Tables, unique_inverse
from pluralign.models.mlp import MLP, MLPConfig

MAX_LOG_SCALE = math.log(100.0)


class PALBModel(PreferenceModel):
    kind = "pal_b"
    linear_in_weights = True

    def __init__(
        self,
        n_users: int,
        n_prototypes: int,
        item_dim: int,
        context_dim: int,
        dim: int = 16,
        f_config: MLPConfig = MLPConfig(),
        g_config: MLPConfig = MLPConfig(),
        init_scale: float = 10.0,
        generator: torch.Generator | None = None,
    ) -> None:
        generator = torch.Generator() if generator is None else generator
        super().__init__(n_users, n_prototypes, generator)
        self.f = MLP(item_dim, dim, f_config, generator)
        self.g = nn.ModuleList(MLP(context_dim, dim, g_config, generator) for _ in range(n_prototypes))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()

    def item_directions(self, items: torch.Tensor) -> torch.Tensor:
        """f(x) on the unit sphere, [n, d]."""
        return F.normalize(self.f(items), dim=-1)

    def prototype_directions(self, contexts: torch.Tensor) -> torch.Tensor:
        """g_k(c) on the unit sphere for every prototype, [n, K, d]."""
        return F.normalize(torch.stack([g(contexts) for g in self.g], dim=-2), dim=-1)

    def prototype_margins(self, batch: Batch, tables: Tables) -> torch.Tensor:
        """Margin of each row under each prototype alone, [B, K]; a user's margin is this @ w_u."""
        items, (chosen_pos, rejected_pos) = unique_inverse(batch.chosen, batch.rejected)
        f = self.item_directions(tables.items[items])
        contexts, (context_pos,) = unique_inverse(batch.context)
        g = self.prototype_directions(tables.contexts[contexts])
        diff = f[chosen_pos] - f[rejected_pos]
        return self.scale * torch.einsum("bkd,bd->bk", g[context_pos], diff)

    def _margins(
        self, weights: torch.Tensor, user_pos: torch.Tensor, batch: Batch, tables: Tables
    ) -> torch.Tensor:
        return (self.prototype_margins(batch, tables) * weights[user_pos]).sum(-1)

    def rewards(self, weights: torch.Tensor, items: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        g = self.prototype_directions(contexts)
        z = torch.einsum("bk,bkd->bd", weights.expand(len(g), -1), g)
        return self.scale * (self.item_directions(items) * z).sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "maps": [*self.f.parameters(), self.log_scale],
            "prototypes": list(self.g.parameters()),
            "users": [self.user_logits],
        }
