"""Hinge loss on the simplex: one sparse HiGHS LP (ridge 0) or a batched Mehrotra interior point, both
certified by a dual bound built from the row duals."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pluralign.training.simplex.ops import gram, project_simplex, rows_of, segment_sum


def _hinge_dual_bound(
    alpha: torch.Tensor,
    a: torch.Tensor,
    g_loc: torch.Tensor,
    m: int,
    w0: torch.Tensor,
    ridge: torch.Tensor,
) -> torch.Tensor:
    """A lower bound on each group's optimal hinge objective, valid for any alpha_j in [0, 1/n_u]:
    sum(alpha) + min_{w in simplex} phi(w),  phi(w) = -v.w + ridge/2 ||w - w0||^2,  v = sum_j alpha_j A_j."""
    v = segment_sum(alpha[:, None] * a, g_loc, m)
    positive = ridge > 0
    safe = torch.where(positive, ridge, torch.ones_like(ridge))
    w = project_simplex(w0 + v / safe[:, None])
    # With no ridge the inner minimum is a vertex: the largest entry of v.
    vertex = F.one_hot(v.argmax(-1), v.shape[1]).double()
    w = torch.where(positive[:, None], w, vertex)
    # v / ridge loses w0's digits when the ridge is tiny, so w only nearly minimizes phi; subtracting its
    # Frank-Wolfe gap (phi is convex) keeps the bound valid whatever the rounding.
    grad = -v + ridge[:, None] * (w - w0)
    fw_gap = ((grad * w).sum(-1) - grad.amin(-1)).clamp(min=0)
    inner = -(v * w).sum(-1) + 0.5 * ridge * (w - w0).square().sum(-1) - fw_gap
    return segment_sum(alpha, g_loc, m) + inner


def _hinge_primal(
    w: torch.Tensor,
    a: torch.Tensor,
    g_loc: torch.Tensor,
    inv_n: torch.Tensor,
    w0: torch.Tensor,
    ridge: torch.Tensor,
) -> torch.Tensor:
    margins = (a * w[g_loc]).sum(-1)
    hinge = segment_sum(F.relu(1 - margins), g_loc, len(w)) * inv_n
    return hinge + 0.5 * ridge * (w - w0).square().sum(-1)


def fit_hinge_lp(
    A: torch.Tensor, group: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Imported here: only this path needs them, and they are slow to import.
    from scipy import sparse
    from scipy.optimize import linprog

    rows, g_loc = rows_of(mask, group)
    a = A[rows]
    m, k, n = int(mask.sum()), A.shape[1], len(rows)
    inv_n = 1.0 / counts[mask].double()
    a_np, g_np = a.cpu().numpy(), g_loc.cpu().numpy()
    # Variables: w (m*K, group-major) then one slack per row. Row j: -A_j.w_u - xi_j <= -1.
    j = np.arange(n)
    ub_rows = np.concatenate([np.repeat(j, k), j])
    ub_cols = np.concatenate([(g_np[:, None] * k + np.arange(k)).ravel(), m * k + j])
    ub_vals = np.concatenate([-a_np.ravel(), -np.ones(n)])
    a_ub = sparse.csr_matrix((ub_vals, (ub_rows, ub_cols)), shape=(n, m * k + n))
    a_eq = sparse.csr_matrix(
        (np.ones(m * k), (np.repeat(np.arange(m), k), np.arange(m * k))), shape=(m, m * k + n)
    )
    c = np.concatenate([np.zeros(m * k), inv_n.cpu().numpy()[g_np]])
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=-np.ones(n),
        A_eq=a_eq,
        b_eq=np.ones(m),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the hinge LP: {res.message}")
    w = project_simplex(torch.from_numpy(res.x[: m * k]).reshape(m, k).to(A.device))
    zeros = torch.zeros(m, dtype=torch.float64, device=A.device)
    objective = _hinge_primal(w, a, g_loc, inv_n, w, zeros)  # no ridge term in the LP
    # HiGHS's row duals give a certificate: clip them into the dual box and evaluate the dual.
    alpha = torch.from_numpy(-res.ineqlin.marginals).to(A.device)
    alpha = torch.minimum(alpha.clamp(min=0), inv_n[g_loc])
    dual = _hinge_dual_bound(alpha, a, g_loc, m, w, zeros)
    iterations = torch.full((m,), int(res.nit), dtype=torch.long, device=A.device)
    return w, objective, (objective - dual).clamp(min=0), iterations


class _HingeIPMState(NamedTuple):
    """Interior-point iterate for the groups being solved; row tensors follow ``a``/``g_loc``."""

    w: torch.Tensor  # [m, K]
    mu: torch.Tensor  # [m, K], multipliers of w >= 0
    nu: torch.Tensor  # [m], multiplier of sum(w) = 1
    xi: torch.Tensor  # [rows], hinge slacks
    s: torch.Tensor  # [rows], xi + A w - 1
    alpha: torch.Tensor  # [rows], multipliers of s >= 0 (the hinge duals)
    zeta: torch.Tensor  # [rows], multipliers of xi >= 0

    def step(self, d: _HingeIPMState, t: torch.Tensor, g_loc: torch.Tensor) -> _HingeIPMState:
        tr = t[g_loc]
        return _HingeIPMState(
            self.w + t[:, None] * d.w,
            self.mu + t[:, None] * d.mu,
            self.nu + t * d.nu,
            self.xi + tr * d.xi,
            self.s + tr * d.s,
            self.alpha + tr * d.alpha,
            self.zeta + tr * d.zeta,
        )

    def complementarity(self, g_loc: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        rows = segment_sum(self.alpha * self.s + self.zeta * self.xi, g_loc, len(self.w))
        return (rows + (self.mu * self.w).sum(-1)) / size

    def max_step(self, d: _HingeIPMState, g_loc: torch.Tensor) -> torch.Tensor:
        """Largest t <= 1 per group keeping every cone variable >= 0."""

        def ratio(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
            return torch.where(dx < 0, x / -dx, torch.full_like(x, math.inf))

        pairs = ((self.xi, d.xi), (self.s, d.s), (self.alpha, d.alpha), (self.zeta, d.zeta))
        per_row = torch.stack([ratio(x, dx) for x, dx in pairs]).amin(0)
        per_group = torch.full_like(self.nu, math.inf).scatter_reduce(0, g_loc, per_row, "amin")
        per_group = torch.minimum(per_group, ratio(self.w, d.w).amin(-1))
        return torch.minimum(per_group, ratio(self.mu, d.mu).amin(-1)).clamp(max=1.0)


class _IPMSystem(NamedTuple):
    """Residuals at an iterate and the factored reduced Newton system (shared by both Mehrotra steps)."""

    r_xi: torch.Tensor  # stationarity in xi: c - alpha - zeta
    r_w: torch.Tensor  # stationarity in w: ridge (w - w0) - A^T alpha - mu - nu
    r_s: torch.Tensor  # primal: xi + A w - 1 - s
    r_e: torch.Tensor  # primal: sum(w) - 1
    d_row: torch.Tensor
    e: torch.Tensor
    lu: tuple[torch.Tensor, torch.Tensor]


def _ipm_system(
    st: _HingeIPMState,
    a: torch.Tensor,
    g_loc: torch.Tensor,
    c: torch.Tensor,
    lam: torch.Tensor,
    w0: torch.Tensor,
) -> _IPMSystem:
    m, k = st.w.shape
    r_xi = c[g_loc] - st.alpha - st.zeta
    r_w = lam[:, None] * (st.w - w0) - segment_sum(st.alpha[:, None] * a, g_loc, m) - st.mu
    r_w = r_w - st.nu[:, None]
    r_s = st.xi + (a * st.w[g_loc]).sum(-1) - 1 - st.s
    r_e = st.w.sum(-1) - 1
    # Eliminating d_s, d_zeta, d_xi, d_alpha row by row leaves, per group,
    # (ridge I + sum_j e_j A_j A_j^T + diag(mu / w)) dw - d_nu 1 = rhs,  1^T dw = -r_e.
    d_row = 1 + st.s * st.zeta / (st.alpha * st.xi)
    e = st.zeta / (st.xi * d_row)
    kkt = st.w.new_zeros((m, k + 1, k + 1))
    eye = torch.eye(k, dtype=st.w.dtype, device=st.w.device)
    kkt[:, :k, :k] = gram(a, e, g_loc, m) + lam[:, None, None] * eye + (st.mu / st.w).diag_embed()
    kkt[:, :k, k] = 1.0
    kkt[:, k, :k] = 1.0
    return _IPMSystem(r_xi, r_w, r_s, r_e, d_row, e, torch.linalg.lu_factor(kkt))


def _ipm_direction(
    st: _HingeIPMState,
    sy: _IPMSystem,
    a: torch.Tensor,
    g_loc: torch.Tensor,
    r_as: torch.Tensor,
    r_zx: torch.Tensor,
    r_mw: torch.Tensor,
) -> _HingeIPMState:
    """Newton step whose complementarity products change by r_as (alpha s), r_zx (zeta xi), r_mw (mu w)."""
    m, k = st.w.shape
    q = -sy.r_s + r_as / st.alpha - (st.s / st.alpha) * (sy.r_xi - r_zx / st.xi)
    p = sy.r_xi - r_zx / st.xi + (st.zeta / st.xi) * q / sy.d_row
    rhs = -sy.r_w + segment_sum(p[:, None] * a, g_loc, m) + r_mw / st.w
    sol = torch.linalg.lu_solve(*sy.lu, torch.cat([rhs, -sy.r_e[:, None]], 1)[:, :, None])[..., 0]
    dw = sol[:, :k]
    a_dw = (a * dw[g_loc]).sum(-1)
    d_xi = (q - a_dw) / sy.d_row
    d_alpha = p - sy.e * a_dw
    return _HingeIPMState(
        w=dw,
        mu=(r_mw - st.mu * dw) / st.w,
        nu=-sol[:, k],
        xi=d_xi,
        s=(r_as - st.s * d_alpha) / st.alpha,
        alpha=d_alpha,
        zeta=(r_zx - st.zeta * d_xi) / st.xi,
    )


def fit_hinge_ipm(
    A: torch.Tensor,
    group: torch.Tensor,
    counts: torch.Tensor,
    w0: torch.Tensor,
    ridge: torch.Tensor,
    mask: torch.Tensor,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mehrotra predictor-corrector interior point on  min c.xi + ridge/2 ||w - w0||^2  subject to
    s = xi + A w - 1 >= 0, xi >= 0, w >= 0, sum(w) = 1  (c_j = 1/n_u), for the groups in ``mask``.

    Row variables are eliminated row by row, leaving one (K+1) x (K+1) system per group; each group takes
    its own step. Stops per group on the gap between the projected primal and the clipped dual.
    """
    m_all, k = int(mask.sum()), A.shape[1]
    dev, f64 = A.device, torch.float64
    lam_all, w0_all = ridge[mask], w0[mask]
    c_all = 1.0 / counts[mask].double()
    size_all = 2 * counts[mask].double() + k  # complementarity pairs per group
    rows, g_loc = rows_of(mask, group)
    a = A[rows]

    # Start strictly inside every cone: w halfway to the barycentre, slacks >= 1, multipliers at c/2.
    w = 0.5 * project_simplex(w0_all) + 0.5 / k
    margin = (a * w[g_loc]).sum(-1)
    xi = F.relu(1 - margin) + 1
    half_c = 0.5 * c_all[g_loc]
    st = _HingeIPMState(
        w,
        c_all[:, None] / k * torch.ones_like(w),
        torch.zeros_like(c_all),
        xi,
        xi + margin - 1,
        half_c,
        half_c,
    )

    best_w = project_simplex(w0_all)
    best_p = _hinge_primal(best_w, a, g_loc, c_all, w0_all, lam_all)
    best_d = torch.full((m_all,), -math.inf, dtype=f64, device=dev)
    iterations = torch.zeros(m_all, dtype=torch.long, device=dev)
    sel = torch.arange(m_all, device=dev)

    for it in range(max_iter + 1):
        m = len(sel)
        lam, w0l, c_g = lam_all[sel], w0_all[sel], c_all[sel]
        # Certificate: the iterate projected onto the simplex against the duals clipped into their box.
        wp = project_simplex(st.w)
        primal = _hinge_primal(wp, a, g_loc, c_g, w0l, lam)
        dual = _hinge_dual_bound(torch.minimum(st.alpha.clamp(min=0), c_g[g_loc]), a, g_loc, m, w0l, lam)
        better = primal < best_p[sel]
        best_p[sel] = torch.where(better, primal, best_p[sel])
        best_w[sel] = torch.where(better[:, None], wp, best_w[sel])
        best_d[sel] = torch.maximum(best_d[sel], dual)
        live = best_p[sel] - best_d[sel] > tol
        if not live.any() or it == max_iter:
            break
        if live.sum() < 0.7 * m:
            keep = live[g_loc]
            renum = torch.cumsum(live.long(), 0) - 1
            a, g_loc = a[keep], renum[g_loc[keep]]
            st = _HingeIPMState(
                st.w[live], st.mu[live], st.nu[live], st.xi[keep], st.s[keep], st.alpha[keep], st.zeta[keep]
            )
            sel = sel[live]
            m = len(sel)
            lam, w0l, c_g = lam_all[sel], w0_all[sel], c_all[sel]
        iterations[sel] += 1
        size = size_all[sel]

        system = _ipm_system(st, a, g_loc, c_g, lam, w0l)
        # Mehrotra: the affine step's progress sets the centering, its second-order term corrects.
        comp = st.complementarity(g_loc, size)
        aff = _ipm_direction(st, system, a, g_loc, -st.alpha * st.s, -st.zeta * st.xi, -st.mu * st.w)
        comp_aff = st.step(aff, st.max_step(aff, g_loc), g_loc).complementarity(g_loc, size)
        target = (comp_aff / comp).clamp(max=1.0) ** 3 * comp
        tr = target[g_loc]
        cor = _ipm_direction(
            st,
            system,
            a,
            g_loc,
            tr - st.alpha * st.s - aff.alpha * aff.s,
            tr - st.zeta * st.xi - aff.zeta * aff.xi,
            target[:, None] - st.mu * st.w - aff.mu * aff.w,
        )
        st = st.step(cor, 0.99 * st.max_step(cor, g_loc), g_loc)
    gap = (best_p - best_d).clamp(min=0)
    return best_w, best_p, gap, iterations
