"""DPO-family losses on the policy margin delta; each returns the per-pair loss.

delta = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)), one value per pair.
MixDPO replaces DPO's fixed beta by a distribution over beta and minimizes -log E_beta[sigmoid(beta * delta)].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pluralign.dpo.lerch import broadcast_param, log_mean_sigmoid_gamma

BetaKind = Literal["lognormal", "gamma"]
PARAM_NAMES: dict[str, tuple[str, str]] = {"lognormal": ("mu", "log_sigma"), "gamma": ("log_k", "log_theta")}


def _float_tensor(delta: torch.Tensor) -> torch.Tensor:
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point():
        raise ValueError("delta must be a floating-point tensor")
    return delta


def dpo_loss(delta: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """-log sigmoid(beta * delta) per pair, computed stably; beta > 0 (a scalar or one per pair)."""
    delta = _float_tensor(delta)
    beta = broadcast_param("beta", beta, delta)
    if not bool((beta > 0).all()):
        raise ValueError("beta must be > 0")
    return F.softplus(-beta * delta)


def mixdpo_lognormal_loss(
    delta: torch.Tensor,
    mu: torch.Tensor | float,
    log_sigma: torch.Tensor | float,
    *,
    n_samples: int = 16,
    shared_samples: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-log mean_s sigmoid(beta_s * delta) per pair, beta_s = exp(mu + sigma * eps_s), eps_s ~ N(0, 1).

    The reparameterized Monte Carlo estimate of -log E[sigmoid(beta * delta)] for beta ~ LogNormal(mu, sigma),
    sigma = exp(log_sigma), evaluated as log S - logsumexp_s logsigmoid(beta_s * delta). Gradients flow to
    delta, mu and log_sigma. By default each pair draws its own ``n_samples`` normals (independent errors
    across pairs, the usual estimator); ``shared_samples=True`` draws one set for the whole batch (a common
    random-numbers estimator: cheaper and smoother in mu/sigma, but its error is correlated across pairs).
    Pass ``generator`` for reproducible draws. Note E[-log mean] >= -log E: the estimate is biased upward by
    O(1/n_samples).
    """
    delta = _float_tensor(delta)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    mu = broadcast_param("mu", mu, delta)
    log_sigma = broadcast_param("log_sigma", log_sigma, delta)
    dtype = torch.promote_types(torch.promote_types(delta.dtype, mu.dtype), log_sigma.dtype)
    shape = (n_samples,) if shared_samples else (*delta.shape, n_samples)
    eps = torch.randn(shape, generator=generator, dtype=dtype, device=delta.device)
    beta = torch.exp(mu.to(dtype).unsqueeze(-1) + torch.exp(log_sigma.to(dtype)).unsqueeze(-1) * eps)
    log_p = F.logsigmoid(beta * delta.to(dtype).unsqueeze(-1))
    return math.log(n_samples) - torch.logsumexp(log_p, dim=-1)


