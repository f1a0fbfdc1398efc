"""Peer reward models with the estimators' API, over frozen (cached) embeddings like PAL-Tiny:

    LoRe                 r_u = w_u^T V x, w_u on the simplex              (pluralign.models.lore)
    MatrixFactorization  r_u = b(x, c) + u_u^T g(x, c), u_u in R^K free   (pluralign.models.mf)
    PerUser              r_u = theta_u^T x, one free theta_u per user      (pluralign.models.per_user)

Each trains with the same step budget and trainer as PAL (Bradley-Terry loss) and has fit / score /
predict_proba / margins / reward / adapt / fit_weights / user_weights / save / load. The model modules say
where each method is a special case of PAL and what differs. The two free-vector models replace the
simplex machinery: their ``user_weights()`` are the free vectors, a new user's few-shot vector is a ridge
logistic regression (``pluralign.training.ridge``) with ``user_l2`` as ridge (``fit_weights(ridge=...)``
overrides), and the zero-shot vector is 0 for MF (the population reward b) and the seen users' mean theta
for PerUser. Active onboarding and growing prototypes are PAL-A / PAL-B only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from pluralign.estimator.base import PALEstimator
from pluralign.estimator.params import LORE_PARAMS, MF_PARAMS, PER_USER_PARAMS
from pluralign.models.base import Batch, FreeUserModel, PreferenceModel, Tables
from pluralign.models.lore import LoReModel
from pluralign.models.mf import MFModel
from pluralign.models.per_user import PerUserModel
from pluralign.training.ridge import fit_ridge_logistic

#: rows per forward pass when computing a few-shot fit's features
FEATURE_ROWS = 65536


class LoRe(PALEstimator):
    """LoRe (Bose et al. 2025): r_u(x, c) = w_u^T V phi(x), a learned K x D basis V and simplex weights;
    PAL-B with linear maps (``pluralign.models.lore``). New users: w_u over the simplex, V frozen, solved
    exactly (``adapt_method``, ``adapt_ridge`` as for PAL-B)."""

    model_kind = "lore"
    hyperparameters = LORE_PARAMS
    #: the Bradley-Terry loss (the paper's; not a hyperparameter here)
    loss: ClassVar[str] = "logistic"
    adapt_steps: ClassVar[int] = 300  # unused: LoRe's few-shot fit is exact

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return LoReModel(n_users, self.n_prototypes, item_dim, context_dim, self._generator())


class FreeUserEstimator(PALEstimator):
    """What MatrixFactorization and PerUser share: users are free vectors with an L2 penalty
    ``user_l2``; few-shot vectors are ridge logistic regressions toward the zero-shot vector."""

    loss: ClassVar[str] = "logistic"
    hyperparameters = MF_PARAMS

    def few_shot_weights(
        self, batch: Batch, tables: Tables, n_users: int, ridge: float | None
    ) -> torch.Tensor:
        """Each user's MAP vector under the prior N(zero-shot vector, I / ridge), ridge = ``user_l2``
        unless given, with the shared maps frozen (ridge logistic regression, solved by Newton's method)."""
        model = self.model_
        if not isinstance(model, FreeUserModel):  # pragma: no cover - build_model makes one
            raise TypeError(f"{type(self).__name__} needs a model with free user vectors")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                parts = [
                    model.linear_features(batch.take(slice(s, s + FEATURE_ROWS)), tables)
                    for s in range(0, len(batch), FEATURE_ROWS)
                ]
        finally:
            model.train(was_training)
        offsets = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
        features = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, model.n_prototypes)
        return fit_ridge_logistic(
            features,
            batch.user,
            n_users,
            ridge=self.user_l2 if ridge is None else ridge,
            prior=self.zero_shot_weights_,
            offsets=offsets,
        )


class MatrixFactorization(FreeUserEstimator):
    """Matrix factorisation: r_u(x, c) = b(x, c) + u_u^T g(x, c) with free u_u in R^K (K =
    ``n_prototypes``), L2 ``user_l2`` (``pluralign.models.mf``). Unknown users get u = 0 (the population
    reward b); ``user_weights()`` are the u_u (not on the simplex)."""

    model_kind = "mf"
    hyperparameters = MF_PARAMS

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return MFModel(
            n_users,
            self.n_prototypes,
            item_dim,
            context_dim,
            self._mlp(self.f_layers),
            self.user_l2,
            self._generator(),
        )

    def zero_shot(self, model: PreferenceModel, n_seen: int) -> torch.Tensor:
        """u = 0: the population reward b."""
        return torch.zeros(model.n_prototypes, dtype=torch.float64)


class PerUser(FreeUserEstimator):
    """Independent per-user linear rewards r_u = theta_u^T phi(x), L2 ``user_l2`` (``pluralign.models.
    per_user``): each theta_u is its user's own logistic regression. Unknown users get the seen users'
    mean theta; ``user_weights()`` are the theta_u (columns w0..w{D-1})."""

    model_kind = "per_user"
    hyperparameters = PER_USER_PARAMS

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return PerUserModel(n_users, item_dim, context_dim, self.user_l2, self._generator())


__all__ = ["FreeUserEstimator", "LoRe", "MatrixFactorization", "PerUser"]
