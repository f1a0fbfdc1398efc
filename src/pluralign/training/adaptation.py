"""New users: fit only their K weights with everything shared frozen (few-shot), or use the mean weights
of the seen users (zero-shot).

Per new user u the objective is  sum_j loss(m_j(w_u)) + ridge/2 * ||w_u - w0||^2  over the simplex, where
w0 is the zero-shot weight vector: the ridge keeps users with one or two answers near the population.
PAL-B (and LoRe) margins are linear in w, so their problem is convex and solved exactly (training.simplex);
other models take full-batch Adam steps on the users' logits, all users at once. Models whose users are free
vectors (``FreeUserModel``: no simplex) have their own solver, ``training.ridge``.

Two starting points (``init``): "prior" starts every user at w0 (with the ridge: a MAP estimate, our
default); "random" starts each user at softmax(z), z ~ N(0, I_K), as the PAL paper does for unseen users
(App. D.1, D.3.1; the reference code draws ``torch.randn(k)`` logits), and with ``ridge=0`` that is the
paper's procedure. The draw uses a local ``torch.Generator`` seeded with ``seed``: deterministic, and the
global RNG is left alone.
"""

from __future__ import annotations

import torch

from pluralign.models.base import (
    MIN_LOG_WEIGHT,
    Batch,
    FreeUserModel,
    PreferenceModel,
    Tables,
    weights_to_logits,
)
from pluralign.training.losses import get_loss, response_loss
from pluralign.training.simplex import fit_simplex_weights

#: share of the uniform weights mixed into the prior where a gradient fit (PAL-A, BTL) starts
START_MIX = 1e-3
#: where a few-shot fit starts: the zero-shot prior, or a random point as in the PAL paper (App. D.1)
INITS = ("prior", "random")
#: the estimator's ``adapt_method`` and the start it uses: "map" = prior + ridge, "paper" = random, no ridge
ADAPT_INITS = {"map": "prior", "paper": "random"}

__all__ = [
    "ADAPT_INITS",
    "INITS",
    "MIN_LOG_WEIGHT",
    "fit_user_weights",
    "weights_to_logits",
    "zero_shot_weights",
]


def zero_shot_weights(model: PreferenceModel, seen_users: int | None = None) -> torch.Tensor:
    """Mean weight vector of the first ``seen_users`` users (all users when None)."""
    with torch.no_grad():
        return model.weights()[:seen_users].mean(0)


def fit_user_weights(
    model: PreferenceModel,
    batch: Batch,
    tables: Tables,
    *,
    n_users: int,
    prior: torch.Tensor,
    loss: str = "logistic",
    ridge: float = 1.0,
    steps: int = 300,
    lr: float = 0.1,
    seed: int = 0,
    init: str = "prior",
) -> torch.Tensor:
    """Weights [n_users, K] for users 0..n_users-1 of ``batch.user`` (indices local to this fit).

    ``init`` ("prior" or "random", see the module docstring) is where each user starts; the ridge always
    pulls toward ``prior``. For PAL-B the problem is solved exactly, so the start only matters with
    ``ridge=0`` (where the minimizer need not be unique): the solver then starts from the random point.
    Users with no rows get ``prior``. The model is not modified: its parameters, ``requires_grad`` flags
    and train/eval modes are as before the call.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if init not in INITS:
        raise ValueError(f"unknown init '{init}', expected one of {', '.join(INITS)}")
    if isinstance(model, FreeUserModel):
        raise ValueError(f"'{model.kind}' users are free vectors, not simplex weights: use training.ridge")
    loss = response_loss(loss)  # a prefix loss on whole responses is the logistic loss
    k = model.n_prototypes
    prior = prior.detach().double()
    if k == 1 or len(batch) == 0:
        return prior.expand(n_users, k).clone()
    counts = torch.bincount(batch.user, minlength=n_users).double()
    start_logits = None
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        start_logits = torch.randn(n_users, k, generator=generator, dtype=torch.float64)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        if model.linear_in_weights:
            weights = _exact_fit(model, batch, tables, counts, prior, loss, ridge, start_logits)
        else:
            weights = _gradient_fit(model, batch, tables, counts, prior, loss, ridge, steps, lr, start_logits)
    finally:
        for module, training in modes:
            module.training = training
    return torch.where(counts[:, None] > 0, weights, prior.expand(n_users, k))


def _exact_fit(
    model: PreferenceModel,
    batch: Batch,
    tables: Tables,
    counts: torch.Tensor,
    prior: torch.Tensor,
    loss: str,
    ridge: float,
    start_logits: torch.Tensor | None,
) -> torch.Tensor:
    with torch.no_grad():
        features = torch.cat(
            [
                model.prototype_margins(batch.take(slice(s, s + 65536)), tables)
                for s in range(0, len(batch), 65536)
            ]
        )
    # The solver starts at its prior argument and pulls toward it: with ridge 0 the pull is gone and only
    # the start is left, so a random start goes there; with ridge > 0 the minimizer is unique.
    target = prior if start_logits is None or ridge > 0 else torch.softmax(start_logits, -1)
    # The solver minimizes the mean loss per user; dividing the ridge by the count gives the sum form.
    fitted = fit_simplex_weights(
        features.double(),
        batch.user,
        len(counts),
        loss=loss,
        prior=target,
        ridge=ridge / counts.clamp(min=1),
    )
    return fitted.weights


def _gradient_fit(
    model: PreferenceModel,
    batch: Batch,
    tables: Tables,
    counts: torch.Tensor,
    prior: torch.Tensor,
    loss: str,
    ridge: float,
    steps: int,
    lr: float,
    start_logits: torch.Tensor | None,
) -> torch.Tensor:
    loss_fn = get_loss(loss)
    if start_logits is None:
        # Start at the prior mixed with a little of the uniform weights: a weight of exactly 0 (as a grown
        # model's prior has on its new prototypes) has a zero softmax gradient, and Adam (eps 1e-8) could
        # never leave it, so those prototypes would be out of every later few-shot fit's reach.
        k = prior.shape[-1]
        start = (1 - START_MIX) * prior + START_MIX / k
        start_logits = start.float().log().expand(len(counts), -1)
    logits = start_logits.float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            margins = model.margins(batch, tables, logits)
            weights = torch.softmax(logits, -1)
            objective = loss_fn(margins).sum() + 0.5 * ridge * (weights - prior.float()).square().sum()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return torch.softmax(logits.detach(), -1).double()