def mixdpo_gamma_loss(
    delta: torch.Tensor, log_k: torch.Tensor | float, log_theta: torch.Tensor | float
) -> torch.Tensor:
    """-log E[sigmoid(beta * delta)] per pair in closed form, beta ~ Gamma(shape k = exp(log_k), scale theta).

    theta = exp(log_theta). Exact to float64 round-off through the Lerch transcendent (see
    :mod:`pluralign.dpo.lerch`); computed in float64 and returned in the inputs' promoted dtype. Gradients
    flow to delta, log_k and log_theta. delta must be finite.
    """
    delta = _float_tensor(delta)
    log_k = broadcast_param("log_k", log_k, delta)
    log_theta = broadcast_param("log_theta", log_theta, delta)
    for name, x in (("log_k", log_k), ("log_theta", log_theta)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be finite")
    dtype = torch.promote_types(torch.promote_types(delta.dtype, log_k.dtype), log_theta.dtype)
    k = torch.exp(log_k.to(torch.float64))
    theta = torch.exp(log_theta.to(torch.float64))
    return (-log_mean_sigmoid_gamma(delta.to(torch.float64), k, theta)).to(dtype)


def beta_distribution_stats(kind: BetaKind, params: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Mean, std and coefficient of variation (std / mean) of the learned beta distribution.

    ``params`` holds scalars named as in the losses: ``mu``, ``log_sigma`` for "lognormal" (mean
    exp(mu + sigma^2 / 2), std mean * sqrt(exp(sigma^2) - 1)); ``log_k``, ``log_theta`` for "gamma" (mean
    k theta, std sqrt(k) theta). The scale-free cv is the heterogeneity diagnostic: it shrinks towards 0 as
    the data looks homogeneous (MixDPO then reduces to DPO with beta = mean).
    """
    if kind not in PARAM_NAMES:
        raise ValueError(f"unknown beta distribution '{kind}', expected one of {', '.join(PARAM_NAMES)}")
    names = PARAM_NAMES[kind]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{kind} parameters need {', '.join(names)}; missing {', '.join(missing)}")
    values = []
    for n in names:
        x = torch.as_tensor(params[n]).detach()
        if x.numel() != 1:
            raise ValueError(f"{n} must be a scalar to summarize, got shape {tuple(x.shape)}")
        values.append(float(x))
    if kind == "lognormal":
        mu, sigma = values[0], math.exp(values[1])
        mean = math.exp(mu + sigma**2 / 2)
        cv = math.sqrt(math.expm1(sigma**2))
    else:
        k, theta = math.exp(values[0]), math.exp(values[1])
        mean = k * theta
        cv = 1 / math.sqrt(k)
    return {"mean": mean, "std": mean * cv, "cv": cv}


class BetaDistribution(nn.Module):
    """A learnable distribution over DPO's beta that owns its parameters and the MixDPO loss.

    Initialized from the mean of beta and its relative spread (coefficient of variation, std / mean):
    LogNormal with sigma^2 = log(1 + spread^2), mu = log(mean) - sigma^2 / 2; Gamma with k = 1 / spread^2,
    theta = mean * spread^2. Parameters are stored unconstrained (``mu``, ``log_sigma`` or ``log_k``,
    ``log_theta``) so any optimizer keeps them valid.
    """

    def __init__(
        self,
        kind: BetaKind = "lognormal",
        mean: float = 0.1,
        spread: float = 0.5,
        *,
        n_samples: int = 16,
        shared_samples: bool = False,
    ) -> None:
        super().__init__()
        if kind not in PARAM_NAMES:
            raise ValueError(f"unknown beta distribution '{kind}', expected one of {', '.join(PARAM_NAMES)}")
        if not (math.isfinite(mean) and mean > 0):
            raise ValueError(f"mean must be finite and > 0, got {mean}")
        if not (math.isfinite(spread) and spread > 0):
            raise ValueError(f"spread must be finite and > 0 (use dpo_loss for a fixed beta), got {spread}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self.kind: BetaKind = kind
        self.n_samples = n_samples
        self.shared_samples = shared_samples
        if kind == "lognormal":
            var = math.log1p(spread**2)
            init = (math.log(mean) - var / 2, 0.5 * math.log(var))
        else:
            init = (-2 * math.log(spread), math.log(mean) + 2 * math.log(spread))
        for name, value in zip(PARAM_NAMES[kind], init, strict=True):
            self.register_parameter(name, nn.Parameter(torch.tensor(value)))

    def params(self) -> dict[str, torch.Tensor]:
        """The unconstrained parameters by name (as the loss functions take them)."""
        return {n: getattr(self, n) for n in PARAM_NAMES[self.kind]}

    def loss(self, delta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-pair MixDPO loss -log E[sigmoid(beta * delta)]; ``generator`` is used by LogNormal only."""
        p = self.params()
        if self.kind == "lognormal":
            return mixdpo_lognormal_loss(
                delta,
                p["mu"],
                p["log_sigma"],
                n_samples=self.n_samples,
                shared_samples=self.shared_samples,
                generator=generator,
            )
        return mixdpo_gamma_loss(delta, p["log_k"], p["log_theta"])

    def forward(self, delta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss(delta, generator)

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Mean, std and cv of beta (see :func:`beta_distribution_stats`)."""
        return beta_distribution_stats(self.kind, self.params())

    def extra_repr(self) -> str:
        s = self.stats()
        return f"kind={self.kind!r}, mean={s['mean']:.4g}, std={s['std']:.4g}"
