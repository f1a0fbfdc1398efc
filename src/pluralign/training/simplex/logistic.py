"""Logistic loss on the simplex: safeguarded projected Newton with a Frank-Wolfe certificate."""

from __future__ import annotations

import torch

from pluralign.training.simplex.ops import gram, logistic, project_simplex, rows_of, segment_sum

#: smallest Levenberg-Marquardt damping of the logistic Newton steps, relative to the curvature bound
_MIN_DAMPING = 1e-12


def _face_newton(
    hess: torch.Tensor, grad: torch.Tensor, face: torch.Tensor, damping: torch.Tensor
) -> torch.Tensor:
    """Per group the step d minimizing grad.d + 1/2 d^T (hess + damping I) d with d = 0 off ``face``
    and sum(d) = 0 (staying on the face's affine hull)."""
    m, k = grad.shape
    both = face[:, :, None] & face[:, None, :]
    diag = torch.where(face, damping[:, None], torch.ones_like(grad))
    kkt = hess.new_zeros((m, k + 1, k + 1))
    kkt[:, :k, :k] = torch.where(both, hess, torch.zeros_like(hess)) + diag.diag_embed()
    kkt[:, :k, k] = face.double()
    kkt[:, k, :k] = face.double()
    rhs = torch.cat([torch.where(face, -grad, torch.zeros_like(grad)), grad.new_zeros((m, 1))], dim=1)
    d = torch.linalg.solve(kkt, rhs)[:, :k]
    return torch.where(torch.isfinite(d), d, torch.zeros_like(d))


def fit_logistic(
    A: torch.Tensor,
    group: torch.Tensor,
    counts: torch.Tensor,
    w0: torch.Tensor,
    ridge: torch.Tensor,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n_groups, k = w0.shape
    inv_n = 1.0 / counts.clamp(min=1).double()
    eye = torch.eye(k, dtype=torch.float64, device=A.device)
    W = project_simplex(w0)
    gap = torch.zeros(n_groups, dtype=torch.float64, device=A.device)
    objective = 0.5 * ridge * (W - w0).square().sum(-1)
    iterations = torch.zeros(n_groups, dtype=torch.long, device=A.device)
    # sigma(m) sigma(-m) <= 1/4 bounds the curvature, so 1/lipschitz is a projected-gradient step that
    # always satisfies the descent lemma: the fallback never needs a line search.
    lipschitz = 0.25 * inv_n * segment_sum(A.square().sum(-1), group, n_groups) + ridge
    step = 1.0 / lipschitz.clamp(min=1e-300)
    damping = torch.full((n_groups,), _MIN_DAMPING, dtype=torch.float64, device=A.device)

    sel = (counts > 0).nonzero().squeeze(1)
    rows, g_loc = rows_of(counts > 0, group)
    a = A[rows]
    live = torch.ones(len(sel), dtype=torch.bool, device=A.device)
    for it in range(max_iter + 1):
        if len(sel) == 0:
            break
        # `a`, `g_loc` are the rows of the groups `sel` (numbered 0..m-1); `live` marks those still running.
        m = len(sel)
        Wl, w0l, rl, inl, stl, lipl = W[sel], w0[sel], ridge[sel], inv_n[sel], step[sel], lipschitz[sel]
        margins = (a * Wl[g_loc]).sum(-1)
        f = segment_sum(logistic(margins), g_loc, m) * inl + 0.5 * rl * (Wl - w0l).square().sum(-1)
        s = torch.sigmoid(-margins)
        grad = -segment_sum(s[:, None] * a, g_loc, m) * inl[:, None] + rl[:, None] * (Wl - w0l)
        fw_gap = ((grad * Wl).sum(-1) - grad.amin(-1)).clamp(min=0)
        objective[sel], gap[sel] = f, fw_gap
        live &= fw_gap > tol
        if not live.any() or it == max_iter:
            break
        iterations[sel[live]] += 1
        hess = gram(a, s * (1 - s), g_loc, m) * inl[:, None, None] + rl[:, None, None] * eye

        # Projected-gradient point B: a guaranteed-descent fallback, and its support picks Newton's face.
        B = project_simplex(Wl - stl[:, None] * grad)
        face = B > 0
        # Gradient at B of the quadratic model around W.
        gB = grad + torch.einsum("gij,gj->gi", hess, B - Wl)
        # Accept a step only with the decrease the gradient step guarantees. Near the optimum that decrease
        # drops below the rounding error of f, so allow a few ulps of slack there, else the test rejects
        # exact Newton steps and the fit crawls on gradient steps.
        slack = 64 * torch.finfo(torch.float64).eps * (1 + f.abs())
        required = f + 1e-4 * (grad * (B - Wl)).sum(-1) + slack
        new_W = B.clone()
        pending = torch.ones(m, dtype=torch.bool, device=A.device)
        ra, rg = a, g_loc
        # Levenberg-Marquardt damping, relative to the curvature bound: tiny gives Newton steps, 1 gives
        # gradient-like steps. It adapts per group: where the model is poor (large, nearly piecewise-linear
        # margins) larger damping is tried at once, and it shrinks again after successes.
        level = damping[sel]
        for _ in range(3):
            d = _face_newton(hess, gB, face, level * lipl + 1e-30)
            cand = project_simplex(B + d)
            cm = (ra * cand[rg]).sum(-1)
            fc = segment_sum(logistic(cm), rg, m) * inl + 0.5 * rl * (cand - w0l).square().sum(-1)
            ok = pending & (fc <= required)
            new_W[ok] = cand[ok]
            damping[sel[ok]] = (level[ok] / 10).clamp(min=_MIN_DAMPING)
            pending &= ~ok
            if not pending.any():
                break
            level = torch.where(pending, (level * 100).clamp(max=1.0), level)
            # Only the groups still waiting need their rows evaluated again.
            keep_rows = pending[rg]
            ra, rg = ra[keep_rows], rg[keep_rows]
        damping[sel[pending]] = level[pending]
        W[sel[live]] = new_W[live]
        if live.sum() < 0.7 * m:
            # Most groups are done: keep only the rows of those still running.
            keep_rows = live[g_loc]
            renum = torch.cumsum(live.long(), 0) - 1
            a, g_loc = a[keep_rows], renum[g_loc[keep_rows]]
            sel, live = sel[live], live[live]
    return W, objective, gap, iterations
