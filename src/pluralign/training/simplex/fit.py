"""The public entry point: validate the inputs, route each group to its solver, return a SimplexFit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pluralign.training.simplex.hinge import fit_hinge_ipm, fit_hinge_lp
from pluralign.training.simplex.logistic import fit_logistic
from pluralign.training.simplex.ops import mean_loss, project_simplex

LOSSES = ("logistic", "hinge")


@dataclass(frozen=True)
class SimplexFit:
    """Result of :func:`fit_simplex_weights`; every tensor has one entry (row) per group.

    ``gap`` bounds the suboptimality ``objective - min objective`` of each group (Frank-Wolfe gap for the
    logistic loss, primal-dual gap for the hinge); ``converged`` is ``gap <= tol``. ``iterations`` counts
    solver iterations per group (for the hinge LP, the simplex iterations of the one joint LP).
    """

    weights: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    objective: torch.Tensor
    gap: torch.Tensor
    method: str


def fit_simplex_weights(
    A: torch.Tensor,
    group: torch.Tensor,
    n_groups: int,
    *,
    loss: str = "logistic",
    prior: torch.Tensor | None = None,
    ridge: float | torch.Tensor = 0.0,
    tol: float = 1e-9,
    max_iter: int = 200,
    lp_solver: str = "highs",
) -> SimplexFit:
    """Per group u, the w on the simplex minimizing mean_j loss(A_j . w) + ridge_u/2 ||w - prior_u||^2.

    ``A`` [n, K] holds each row's margin under each prototype, ``group`` [n] (0..n_groups-1) its group.
    ``prior`` ([K] or [n_groups, K], on the simplex; uniform when None) is the ridge target and the answer
    for groups without rows. ``ridge`` is a float or one value per group, >= 0. ``tol`` is the certified
    suboptimality ``gap`` to reach; ``max_iter`` caps Newton / interior-point iterations. ``lp_solver``
    ("highs" or "ipm") picks the solver for hinge groups with ridge 0, whose minimizer is often not
    unique: HiGHS returns an optimal vertex, the interior point a central point of the optimal set.
    Computation is float64 on A's device (HiGHS on the CPU).
    """
    A, group, w0, ridge_t = _validate(A, group, n_groups, loss, prior, ridge, tol, max_iter, lp_solver)
    k = A.shape[1]
    counts = torch.bincount(group, minlength=n_groups)
    weights = project_simplex(w0) if n_groups else w0.clone()
    objective = 0.5 * ridge_t * (weights - w0).square().sum(-1)
    gap = torch.zeros(n_groups, dtype=torch.float64, device=A.device)
    iterations = torch.zeros(n_groups, dtype=torch.long, device=A.device)
    if k == 1 or len(A) == 0:
        # w = prior is optimal (K = 1 leaves only w = 1); report the loss of the rows anyway.
        objective = objective + mean_loss(A, group, weights, counts, loss)
        converged = torch.ones(n_groups, dtype=torch.bool, device=A.device)
        return SimplexFit(weights, converged, iterations, objective, gap, "closed-form")

    if loss == "logistic":
        weights, objective, gap, iterations = fit_logistic(A, group, counts, w0, ridge_t, tol, max_iter)
        method = "projected-newton"
    else:
        has_rows = counts > 0
        lp = has_rows & (ridge_t == 0) if lp_solver == "highs" else torch.zeros_like(has_rows)
        ipm = has_rows & ~lp
        methods = []
        if lp.any():
            w, obj, g, it = fit_hinge_lp(A, group, counts, lp)
            weights[lp], objective[lp], gap[lp], iterations[lp] = w, obj, g, it
            methods.append("highs-lp")
        if ipm.any():
            w, obj, g, it = fit_hinge_ipm(A, group, counts, w0, ridge_t, ipm, tol, max_iter)
            weights[ipm], objective[ipm], gap[ipm], iterations[ipm] = w, obj, g, it
            methods.append("interior-point")
        method = "+".join(methods) or "closed-form"
    return SimplexFit(weights, gap <= tol, iterations, objective, gap, method)


def _validate(
    A: torch.Tensor,
    group: torch.Tensor,
    n_groups: int,
    loss: str,
    prior: torch.Tensor | None,
    ridge: float | torch.Tensor,
    tol: float,
    max_iter: int,
    lp_solver: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss '{loss}', expected one of {', '.join(LOSSES)}")
    A = torch.as_tensor(A)
    group = torch.as_tensor(group)
    if A.ndim != 2 or A.shape[1] < 1:
        raise ValueError(f"A must have shape [n_rows, K] with K >= 1, got {tuple(A.shape)}")
    if A.dtype.is_complex or A.dtype == torch.bool:
        raise ValueError(f"A must hold real numbers, got dtype {A.dtype}")
    A = A.to(torch.float64)
    if not torch.isfinite(A).all():
        raise ValueError("A contains non-finite values")
    if group.ndim != 1 or len(group) != len(A):
        raise ValueError(
            f"group must have shape [{len(A)}] (one entry per row of A), got {tuple(group.shape)}"
        )
    if group.is_floating_point() or group.dtype == torch.bool:
        raise ValueError(f"group must hold integer indices, got dtype {group.dtype}")
    group = group.to(device=A.device, dtype=torch.long)
    if isinstance(n_groups, bool) or not isinstance(n_groups, int | np.integer) or n_groups < 0:
        raise ValueError(f"n_groups must be an int >= 0, got {n_groups!r}")
    n_groups = int(n_groups)
    if len(group) and (int(group.min()) < 0 or int(group.max()) >= n_groups):
        raise ValueError(
            f"group indices must lie in [0, {n_groups}), got range [{int(group.min())}, {int(group.max())}]"
        )
    k = A.shape[1]
    if prior is None:
        w0 = torch.full((n_groups, k), 1.0 / k, dtype=torch.float64, device=A.device)
    else:
        prior = torch.as_tensor(prior).to(device=A.device, dtype=torch.float64)
        if prior.shape not in ((k,), (n_groups, k)):
            raise ValueError(f"prior must have shape [{k}] or [{n_groups}, {k}], got {tuple(prior.shape)}")
        if not torch.isfinite(prior).all():
            raise ValueError("prior contains non-finite values")
        if (prior < -1e-9).any() or ((prior.sum(-1) - 1).abs() > 1e-5).any():
            raise ValueError("prior must lie on the probability simplex (entries >= 0 summing to 1)")
        w0 = prior.expand(n_groups, k).clone()
    if isinstance(ridge, torch.Tensor):
        ridge_t = ridge.to(device=A.device, dtype=torch.float64)
        if ridge_t.ndim == 0:
            ridge_t = ridge_t.expand(n_groups)
        if ridge_t.shape != (n_groups,):
            raise ValueError(f"ridge must be a float or have shape [{n_groups}], got {tuple(ridge_t.shape)}")
        ridge_t = ridge_t.clone()
    else:
        ridge_t = torch.full((n_groups,), float(ridge), dtype=torch.float64, device=A.device)
    if not torch.isfinite(ridge_t).all() or (ridge_t < 0).any():
        shown = "a tensor with negative or non-finite entries" if isinstance(ridge, torch.Tensor) else ridge
        raise ValueError(f"ridge must be finite and >= 0, got {shown}")
    if not (isinstance(tol, int | float) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if lp_solver not in ("highs", "ipm"):
        raise ValueError(f"unknown lp_solver '{lp_solver}', expected 'highs' or 'ipm'")
    return A, group, w0, ridge_t
