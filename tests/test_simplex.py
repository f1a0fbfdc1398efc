"""Exact simplex-constrained few-shot fits against independent scipy solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from scipy.special import expit

from pluralign.training.simplex import fit_simplex_weights, project_simplex

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- references
def _simplex_constraints(k: int, n_extra: int = 0) -> list[dict]:
    ones = np.r_[np.ones(k), np.zeros(n_extra)]
    return [{"type": "eq", "fun": lambda x: x[:k].sum() - 1, "jac": lambda x: ones}]


def _best_slsqp(fun, jac, k: int, n_extra: int = 0, extra_cons=(), x0s=None) -> np.ndarray:
    """SLSQP from several starts (the barycentre and every vertex); the best feasible answer."""
    best, best_x = np.inf, None
    starts = x0s if x0s is not None else [np.full(k, 1 / k), *np.eye(k)]
    for x0 in starts:
        res = minimize(
            fun,
            x0,
            jac=jac,
            method="SLSQP",
            bounds=[(0, None)] * (k + n_extra),
            constraints=[*_simplex_constraints(k, n_extra), *extra_cons],
            options={"ftol": 1e-15, "maxiter": 2000},
        )
        if res.fun < best:
            best, best_x = res.fun, res.x
    return best_x


def logistic_objective(a: np.ndarray, w: np.ndarray, w0: np.ndarray, ridge: float) -> float:
    return float(np.logaddexp(0, -a @ w).mean() + 0.5 * ridge * np.sum((w - w0) ** 2))


def hinge_objective(a: np.ndarray, w: np.ndarray, w0: np.ndarray, ridge: float) -> float:
    return float(np.maximum(0, 1 - a @ w).mean() + 0.5 * ridge * np.sum((w - w0) ** 2))


def on_simplex(w: np.ndarray) -> np.ndarray:
    w = np.clip(w, 0, None)
    return w / w.sum()


def ref_logistic(a: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    k = a.shape[1]

    def jac(w):
        return -(expit(-(a @ w))[:, None] * a).mean(0) + ridge * (w - w0)

    w = _best_slsqp(lambda w: logistic_objective(a, w, w0, ridge), jac, k)
    return on_simplex(w)


def ref_hinge_lp(a: np.ndarray) -> float:
    n, k = a.shape
    res = linprog(
        np.r_[np.zeros(k), np.full(n, 1 / n)],
        A_ub=np.c_[-a, -np.eye(n)],
        b_ub=-np.ones(n),
        A_eq=np.r_[np.ones(k), np.zeros(n)][None],
        b_eq=[1.0],
        bounds=(0, None),
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


def ref_hinge_qp(a: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """Epigraph form: min mean(xi) + ridge/2 ||w - w0||^2, xi >= 1 - A w, xi >= 0, w on the simplex."""
    n, k = a.shape
    hinge_rows = {
        "type": "ineq",
        "fun": lambda x: x[k:] + a @ x[:k] - 1,
        "jac": lambda x: np.c_[a, np.eye(n)],
    }

    def fun(x):
        return x[k:].mean() + 0.5 * ridge * np.sum((x[:k] - w0) ** 2)

    def jac(x):
        return np.r_[ridge * (x[:k] - w0), np.full(n, 1 / n)]

    starts = [np.r_[v, np.maximum(0, 1 - a @ v)] for v in [np.full(k, 1 / k), *np.eye(k)]]
    x = _best_slsqp(fun, jac, k, n, [hinge_rows], starts)
    return on_simplex(x[:k])


def random_problem(rng: np.random.Generator, n_groups: int, n_rows: int, k: int, scale: float = 1.0):
    a = rng.normal(size=(n_groups * n_rows, k)) * scale
    group = np.repeat(np.arange(n_groups), n_rows)
    return a, group


def fw_gap(a: np.ndarray, w: np.ndarray, w0: np.ndarray, ridge: float) -> float:
    """Frank-Wolfe gap <g, w> - min g of the logistic objective, g its exact gradient."""
    g = -(expit(-(a @ w))[:, None] * a).mean(0) + ridge * (w - w0)
    return float(g @ w - g.min())


# ----------------------------------------------------------------------------------------- project_simplex
@pytest.mark.parametrize("k", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_project_simplex_satisfies_the_projection_optimality_conditions(k: int, scale: float) -> None:
    rng = np.random.default_rng(k)
    v = torch.tensor(rng.normal(size=(7, 4, k)) * scale)
    p = project_simplex(v)
    assert p.shape == v.shape
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(7, 4, dtype=torch.float64), rtol=0, atol=1e-12)
    # p = max(v - theta, 0) for one theta per row: v - p equals theta on the support, v <= theta off it.
    theta = ((v - p) * (p > 0)).sum(-1) / (p > 0).sum(-1)
    support = p > 0
    assert torch.allclose((v - p)[support], theta[..., None].expand_as(v)[support], atol=1e-9 * (1 + scale))
    assert (v[~support] <= theta[..., None].expand_as(v)[~support] + 1e-9 * (1 + scale)).all()


def test_project_simplex_matches_a_numerical_minimizer() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 7))
        v = rng.normal(size=k) * rng.choice([0.1, 1, 3])
        ref = _best_slsqp(lambda x, v=v: np.sum((x - v) ** 2), lambda x, v=v: 2 * (x - v), k)
        p = project_simplex(torch.tensor(v)).numpy()
        np.testing.assert_allclose(p, ref, atol=1e-6)


def test_project_simplex_fixes_points_of_the_simplex_and_breaks_ties_evenly() -> None:
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(project_simplex(w), w)
    torch.testing.assert_close(project_simplex(torch.full((4,), 7.0)), torch.full((4,), 0.25))
    torch.testing.assert_close(project_simplex(torch.tensor([5.0, -5.0])), torch.tensor([1.0, 0.0]))


def test_project_simplex_rejects_empty_and_non_finite_input() -> None:
    with pytest.raises(ValueError, match="last dimension"):
        project_simplex(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="non-finite"):
        project_simplex(torch.tensor([1.0, float("nan")]))


# ---------------------------------------------------------------------------------------------- logistic
@pytest.mark.parametrize("ridge", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_logistic_fit_matches_slsqp(ridge: float, scale: float) -> None:
    rng = np.random.default_rng(int(10 * ridge + scale))
    for k, n_rows in [(2, 7), (3, 20), (5, 4)]:
        a, group = random_problem(rng, 4, n_rows, k, scale)
        w0 = rng.dirichlet(np.ones(k))
        fit = fit_simplex_weights(
            torch.tensor(a), torch.tensor(group), 4, prior=torch.tensor(w0), ridge=ridge, tol=1e-10
        )
        assert fit.converged.all() and fit.method == "projected-newton"
        assert fit.weights.dtype == torch.float64
        for u in range(4):
            au, w = a[group == u], fit.weights[u].numpy()
            assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
            ours = logistic_objective(au, w, w0, ridge)
            assert ours == pytest.approx(fit.objective[u].item(), abs=1e-12)
            assert fw_gap(au, w, w0, ridge) <= 1e-10 + 1e-13
            ref = ref_logistic(au, w0, ridge)
            # Our answer is certified optimal: never worse than SLSQP, and SLSQP agrees to 1e-7.
            assert ours <= logistic_objective(au, ref, w0, ridge) + 1e-10
            assert ours == pytest.approx(logistic_objective(au, ref, w0, ridge), abs=1e-7)
            if ridge > 0:
                # Strong convexity: ||w - w*||^2 <= 2 (L(w) - L*) / ridge.
                np.testing.assert_allclose(w, ref, atol=1e-4)


def test_logistic_on_separable_data_converges() -> None:
    rng = np.random.default_rng(3)
    a, group = random_problem(rng, 5, 30, 4)
    a[:, 2] = np.abs(a[:, 2]) + 2.0  # prototype 2 orders every row correctly, with margin
    fit = fit_simplex_weights(torch.tensor(a), torch.tensor(group), 5)
    assert fit.converged.all()
    margins = (torch.tensor(a) * fit.weights[torch.tensor(group)]).sum(-1)
    assert (margins > 0).all()
    for u in range(5):
        assert fw_gap(a[group == u], fit.weights[u].numpy(), np.full(4, 0.25), 0.0) <= 1e-9


def test_logistic_handles_huge_margins_and_degenerate_columns() -> None:
    rng = np.random.default_rng(4)
    a, group = random_problem(rng, 6, 40, 8, scale=100.0)
    a[:, 1] = a[:, 0]  # two identical prototypes: the minimizer is not unique
    a[group == 5] = 0.0  # a group whose rows carry no information
    fit = fit_simplex_weights(torch.tensor(a), torch.tensor(group), 6)
    assert fit.converged.all()
    assert (fit.gap <= 1e-9).all()


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_groups_solved_together_equal_groups_solved_alone(loss: str) -> None:
    rng = np.random.default_rng(5)
    sizes = [1, 3, 10, 25, 4]
    a = rng.normal(size=(sum(sizes), 3))
    group = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(a))  # rows need not be sorted by group
    a, group = a[perm], group[perm]
    priors = rng.dirichlet(np.ones(3), size=len(sizes))
    ridge = np.array([0.5, 0.1, 1.0, 0.2, 2.0])
    together = fit_simplex_weights(
        torch.tensor(a),
        torch.tensor(group),
        len(sizes),
        loss=loss,
        prior=torch.tensor(priors),
        ridge=torch.tensor(ridge),
    )
    for u in range(len(sizes)):
        rows = group == u
        alone = fit_simplex_weights(
            torch.tensor(a[rows]),
            torch.zeros(int(rows.sum()), dtype=torch.long),
            1,
            loss=loss,
            prior=torch.tensor(priors[u]),
            ridge=float(ridge[u]),
        )
        assert together.objective[u].item() == pytest.approx(alone.objective[0].item(), abs=2e-9)
        # ridge > 0 makes the minimizer unique
        np.testing.assert_allclose(together.weights[u].numpy(), alone.weights[0].numpy(), atol=1e-4)


# ------------------------------------------------------------------------------------------------- hinge
@pytest.mark.parametrize("lp_solver", ["highs", "ipm"])
def test_hinge_without_ridge_matches_per_group_linprog(lp_solver: str) -> None:
    rng = np.random.default_rng(6)
    for k, n_rows, scale in [(2, 5, 1.0), (3, 12, 0.5), (4, 30, 2.0), (8, 3, 1.0)]:
        a, group = random_problem(rng, 5, n_rows, k, scale)
        fit = fit_simplex_weights(torch.tensor(a), torch.tensor(group), 5, loss="hinge", lp_solver=lp_solver)
        assert fit.converged.all()
        assert fit.method == ("highs-lp" if lp_solver == "highs" else "interior-point")
        for u in range(5):
            au, w = a[group == u], fit.weights[u].numpy()
            assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
            ours = hinge_objective(au, w, w, 0.0)
            assert ours == pytest.approx(fit.objective[u].item(), abs=1e-12)
            assert ours == pytest.approx(ref_hinge_lp(au), abs=1e-8)


@pytest.mark.parametrize("ridge", [1e-6, 0.02, 1.0, 100.0])
def test_hinge_with_ridge_matches_slsqp_on_the_qp(ridge: float) -> None:
    rng = np.random.default_rng(7)
    for k, n_rows in [(2, 6), (3, 15), (5, 8)]:
        a, group = random_problem(rng, 3, n_rows, k, 1.5)
        w0 = rng.dirichlet(np.ones(k))
        fit = fit_simplex_weights(
            torch.tensor(a), torch.tensor(group), 3, loss="hinge", prior=torch.tensor(w0), ridge=ridge
        )
        assert fit.converged.all() and fit.method == "interior-point"
        for u in range(3):
            au, w = a[group == u], fit.weights[u].numpy()
            ref = ref_hinge_qp(au, w0, ridge)
            ours = hinge_objective(au, w, w0, ridge)
            assert ours == pytest.approx(fit.objective[u].item(), abs=1e-12)
            assert ours <= hinge_objective(au, ref, w0, ridge) + 1e-9
            assert ours == pytest.approx(hinge_objective(au, ref, w0, ridge), abs=1e-7)


def test_hinge_mixes_lp_and_qp_groups_by_their_ridge() -> None:
    rng = np.random.default_rng(8)
    a, group = random_problem(rng, 4, 10, 3)
    ridge = torch.tensor([0.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    fit = fit_simplex_weights(torch.tensor(a), torch.tensor(group), 4, loss="hinge", ridge=ridge)
    assert fit.method == "highs-lp+interior-point"
    assert fit.converged.all()
    for u in (0, 2):
        assert fit.objective[u].item() == pytest.approx(ref_hinge_lp(a[group == u]), abs=1e-8)


# ------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_empty_groups_get_the_prior(loss: str) -> None:
    rng = np.random.default_rng(9)
    a = torch.tensor(rng.normal(size=(12, 3)))
    group = torch.tensor([0] * 6 + [3] * 6)
    priors = torch.tensor(rng.dirichlet(np.ones(3), size=5))
    fit = fit_simplex_weights(a, group, 5, loss=loss, prior=priors, ridge=0.3)
    for u in (1, 2, 4):
        torch.testing.assert_close(fit.weights[u], priors[u])
        assert fit.converged[u] and fit.iterations[u] == 0 and fit.gap[u] == 0
    uniform = fit_simplex_weights(a, group, 5, loss=loss)
    torch.testing.assert_close(uniform.weights[1], torch.full((3,), 1 / 3, dtype=torch.float64))
    nothing = fit_simplex_weights(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2, loss=loss)
    torch.testing.assert_close(nothing.weights, torch.full((2, 3), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_one_prototype_gives_weight_one(loss: str) -> None:
    a = torch.randn(10, 1)
    fit = fit_simplex_weights(a, torch.arange(10) % 3, 3, loss=loss, ridge=0.5)
    torch.testing.assert_close(fit.weights, torch.ones(3, 1, dtype=torch.float64))
    assert fit.converged.all()


def test_float32_input_and_per_group_ridge_are_accepted() -> None:
    a = torch.randn(40, 4)
    fit = fit_simplex_weights(a, torch.arange(40) % 4, 4, ridge=torch.tensor([0.0, 0.1, 1.0, 10.0]))
    assert fit.weights.dtype == torch.float64 and fit.converged.all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": torch.zeros(5)}, "A must have shape"),
        ({"A": torch.zeros(5, 2, dtype=torch.complex64)}, "real numbers"),
        ({"A": torch.full((6, 2), float("inf"))}, "non-finite"),
        ({"group": torch.zeros(5, dtype=torch.long)}, "one entry per row"),
        ({"group": torch.zeros(6)}, "integer indices"),
        ({"group": torch.tensor([0, 1, 2, 3, 4, 5])}, r"must lie in \[0, 3\)"),
        ({"group": torch.tensor([0, -1, 0, 0, 0, 0])}, "must lie in"),
        ({"n_groups": -1}, "n_groups"),
        ({"ridge": -0.1}, "ridge must be finite and >= 0"),
        ({"ridge": torch.tensor([0.1, -1.0, 0.0])}, "ridge must be finite and >= 0"),
        ({"ridge": torch.zeros(2)}, "ridge must be a float or have shape"),
        ({"loss": "squared"}, "unknown loss 'squared'"),
        ({"prior": torch.tensor([0.5, 0.6])}, "probability simplex"),
        ({"prior": torch.tensor([1.0, 0.0, 0.0])}, "prior must have shape"),
        ({"tol": 0.0}, "tol must be a positive"),
        ({"max_iter": 0}, "max_iter"),
        ({"lp_solver": "simplex"}, "unknown lp_solver"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, message: str) -> None:
    args = {"A": torch.randn(6, 2), "group": torch.tensor([0, 0, 1, 1, 2, 2]), "n_groups": 3} | kwargs
    A, group, n_groups = args.pop("A"), args.pop("group"), args.pop("n_groups")
    with pytest.raises(ValueError, match=message):
        fit_simplex_weights(A, group, n_groups, **args)


@pytest.mark.slow
def test_logistic_fit_of_ten_thousand_users_converges() -> None:
    """Batched at scale, every group gets its certificate (speed lives in benchmarks/few_shot.py)."""
    gen = torch.Generator().manual_seed(0)
    n_groups, n_rows, k = 10_000, 50, 4
    a = torch.randn(n_groups * n_rows, k, generator=gen, dtype=torch.float64)
    group = torch.arange(n_groups).repeat_interleave(n_rows)
    fit = fit_simplex_weights(a, group, n_groups, ridge=0.02)
    assert fit.converged.all() and (fit.gap <= 1e-9).all()
