"""New users: fit only their K weights with everything shared frozen (few-shot), or use the mean weights
of the seen users (zero-shot).

Per new user u the objective is  sum_j loss(m_j(w_u)) + ridge/2 * ||w_u - w0||^2  over the simplex, where
w0 is the zero-shot weight vector: the ridge keeps users with one or two answers near the population.
PAL-B margins are linear in w, so its problem is convex and solved exactly (training.simplex); other models
take full-batch Adam steps on the users' logits, all users at once.
"""

from __future__ import annotations

import torch

from pluralign.models.base import MIN_LOG_WEIGHT, Batch, PreferenceModel, Tables, weights_to_logits
from pluralign.models.pal_b import PALBModel
from pluralign.training.losses import get_loss, response_loss
from pluralign.training.simplex import fit_simplex_weights

__all__ = ["MIN_LOG_WEIGHT", "fit_user_weights", "weights_to_logits", "zero_shot_weights"]


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
) -> torch.Tensor:
    """Weights [n_users, K] for users 0..n_users-1 of ``batch.user`` (indices local to this fit).

    Users with no rows get ``prior``. The model is not modified.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    loss = response_loss(loss)  # a prefix loss on whole responses is the logistic loss
    k = model.n_prototypes
    prior = prior.detach().double()
    if k == 1 or len(batch) == 0:
        return prior.expand(n_users, k).clone()
    counts = torch.bincount(batch.user, minlength=n_users).double()
    model.eval()
    if isinstance(model, PALBModel):
        with torch.no_grad():
            features = torch.cat(
                [
                    model.prototype_margins(batch.take(slice(s, s + 65536)), tables)
                    for s in range(0, len(batch), 65536)
                ]
            )
        # The solver minimizes the mean loss per user; dividing the ridge by the count gives the sum form.
        fitted = fit_simplex_weights(
            features.double(),
            batch.user,
            n_users,
            loss=loss,
            prior=prior,
            ridge=ridge / counts.clamp(min=1),
        )
        return fitted.weights
    return _gradient_fit(model, batch, tables, counts, prior, loss, ridge, steps, lr, seed)


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
    seed: int,
) -> torch.Tensor:
    loss_fn = get_loss(loss)
    torch.manual_seed(seed)
    logits = prior.float().clamp(min=1e-12).log().expand(len(counts), -1).clone().requires_grad_(True)
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
