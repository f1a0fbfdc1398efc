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

Modules: ``fit`` (validation, routing, ``SimplexFit``), ``logistic`` (projected Newton), ``hinge`` (HiGHS LP,
interior point, certificates), ``ops`` (projection, segment sums, Gram matrices shared by the solvers).
"""

from pluralign.training.simplex.fit import LOSSES, SimplexFit, fit_simplex_weights
from pluralign.training.simplex.ops import project_simplex

__all__ = ["LOSSES", "SimplexFit", "fit_simplex_weights", "project_simplex"]
