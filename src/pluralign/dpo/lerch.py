"""log E[sigmoid(beta * delta)] for beta ~ Gamma(shape k, scale theta): the Lerch-transcendent closed form.

With a = theta * |delta| and X ~ Gamma(k, 1),

    f(a, k) = E[sigmoid(-a X)] = sum_{n>=1} (-1)^(n-1) (1 + n a)^(-k) = a^(-k) Phi(-1, k, 1 + 1/a),

and E[sigmoid(beta * delta)] is f(a, k) for delta <= 0 and 1 - f(a, k) for delta > 0. Since f <= 1/2, both
branches are computed without cancellation: log f directly, and log1p(-f).

Evaluation: the first ``N_DIRECT`` terms are summed directly and the tail
sum_{m>=0} (-1)^m h(m), h(m) = (u + m a)^(-k), u = 1 + (N + 1) a, by the Euler-Boole summation formula

    tail = h(0) [1/2 + sum_{j=1}^{J} C_j (k)_{2j-1} q^(2j-1)],   q = a / u < 1 / (N + 1),
    C_j = (2^(2j) - 1) B_{2j} / (2j)!   (minus the x^(2j-1) Taylor coefficient of 1 / (1 + e^x)).

h is completely monotone, so the asymptotic series behaves like Euler-Maclaurin's: the truncation error
is of the size of the first omitted term, about 2 (k)_{2J+1} (q / pi)^(2J+1) h(0) / pi; relative to f
it is further damped by h(0) / f <= 2 ((1 + a) / u)^k.
That makes one fixed rule accurate to float64 round-off for every a >= 0 and every k > 0 seen in
practice (checked against mpmath for k in [0.05, 1e4], a in [0, 1e6]). All sums are scaled by
(1 + a)^(-k), so nothing underflows even when f itself is below 1e-300. Partial derivatives in a and k
are the term-wise derivatives of the same finite formula, computed in the same pass.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

N_DIRECT = 32  # directly summed terms; even, so that the a = 0 limit is exactly 1/2
N_BOOLE = 10  # Euler-Boole correction terms (Bernoulli numbers up to B_20)


def _bernoulli(n_max: int) -> list[Fraction]:
    """B_0..B_{n_max} exactly (Akiyama-Tanigawa; the sign of B_1 is irrelevant here)."""
    out = []
    row = [Fraction(0)] * (n_max + 1)
    for m in range(n_max + 1):
        row[m] = Fraction(1, m + 1)
        for j in range(m, 0, -1):
            row[j - 1] = j * (row[j - 1] - row[j])
        out.append(row[0])
    return out


_B = _bernoulli(2 * N_BOOLE)
_BOOLE_C = [float((4**j - 1) * _B[2 * j] / math.factorial(2 * j)) for j in range(1, N_BOOLE + 1)]


def _scaled_series(
    a: torch.Tensor, k: torch.Tensor, grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log1p(a), S, S_a, S_k): f = (1+a)^(-k) S, df/da = (1+a)^(-k) S_a, df/dk = (1+a)^(-k) S_k."""
    la1 = torch.log1p(a)
    s = torch.zeros_like(a)
    s_a = torch.zeros_like(a) if grads else None
    s_k = torch.zeros_like(a) if grads else None
    sign = 1.0
    for n in range(1, N_DIRECT + 1):
        ln = torch.log1p(n * a)
        r = torch.exp(-k * (ln - la1))
        s = s + sign * r
        if grads:
            s_a = s_a - sign * (k * n / (1.0 + n * a)) * r
            s_k = s_k - sign * ln * r
        sign = -sign
    m = N_DIRECT + 1
    u = 1.0 + m * a
    lu = torch.log1p(m * a)
    h0 = torch.exp(-k * (lu - la1))
    q = a / u
    # dterm_j = h0 (k)_{2j-1} q^(2j-2); the j-th correction is C_j dterm_j q
    dterm = h0 * k
    boole = 0.5 * h0
    boole_q = torch.zeros_like(a)  # sum C_j (2j-1) dterm_j: d/dq of the correction sum
    boole_k = torch.zeros_like(a)  # sum C_j dterm_j q D_j, D_j = d/dk log (k)_{2j-1}
    dlog_poch = 1.0 / k
    for j, c in enumerate(_BOOLE_C, start=1):
        term = dterm * q
        boole = boole + c * term
        if grads:
            boole_q = boole_q + c * (2 * j - 1) * dterm
            boole_k = boole_k + c * term * dlog_poch
        dterm = dterm * (k + 2 * j - 1) * (k + 2 * j) * q * q
        dlog_poch = dlog_poch + 1.0 / (k + 2 * j - 1) + 1.0 / (k + 2 * j)
    s = s + sign * boole
    if grads:
        # boole already carries h0; d h0/da = -k m / u h0, dq/da = 1/u^2, d h0/dk = -log(u) h0
        s_a = s_a + sign * (-k * m / u * boole + boole_q / (u * u))
        s_k = s_k + sign * (-lu * boole + boole_k)
    return la1, s, s_a, s_k


