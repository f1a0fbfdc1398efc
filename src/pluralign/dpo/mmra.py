"""MinMax-Regret Aggregation (EM-DPO paper): serve a user whose preference type is unknown.

Given U[t, s], the value of policy s for users of type t, choose a mixture alpha over the policies that
minimizes the worst regret over types,

    min_alpha  max_t ( max_s U[t, s] - sum_s alpha_s U[t, s] ),   alpha on the simplex,

a linear program in (alpha, r): minimize r subject to  best_t - U[t] . alpha <= r  for every type t.

Regret in raw units compares types on whatever scale each type's values come in. Values estimated from
implicit rewards (beta log pi / pi_ref, what EM-DPO has without labels) are Bradley-Terry utilities, defined
per type only up to a positive scale and a shift, so by default (``normalize=True``) each type's values are
rescaled to [0, 1] over the policies (its best policy 1, its worst 0) first, which makes the mixture
invariant to those; raw regret lets whichever type has the widest rewards decide the mixture
(``normalize=False`` keeps it, for values already on a common scale, e.g. a judge's scores). A type whose
values span less than ``tol`` times their magnitude is indifferent: rescaling round-off to [0, 1] would
invent a preference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog

__all__ = ["MinMaxRegret", "min_max_regret", "mmra_values"]


@dataclass(frozen=True)
class MinMaxRegret:
    """The min-max-regret mixture over policies and what it guarantees.

    ``weights`` [S] is the mixture; ``regret`` [T] each type's regret under it; ``max_regret`` their maximum
    (the LP optimum).
    """

    weights: np.ndarray
    regret: np.ndarray
    max_regret: float

    def sample(
        self, n: int | None = None, *, rng: np.random.Generator | int | None = None
    ) -> np.ndarray | int:
        """Policy index (or ``n`` of them) drawn from the mixture: which type's policy serves a request."""
        generator = np.random.default_rng(rng)
        draw = generator.choice(len(self.weights), size=n, p=self.weights)
        return int(draw) if n is None else draw


def min_max_regret(values: np.ndarray, *, normalize: bool = True, tol: float = 1e-6) -> MinMaxRegret:
    """Solve the min-max-regret mixture for a [types, policies] value matrix exactly (HiGHS LP).

    ``normalize`` (default): rescale each type's values to [0, 1] over the policies first (module
    docstring); a type whose values span at most ``tol * max(1, max |values of that type|)`` is indifferent
    and constrains nothing. Regrets are then on that scale. ``normalize=False``: raw values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"values must be a non-empty [types, policies] matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if normalize:
        low, spread = values.min(axis=1, keepdims=True), np.ptp(values, axis=1, keepdims=True)
        scale = np.maximum(1.0, np.abs(values).max(axis=1, keepdims=True))
        values = np.divide(values - low, spread, out=np.zeros_like(values), where=spread > tol * scale)
    n_types, n_policies = values.shape
    best = values.max(axis=1)
    # variables: alpha_1..alpha_S, r;  rows: best_t - U[t] . alpha - r <= 0  <=>  -U[t] . alpha - r <= -best_t
    cost = np.zeros(n_policies + 1)
    cost[-1] = 1.0
    a_ub = np.hstack([-values, -np.ones((n_types, 1))])
    a_eq = np.hstack([np.ones((1, n_policies)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n_policies + [(None, None)]
    result = linprog(cost, A_ub=a_ub, b_ub=-best, A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs")
    if result.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"min-max-regret LP failed: {result.message}")
    weights = np.clip(result.x[:n_policies], 0.0, None)
    weights /= weights.sum()
    regret = best - values @ weights
    return MinMaxRegret(weights=weights, regret=regret, max_regret=float(regret.max()))


def mmra_values(log_ratios: torch.Tensor, rewards: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """U[t, s] = mean over rankings of sum_y choice_s(y) (r_t(y) - mean_y r_t), padded [.., R, M] inputs.

    ``log_ratios[s]``: log pi_s(y|x) - log pi_ref(y|x) of each ranking's responses under policy s; policy
    s picks among them with probability softmax(log_ratios[s]) (its tilt of the reference). ``rewards[t]``:
    type t's implicit reward of the same responses, centred within each ranking so prompts with larger
    rewards do not weigh more. Entries at positions >= lengths[r] are ignored.
    """
    width = log_ratios.shape[-1]
    valid = torch.arange(width) < lengths.unsqueeze(-1)  # [R, M]
    choice = torch.softmax(log_ratios.double().masked_fill(~valid, -math.inf), dim=-1)  # [S, R, M]
    rewards = rewards.double().masked_fill(~valid, 0.0)
    centred = rewards - (rewards.sum(-1, keepdim=True) / lengths.unsqueeze(-1))
    centred = centred.masked_fill(~valid, 0.0)  # [T, R, M]
    return (torch.einsum("srm,trm->ts", choice, centred) / len(lengths)).numpy()
