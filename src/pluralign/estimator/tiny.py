"""The Tiny estimators: PAL-A, PAL-B and the Bradley-Terry baseline over frozen (cached) embeddings."""

from __future__ import annotations

from pluralign.estimator.base import PALEstimator
from pluralign.estimator.params import BTL_PARAMS
from pluralign.models.base import PreferenceModel
from pluralign.models.btl import BTLModel
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel


class PALA(PALEstimator):
    """PAL-A: ideal points r_u(x, c) = -||f(x; c) - f(w_u P)||^2 (paper eq. 4)."""

    model_kind = "pal_a"

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return PALAModel(
            n_users,
            self.n_prototypes,
            item_dim,
            context_dim,
            self.dim,
            self._mlp(self.f_layers),
            self._generator(),
        )


class PALB(PALEstimator):
    """PAL-B: preference mappings r_u(x, c) = s <f(x), sum_k w_uk g_k(c)> (paper eq. 6)."""

    model_kind = "pal_b"

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return PALBModel(
            n_users,
            self.n_prototypes,
            item_dim,
            context_dim,
            self.dim,
            self._mlp(self.f_layers),
            self._mlp(self.g_layers),
            generator=self._generator(),
        )


class BTL(PALEstimator):
    """Bradley-Terry baseline: one reward MLP([x; c]) shared by every user (PAL with K = 1)."""

    model_kind = "btl"

    hyperparameters = BTL_PARAMS

    def check_init(self) -> None:
        if self.n_prototypes != 1:
            raise ValueError("BTL has exactly one prototype")

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return BTLModel(n_users, item_dim, context_dim, self._mlp(self.f_layers), self._generator())
