"""Few-shot vectors of users whose margins are affine in a free vector (matrix factorisation, per-user
rewards): one ridge-penalised logistic regression per user, all users solved at once.

For every group u (a new user) with rows j, margins m_j = a_j + x_j . v and a prior point v0_u, solve

    min over v in R^D   L_u(v) = sum_j log(1 + exp(-m_j)) + ridge / 2 * ||v - v0_u||^2

(the sum form: the ridge is the weight of a Gaussian prior N(v0_u, I / ridge), the same whatever n_u is).
L_u is strictly convex for ridge > 0, so Newton's method with a backtracking (Armijo) line search converges
to the unique minimiser, quadratically near it. The users' rows are padded into a [G, n_max, D] block and
every iteration is batched tensor algebra; users are processed in chunks that bound the memory, never one
by one. The Newton system (ridge I + X^T C X) d = -g is solved as D x D (Cholesky) when a user has at least
D rows, else through the Woodbury identity with S = C^(1/2) X (n_u x D):

    (ridge I + S^T S)^-1 g = (g - S^T (ridge I + S S^T)^-1 S g) / ridge

an n_u x n_u solve (few-shot users have 5-20 rows of a few hundred features: 768-d per-user rewards on
Polis went from minutes to seconds).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

__all__ = ["fit_ridge_logistic"]

logger = logging.getLogger(__name__)

#: float64 entries per chunk of users (rows block plus Hessians): 2^24 x 8 bytes = 128 MB
CHUNK_ENTRIES = 1 << 24
#: step sizes the line search tries: 1, 1/2, ..., 2^-(LINE_SEARCH_STEPS - 1)
LINE_SEARCH_STEPS = 30
ARMIJO = 1e-4


def fit_ridge_logistic(
    features: torch.Tensor,
    group: torch.Tensor,
    n_groups: int,
    *,
    ridge: float,
    prior: torch.Tensor,
    offsets: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-12,
) -> torch.Tensor:
    """The minimiser of L_u (module docstring) for groups 0..n_groups-1, [n_groups, D] float64.

    ``features`` [n, D] (x_j), ``group`` [n] (u of each row), ``offsets`` [n] (a_j; None: 0), ``prior``
    [D] or [n_groups, D] (v0). Groups without rows get their prior. Stops when every group's Newton
    decrement (half the predicted decrease) is below ``tol`` or after ``max_iter`` iterations.
    """
    if not (ridge > 0 and math.isfinite(ridge)):
        raise ValueError(
            f"ridge must be > 0, got {ridge}: without it a user whose answers a vector separates "
            "has no best vector (the loss keeps falling as it grows)"
        )
    features = features.detach().double()
    n, dim = features.shape
    offsets = torch.zeros(n, dtype=torch.float64) if offsets is None else offsets.detach().double()
    prior = prior.detach().double().expand(n_groups, dim).clone()
    out = prior.clone()
    if n == 0:
        return out
    counts = torch.bincount(group, minlength=n_groups)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    # chunks of consecutive groups whose padded block and Hessians fit in CHUNK_ENTRIES
    start = 0
    while start < n_groups:
        width = max(int(counts[start]), 1)
        stop = start + 1
        while stop < n_groups:
            width_next = max(width, int(counts[stop]))
            if (stop + 1 - start) * (width_next * dim + min(width_next, dim) ** 2) > CHUNK_ENTRIES:
                break
            width, stop = width_next, stop + 1
        members = torch.arange(start, stop)
        if counts[members].sum() > 0:
            out[members] = _solve_chunk(
                features,
                offsets,
                order,
                starts[members],
                counts[members],
                prior[members],
                ridge,
                max_iter,
                tol,
            )
        start = stop
    return out


def _solve_chunk(
    features: torch.Tensor,
    offsets: torch.Tensor,
    order: torch.Tensor,
    starts: torch.Tensor,
    counts: torch.Tensor,
    prior: torch.Tensor,
    ridge: float,
    max_iter: int,
    tol: float,
) -> torch.Tensor:
    n_groups, dim = prior.shape
    width = max(int(counts.max()), 1)
    slot = torch.arange(width)
    mask = slot[None, :] < counts[:, None]  # [G, W]
    rows = order[(starts[:, None] + slot[None, :]).clamp(max=len(order) - 1)]
    x = torch.where(mask[..., None], features[rows], 0.0)  # [G, W, D]
    a = torch.where(mask, offsets[rows], 0.0)
    weight = mask.double()
    woodbury = width < dim
    eye = torch.eye(width if woodbury else dim, dtype=torch.float64)

    def objective(v: torch.Tensor) -> torch.Tensor:  # v [..., G, D] -> [..., G]
        margin = a + torch.einsum("gwd,...gd->...gw", x, v)
        fit = (F.softplus(-margin) * weight).sum(-1)
        return fit + 0.5 * ridge * (v - prior).square().sum(-1)

    v = prior.clone()
    steps = 0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=torch.float64)
    decrement = torch.full((n_groups,), math.inf, dtype=torch.float64)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        margin = a + torch.einsum("gwd,gd->gw", x, v)
        p = torch.sigmoid(-margin) * weight  # -d loss / d margin
        grad = -torch.einsum("gw,gwd->gd", p, x) + ridge * (v - prior)
        curvature = torch.sigmoid(margin) * p  # s (1 - s), zero on padding
        if woodbury:
            s = curvature.sqrt()[..., None] * x  # [G, W, D]
            gram = torch.einsum("gwd,gvd->gwv", s, s) + ridge * eye  # [G, W, W]
            inner = torch.cholesky_solve(
                torch.einsum("gwd,gd->gw", s, grad)[..., None], torch.linalg.cholesky(gram)
            ).squeeze(-1)
            direction = -(grad - torch.einsum("gwd,gw->gd", s, inner)) / ridge
        else:
            hessian = torch.einsum("gw,gwd,gwe->gde", curvature, x, x) + ridge * eye
            direction = torch.cholesky_solve(-grad[..., None], torch.linalg.cholesky(hessian)).squeeze(-1)
        slope = (grad * direction).sum(-1)  # <= 0
        decrement = -0.5 * slope
        if float(decrement.max()) < tol:
            break
        current = objective(v)
        trial = objective(v[None] + steps[:, None, None] * direction[None])  # [T, G]
        accepted = trial <= current + ARMIJO * steps[:, None] * slope
        # the largest accepted step per group (none accepted: the group is at its optimum to rounding)
        first = torch.where(accepted.any(0), accepted.double().argmax(0), LINE_SEARCH_STEPS)
        step = torch.cat([steps, torch.zeros(1, dtype=torch.float64)])[first]
        v = v + step[:, None] * direction
    logger.debug(
        "ridge logistic: %d groups, %d iterations, max decrement %.3g",
        n_groups,
        iterations,
        float(decrement.max()),
    )
    return v