class _LogMeanSigmoidGamma(torch.autograd.Function):
    """log E[sigmoid(beta * delta)], beta ~ Gamma(k, theta); float64 tensors of one shape."""

    @staticmethod
    def forward(ctx, delta: torch.Tensor, k: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grads = any(ctx.needs_input_grad)
        a = theta * delta.abs()
        la1, s, s_a, s_k = _scaled_series(a, k, grads)
        log_f = -k * la1 + torch.log(s)
        pos = delta > 0
        f = torch.exp(log_f)
        log_p = torch.where(pos, torch.log1p(-f), log_f)
        if grads:
            # d log p = (d f / f) * (1 for delta <= 0, -f / (1 - f) for delta > 0); the (1+a)^(-k) scale
            # cancels in S_a / S, so tiny f never divides 0 by 0
            w = torch.where(pos, torch.exp(log_f - log_p), torch.ones_like(f))
            ctx.save_for_backward(delta, theta, s_a / s, s_k / s, w, pos)
        return log_p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        delta, theta, g_a, g_k, w, pos = ctx.saved_tensors
        # p = f(a) for delta <= 0 and 1 - f(a) for delta > 0, a = theta |delta|: both give
        # dp/d delta = -theta f', dp/d theta = -delta f', dp/dk = -sign f_k
        sgn = torch.where(pos, 1.0, -1.0).to(delta.dtype)
        d_delta = -theta * g_a * w * grad if ctx.needs_input_grad[0] else None
        d_k = -sgn * g_k * w * grad if ctx.needs_input_grad[1] else None
        d_theta = -delta * g_a * w * grad if ctx.needs_input_grad[2] else None
        return d_delta, d_k, d_theta


def log_mean_sigmoid_gamma(
    delta: torch.Tensor, k: torch.Tensor | float, theta: torch.Tensor | float
) -> torch.Tensor:
    """log E[sigmoid(beta * delta)] for beta ~ Gamma(shape k, scale theta), elementwise.

    ``k`` and ``theta`` must be positive and broadcast to ``delta``'s shape; all inputs finite. Computed in
    float64 and returned in the promoted floating dtype of the inputs. Differentiable in all three inputs
    (first order).
    """
    delta, k, theta = _check(delta, k, theta)
    dtype = torch.promote_types(torch.promote_types(delta.dtype, k.dtype), theta.dtype)
    d64, k64, t64 = (x.to(torch.float64).expand(delta.shape) for x in (delta, k, theta))
    return _LogMeanSigmoidGamma.apply(d64, k64, t64).to(dtype)


def broadcast_param(name: str, x: torch.Tensor | float, delta: torch.Tensor) -> torch.Tensor:
    """A distribution parameter as a tensor that broadcasts to delta's shape (a scalar or one per pair)."""
    # python numbers take delta's dtype (as_tensor would round a float to float32 under a float64 delta);
    # tensors keep theirs (a float64 k must not be rounded to float32)
    x = x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=delta.dtype, device=delta.device)
    if not x.is_floating_point():
        x = x.to(delta.dtype)
    try:
        ok = torch.broadcast_shapes(x.shape, delta.shape) == delta.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to delta's {tuple(delta.shape)}"
        )
    return x


def _check(
    delta: torch.Tensor, k: torch.Tensor | float, theta: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point():
        raise ValueError("delta must be a floating-point tensor")
    k, theta = broadcast_param("k", k, delta), broadcast_param("theta", theta, delta)
    for name, x in (("k", k), ("theta", theta)):
        if not bool(torch.isfinite(x).all()) or not bool((x > 0).all()):
            raise ValueError(f"{name} must be finite and > 0")
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("delta must be finite")
    return delta, k, theta
