"""DPO-family losses: DPO, MixDPO LogNormal (Monte Carlo) and Gamma (Lerch closed form) against references."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special

from pluralign.dpo import (
    BetaDistribution,
    beta_distribution_stats,
    dpo_loss,
    log_mean_sigmoid_gamma,
    mixdpo_gamma_loss,
    mixdpo_lognormal_loss,
)

torch.set_num_threads(1)
F64 = torch.float64

# (delta, theta) realizing theta * |delta| from 1e-11 to 5e4, with the deltas the issue names
DELTA_THETA = [
    (1e-8, 1e-3),
    (1e-8, 1e2),
    (1e-3, 1e-3),
    (1e-3, 1.0),
    (1e-3, 50.0),
    (1.0, 1.0),
    (1.0, 30.0),
    (50.0, 2e2),
    (50.0, 1e3),
]
KS = [0.05, 0.7, 3.0, 50.0]


def t64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


def ours(delta: float, k: float, theta: float) -> float:
    """log E[sigmoid(beta delta)] from the implementation."""
    return log_mean_sigmoid_gamma(t64(delta), t64(k), t64(theta)).item()


def lerch_ref(delta: float, k: float, theta: float) -> float:
    """log E[sigmoid(beta delta)]: log((theta d)^-k Phi(-1, k, 1 / (theta d))) for d > 0, symmetric else."""
    a = mpmath.mpf(theta) * abs(mpmath.mpf(delta))
    k_ = mpmath.mpf(k)
    # mpmath.lerchphi is only absolutely accurate to ~10^-dps, and here Phi ~ z^-k / 2 and (for delta < 0)
    # 1 - p ~ (1 + a)^-k can be far smaller: give it those digits (at mp.dps = 15 it returns 0.0 for
    # k = 50, z = 1e3)
    extra = float(k_ * (max(0, -mpmath.log10(a)) + (mpmath.log10(1 + a) if delta < 0 else 0)))
    with mpmath.workdps(30 + int(extra)):
        p = a ** (-k_) * mpmath.lerchphi(-1, k_, 1 / a)
        return float(mpmath.log(p if delta > 0 else 1 - p))


def quad_ref(delta: float, k: float, theta: float) -> float:
    """log E[sigmoid(beta delta)] by scipy quad of sigmoid(-beta |delta|) * Gamma pdf, in t = log(beta).

    That integrand is log-concave in t, so it is integrated around its mode, scaled by the mode's value,
    out to where it has fallen by e^-60: no underflow even when the expectation is ~1e-200.
    """
    c = abs(delta)
    log_norm = -k * math.log(theta) - special.gammaln(k)

    def log_g(t: float) -> float:
        return -np.logaddexp(0.0, c * math.exp(t)) + k * t - math.exp(t) / theta

    def dlog_g(t: float) -> float:
        x = c * math.exp(t)
        return -x * special.expit(x) + k - math.exp(t) / theta

    hi = math.log(k * theta) + 5.0
    mode = optimize.brentq(dlog_g, -800.0, hi, xtol=1e-14)
    top = log_g(mode)

    def edge(direction: float) -> float:
        step = 1.0
        while log_g(mode + direction * step) > top - 60.0:
            step *= 2.0
        return optimize.brentq(lambda t: log_g(t) - top + 60.0, mode, mode + direction * step)

    lo, up = edge(-1.0), edge(1.0)
    val, _ = integrate.quad(
        lambda t: math.exp(log_g(t) - top), lo, up, points=[mode], epsabs=0.0, epsrel=1e-13, limit=500
    )
    log_q = math.log(val) + top + log_norm
    return log_q if delta < 0 else math.log1p(-math.exp(log_q))


def rel_err(log_a: float, log_b: float) -> float:
    return abs(math.expm1(log_a - log_b))


# ---------------------------------------------------------------- DPO


def test_dpo_loss_matches_formula() -> None:
    delta = t64(-3.0, -0.5, 0.0, 0.2, 4.0, 800.0, -800.0)
    got = dpo_loss(delta, 0.1)
    want = [math.log1p(math.exp(-0.1 * d)) for d in delta.tolist()]  # = -log sigmoid(0.1 d)
    assert torch.allclose(got, t64(*want), rtol=1e-12, atol=0)
    assert torch.allclose(dpo_loss(delta, t64(*[0.1] * 7)), got)


# ---------------------------------------------------------------- LogNormal


def lognormal_numpy(delta: float, mu: float, sigma: float) -> tuple[float, float]:
    """-log E[sigmoid(beta delta)] from 4e6 numpy draws, and the std of sigmoid(beta delta) / its mean."""
    rng = np.random.default_rng(0)
    s = special.expit(np.exp(mu + sigma * rng.standard_normal(4_000_000)) * delta)
    return -math.log(s.mean()), s.std() / s.mean()


@pytest.mark.parametrize("delta", [-20.0, -2.0, 0.5, 5.0])
def test_lognormal_matches_high_sample_numpy(delta: float) -> None:
    mu, log_sigma, n = math.log(0.5), math.log(0.8), 20_000
    ref, rel_sd = lognormal_numpy(delta, mu, math.exp(log_sigma))
    g = torch.Generator().manual_seed(1)
    got = mixdpo_lognormal_loss(t64(delta), mu, log_sigma, n_samples=n, generator=g).item()
    # 5 standard errors of the n-sample estimate (the numpy reference is 200x more precise)
    assert abs(got - ref) < 5 * rel_sd / math.sqrt(n) + 1e-4


def test_lognormal_collapses_to_dpo_as_sigma_vanishes() -> None:
    delta = t64(-30.0, -1.0, 0.0, 0.3, 30.0)
    errs = [
        (mixdpo_lognormal_loss(delta, math.log(0.2), ls) - dpo_loss(delta, 0.2)).abs().max().item()
        for ls in (-2.0, -5.0, -10.0, -25.0)
    ]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-9  # first order in sigma: ~ beta |delta| sigma |mean eps|


def test_lognormal_gradients_and_determinism() -> None:
    delta = torch.linspace(-3, 3, 7, dtype=F64, requires_grad=True)
    mu = torch.tensor(math.log(0.3), dtype=F64, requires_grad=True)
    log_sigma = torch.tensor(-0.5, dtype=F64, requires_grad=True)

    def f(d: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return mixdpo_lognormal_loss(d, m, s, generator=torch.Generator().manual_seed(3))

    assert torch.equal(f(delta, mu, log_sigma), f(delta, mu, log_sigma))
    f(delta, mu, log_sigma).sum().backward()
    for x in (delta, mu, log_sigma):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(f, (delta.detach().requires_grad_(), mu, log_sigma))


def test_lognormal_shared_vs_per_pair_samples() -> None:
    delta = torch.full((5,), 1.5, dtype=F64)
    g = torch.Generator().manual_seed(0)
    shared = mixdpo_lognormal_loss(delta, 0.0, 0.0, shared_samples=True, generator=g)
    per_pair = mixdpo_lognormal_loss(delta, 0.0, 0.0, generator=g)
    assert torch.all(shared == shared[0])  # one draw for the whole batch
    assert len(set(per_pair.tolist())) == 5  # independent draws per pair
    assert shared.dtype == F64 and per_pair.shape == (5,)


def test_lognormal_float32_and_extremes() -> None:
    delta = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    out = mixdpo_lognormal_loss(
        delta, torch.tensor(3.0), torch.tensor(1.0), generator=torch.Generator().manual_seed(0)
    )
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---------------------------------------------------------------- Gamma: values


@pytest.mark.parametrize("k", KS)
def test_gamma_matches_mpmath_lerchphi(k: float) -> None:
    worst = 0.0
    for d, theta in DELTA_THETA:
        for delta in (d, -d):
            worst = max(worst, rel_err(ours(delta, k, theta), lerch_ref(delta, k, theta)))
    assert worst < 1e-10


@pytest.mark.parametrize("k", [*KS, 1e3])
def test_gamma_matches_quadrature(k: float) -> None:
    worst = 0.0
    for d, theta in DELTA_THETA:
        for delta in (d, -d):
            worst = max(worst, rel_err(ours(delta, k, theta), quad_ref(delta, k, theta)))
    assert worst < 1e-9


def test_gamma_zero_delta_and_symmetry() -> None:
    k, theta = t64(0.05, 1.0, 7.0, 50.0, 2e3), t64(1e3, 0.3, 2.0, 1e-3, 1e-2)
    assert torch.allclose(
        log_mean_sigmoid_gamma(torch.zeros(5, dtype=F64), k, theta), t64(*[-math.log(2)] * 5)
    )
    for d in (1e-8, 1e-3, 0.7, 3.0, 50.0):
        delta = torch.full((5,), d, dtype=F64)
        total = log_mean_sigmoid_gamma(delta, k, theta).exp() + log_mean_sigmoid_gamma(-delta, k, theta).exp()
        assert torch.allclose(total, torch.ones(5, dtype=F64), rtol=0, atol=1e-15)


def test_gamma_large_shape_approaches_dpo() -> None:
    delta, b = t64(-8.0, -1.0, 0.1, 2.0, 20.0), 0.4
    errs = [
        (mixdpo_gamma_loss(delta, math.log(k), math.log(b / k)) - dpo_loss(delta, b)).abs().max().item()
        for k in (10.0, 1e2, 1e3, 1e4, 1e5, 1e6)
    ]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-5  # the gap is O(var beta) = O(b^2 / k)


def test_gamma_no_nan_at_extremes() -> None:
    delta = t64(-1e6, -50.0, -1e-300, 0.0, 1e-300, 50.0, 1e6)
    for k in (1e-3, 0.05, 50.0, 1e4):
        for theta in (1e-6, 1e-3, 1e3, 1e5):
            d = delta.clone().requires_grad_()
            loss = mixdpo_gamma_loss(d, math.log(k), math.log(theta))
            loss.sum().backward()
            assert torch.isfinite(loss).all() and (loss >= 0).all(), (k, theta)
            assert torch.isfinite(d.grad).all(), (k, theta)


def test_gamma_float32_in_float32_out() -> None:
    delta = torch.tensor([-3.0, 0.0, 2.0], requires_grad=True)
    log_k = torch.tensor(0.5, requires_grad=True)
    out = mixdpo_gamma_loss(delta, log_k, torch.tensor(-1.0))
    assert out.dtype == torch.float32
    want = mixdpo_gamma_loss(delta.detach().double(), 0.5, -1.0)
    assert torch.allclose(out.double(), want, rtol=1e-6)
    out.sum().backward()
    assert delta.grad is not None and log_k.grad is not None


# ---------------------------------------------------------------- Gamma: gradients

GRAD_POINTS = [
    (0.3, 0.05, 2.0),
    (1e-9, 3.0, 0.5),
    (-1e-9, 3.0, 0.5),
    (0.0, 2.0, 1.0),
    (-20.0, 0.3, 50.0),
    (20.0, 0.3, 50.0),
    (-5.0, 50.0, 0.01),
    (2.0, 0.05, 1e3),
    (-2.0, 0.05, 1e3),
    (-30.0, 10.0, 100.0),
    (1e-3, 50.0, 1e-3),
]


@pytest.mark.parametrize("point", GRAD_POINTS)
def test_gamma_gradcheck_delta_k_theta(point: tuple[float, float, float]) -> None:
    xs = tuple(t64(v).requires_grad_() for v in point)
    assert torch.autograd.gradcheck(log_mean_sigmoid_gamma, xs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gamma_gradcheck_batched_log_params() -> None:
    delta = t64(-40.0, -3.0, -1e-7, 0.0, 1e-7, 0.5, 60.0).requires_grad_()
    log_k = t64(*np.linspace(-3.0, 4.0, 7)).requires_grad_()
    log_theta = t64(*np.linspace(5.0, -5.0, 7)).requires_grad_()
    assert torch.autograd.gradcheck(mixdpo_gamma_loss, (delta, log_k, log_theta), eps=1e-6, atol=1e-8)
    scalar = (delta, t64(1.0).squeeze().requires_grad_(), t64(-2.0).squeeze().requires_grad_())
    assert torch.autograd.gradcheck(mixdpo_gamma_loss, scalar, eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------- stats, module, errors


def test_beta_distribution_stats() -> None:
    s = beta_distribution_stats("gamma", {"log_k": math.log(4.0), "log_theta": math.log(0.5)})
    assert (
        s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0) and s["cv"] == pytest.approx(0.5)
    )
    mu, sigma = 0.3, 0.6
    s = beta_distribution_stats("lognormal", {"mu": torch.tensor(mu), "log_sigma": math.log(sigma)})
    mean = math.exp(mu + sigma**2 / 2)
    assert s["mean"] == pytest.approx(mean, rel=1e-6)
    assert s["std"] == pytest.approx(mean * math.sqrt(math.exp(sigma**2) - 1), rel=1e-6)


@pytest.mark.parametrize("kind", ["lognormal", "gamma"])
def test_beta_distribution_module(kind: str) -> None:
    dist = BetaDistribution(kind, mean=0.2, spread=0.5)
    s = dist.stats()
    assert s["mean"] == pytest.approx(0.2, rel=1e-6) and s["cv"] == pytest.approx(0.5, rel=1e-6)
    delta = torch.tensor([-2.0, 0.5, 3.0])
    loss = dist.loss(delta, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and loss.dtype == torch.float32
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dist.parameters())
    assert len(list(dist.parameters())) == 2 and kind in repr(dist)


def test_bad_inputs_raise_value_error() -> None:
    delta = t64(1.0, -1.0)
    with pytest.raises(ValueError, match="k must be finite and > 0"):
        log_mean_sigmoid_gamma(delta, -1.0, 1.0)
    with pytest.raises(ValueError, match="theta"):
        log_mean_sigmoid_gamma(delta, 1.0, t64(1.0, 0.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        log_mean_sigmoid_gamma(delta, t64(1.0, 2.0, 3.0), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        mixdpo_gamma_loss(delta, t64(0.0, 0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        mixdpo_lognormal_loss(delta, t64(0.0, 0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        dpo_loss(delta, t64(0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="delta must be finite"):
        mixdpo_gamma_loss(t64(math.inf), 0.0, 0.0)
    with pytest.raises(ValueError, match="log_k must be finite"):
        mixdpo_gamma_loss(delta, math.nan, 0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(delta, -0.1)
    with pytest.raises(ValueError, match="n_samples"):
        mixdpo_lognormal_loss(delta, 0.0, 0.0, n_samples=0)
    with pytest.raises(ValueError, match="floating-point"):
        dpo_loss(torch.tensor([1, 2]), 0.1)
    with pytest.raises(ValueError, match="unknown beta distribution"):
        BetaDistribution("weibull")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spread"):
        BetaDistribution("gamma", spread=0.0)
    with pytest.raises(ValueError, match="missing log_theta"):
        beta_distribution_stats("gamma", {"log_k": 0.0})
