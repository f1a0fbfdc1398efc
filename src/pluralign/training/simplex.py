"""Exact few-shot weights when margins are linear in them (PAL-B with frozen maps and prototypes).

For every group u (a new user) with rows j, margins m_j = A_j . w and a prior point w0_u, solve

    min over w in the simplex   L_u(w) = (1/n_u) sum_j loss(A_j . w) + ridge_u / 2 * ||w - w0_u||^2

for all groups at once with tensor ops (segment sums over rows, batched K x K algebra); iterations loop,
groups and rows never do. Every fit ends with a per-group certificate ``gap >= L_u(w_u) - min L_u``.

- logistic: projected Newton (Levenberg-Marquardt damped, on the face picked by a projected-gradient
  step), safeguarded so each accepted step decreases L at least as much as that gradient step would
  (hence global convergence; quadratic near the optimum). Certificate: the Frank-Wolfe gap
  <grad L, w> - min_k (grad L)_k, an upper bound on L(w) - min L for convex L.
- hinge, ridge 0 (a linear program): by default all groups form one block-diagonal sparse LP (variables
  w_u and one slack per row) solved by HiGHS, which returns an optimal vertex.
- hinge, ridge > 0 (a strongly convex QP), or ridge 0 with ``lp_solver="ipm"``: a batched Mehrotra
  predictor-corrector interior point, one (K+1) x (K+1) system per group per iteration, ~10 iterations.
  Certificate for both hinge solvers: primal objective minus a dual bound built from the row duals
  clipped into their box [0, 1/n_u], valid for any iterate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("logistic", "hinge")

#: rows x (K*K) entries per chunk when accumulating per-group K x K matrices
_CHUNK_ENTRIES = 1 << 20
#: smallest Levenberg-Marquardt damping of the logistic Newton steps, relative to the curvature bound
_MIN_DAMPING = 1e-12


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


# --------------------------------------------------------------------------------------------------------
def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of each row of ``v`` ([..., K]) onto the probability simplex."""
    if v.ndim == 0 or v.shape[-1] == 0:
        raise ValueError(f"project_simplex needs a last dimension of size >= 1, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError("project_simplex got non-finite values")
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    # The support is the longest prefix of sorted entries staying above the threshold; taking the largest
    # index that passes (not the count) is robust to rounding breaking the monotonicity of the test.
    passes = u * k > css
    rho = torch.where(passes, k, torch.zeros_like(k)).amax(dim=-1, keepdim=True)
    theta = css.gather(-1, rho.long() - 1) / rho
    return torch.clamp(v - theta, min=0)


# --------------------------------------------------------------------------------------------------------
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
        objective = objective + _mean_loss(A, group, weights, counts, loss)
        converged = torch.ones(n_groups, dtype=torch.bool, device=A.device)
        return SimplexFit(weights, converged, iterations, objective, gap, "closed-form")

    if loss == "logistic":
        weights, objective, gap, iterations = _fit_logistic(A, group, counts, w0, ridge_t, tol, max_iter)
        method = "projected-newton"
    else:
        has_rows = counts > 0
        lp = has_rows & (ridge_t == 0) if lp_solver == "highs" else torch.zeros_like(has_rows)
        ipm = has_rows & ~lp
        methods = []
        if lp.any():
            w, obj, g, it = _fit_hinge_lp(A, group, counts, lp)
            weights[lp], objective[lp], gap[lp], iterations[lp] = w, obj, g, it
            methods.append("highs-lp")
        if ipm.any():
            w, obj, g, it = _fit_hinge_ipm(A, group, counts, w0, ridge_t, ipm, tol, max_iter)
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


def _segment_sum(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = values.new_zeros((n_groups, *values.shape[1:]))
    return out.index_add_(0, group, values)


def _logistic(margins: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(-m)) to full precision (F.softplus returns its input past a threshold, off by up to
    exp(-20) ~ 2e-9 per row, which would swamp a 1e-9 tolerance)."""
    return F.relu(-margins) + torch.log1p(torch.exp(-margins.abs()))


def _mean_loss(
    A: torch.Tensor, group: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, loss: str
) -> torch.Tensor:
    margins = (A * weights[group]).sum(-1)
    per_row = _logistic(margins) if loss == "logistic" else F.relu(1 - margins)
    return _segment_sum(per_row, group, len(counts)) / counts.clamp(min=1)


def _gram(A: torch.Tensor, coef: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per group sum_j coef_j A_j A_j^T, [n_groups, K, K]."""
    k = A.shape[1]
    out = A.new_zeros((n_groups, k * k))
    # Chunks small enough to stay in cache: several times faster than one large outer-product tensor.
    step = max(1, _CHUNK_ENTRIES // (k * k))
    for s in range(0, len(A), step):
        a = A[s : s + step]
        outer = ((coef[s : s + step, None] * a)[:, :, None] * a[:, None, :]).reshape(len(a), k * k)
        out.index_add_(0, group[s : s + step], outer)
    return out.reshape(n_groups, k, k)


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


# --------------------------------------------------------------------------------------------------------
# logistic: safeguarded projected Newton
def _fit_logistic(
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
    lipschitz = 0.25 * inv_n * _segment_sum(A.square().sum(-1), group, n_groups) + ridge
    step = 1.0 / lipschitz.clamp(min=1e-300)
    damping = torch.full((n_groups,), _MIN_DAMPING, dtype=torch.float64, device=A.device)

    sel = (counts > 0).nonzero().squeeze(1)
    rows, g_loc = _rows_of(counts > 0, group)
    a = A[rows]
    live = torch.ones(len(sel), dtype=torch.bool, device=A.device)
    for it in range(max_iter + 1):
        if len(sel) == 0:
            break
        # `a`, `g_loc` are the rows of the groups `sel` (numbered 0..m-1); `live` marks those still running.
        m = len(sel)
        Wl, w0l, rl, inl, stl, lipl = W[sel], w0[sel], ridge[sel], inv_n[sel], step[sel], lipschitz[sel]
        margins = (a * Wl[g_loc]).sum(-1)
        f = _segment_sum(_logistic(margins), g_loc, m) * inl + 0.5 * rl * (Wl - w0l).square().sum(-1)
        s = torch.sigmoid(-margins)
        grad = -_segment_sum(s[:, None] * a, g_loc, m) * inl[:, None] + rl[:, None] * (Wl - w0l)
        fw_gap = ((grad * Wl).sum(-1) - grad.amin(-1)).clamp(min=0)
        objective[sel], gap[sel] = f, fw_gap
        live &= fw_gap > tol
        if not live.any() or it == max_iter:
            break
        iterations[sel[live]] += 1
        hess = _gram(a, s * (1 - s), g_loc, m) * inl[:, None, None] + rl[:, None, None] * eye

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
            fc = _segment_sum(_logistic(cm), rg, m) * inl + 0.5 * rl * (cand - w0l).square().sum(-1)
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


# --------------------------------------------------------------------------------------------------------
# hinge
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
    v = _segment_sum(alpha[:, None] * a, g_loc, m)
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
    return _segment_sum(alpha, g_loc, m) + inner


def _hinge_primal(
    w: torch.Tensor,
    a: torch.Tensor,
    g_loc: torch.Tensor,
    inv_n: torch.Tensor,
    w0: torch.Tensor,
    ridge: torch.Tensor,
) -> torch.Tensor:
    margins = (a * w[g_loc]).sum(-1)
    hinge = _segment_sum(F.relu(1 - margins), g_loc, len(w)) * inv_n
    return hinge + 0.5 * ridge * (w - w0).square().sum(-1)


def _rows_of(mask: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose group is in ``mask``, and their group renumbered 0..mask.sum()-1."""
    local = torch.cumsum(mask.long(), 0) - 1
    rows = mask[group].nonzero().squeeze(1)
    return rows, local[group[rows]]


def _fit_hinge_lp(
    A: torch.Tensor, group: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Imported here: only this path needs them, and they are slow to import.
    from scipy import sparse
    from scipy.optimize import linprog

    rows, g_loc = _rows_of(mask, group)
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
        rows = _segment_sum(self.alpha * self.s + self.zeta * self.xi, g_loc, len(self.w))
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
    r_w = lam[:, None] * (st.w - w0) - _segment_sum(st.alpha[:, None] * a, g_loc, m) - st.mu
    r_w = r_w - st.nu[:, None]
    r_s = st.xi + (a * st.w[g_loc]).sum(-1) - 1 - st.s
    r_e = st.w.sum(-1) - 1
    # Eliminating d_s, d_zeta, d_xi, d_alpha row by row leaves, per group,
    # (ridge I + sum_j e_j A_j A_j^T + diag(mu / w)) dw - d_nu 1 = rhs,  1^T dw = -r_e.
    d_row = 1 + st.s * st.zeta / (st.alpha * st.xi)
    e = st.zeta / (st.xi * d_row)
    kkt = st.w.new_zeros((m, k + 1, k + 1))
    eye = torch.eye(k, dtype=st.w.dtype, device=st.w.device)
    kkt[:, :k, :k] = _gram(a, e, g_loc, m) + lam[:, None, None] * eye + (st.mu / st.w).diag_embed()
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
    rhs = -sy.r_w + _segment_sum(p[:, None] * a, g_loc, m) + r_mw / st.w
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


def _fit_hinge_ipm(
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
    rows, g_loc = _rows_of(mask, group)
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
