"""Losses on the reward margin m = r(chosen) - r(rejected); each returns the per-row loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor], torch.Tensor]


def logistic_loss(margin: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(m), computed stably."""
    return F.softplus(-margin)


def hinge_loss(margin: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - m)."""
    return F.relu(1.0 - margin)


#: Losses over response prefixes (PAL App. D.3, the paper's "cumulative" loss weighting) and how they weight
#: the prefixes. On full-response margins alone (validation, few-shot fits of new users) both are the
#: logistic loss: the whole response is the last prefix.
PREFIX_LOSSES: dict[str, str] = {"cumulative": "linear", "cumulative-mean": "uniform"}

LOSSES: dict[str, LossFn] = {
    "logistic": logistic_loss,
    "hinge": hinge_loss,
    **{name: logistic_loss for name in PREFIX_LOSSES},
}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}', expected one of {', '.join(LOSSES)}") from None


def response_loss(name: str) -> str:
    """The loss a model trained with ``name`` uses on full-response margins (prefix losses: logistic)."""
    return "logistic" if name in PREFIX_LOSSES else name


def prefix_pairs(
    chosen_len: torch.Tensor, rejected_len: torch.Tensor, common: torch.Tensor, weighting: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which prefixes of chosen and rejected are compared, and with what weight, for each row.

    Responses have ``chosen_len`` and ``rejected_len`` tokens [B] and share their first ``common`` token
    ids. Position t (0-based) compares chosen's prefix ending at token min(t, Lc - 1) with rejected's
    prefix ending at min(t, Lr - 1), for t from the first differing token d = min(common, L - 1) to
    L - 1, L = max(Lc, Lr): prefixes of equal length are paired, and once the shorter response ends its
    whole self stands against the longer one's growing prefixes; the last position compares the two full
    responses. Positions before d (identical prefixes) are skipped, as the official code starts at the
    divergence index. ``weighting="linear"`` weights position t by t - d + 1 (the paper's
    sum_i i * loss_i / (L (L + 1) / 2), App. D.3), ``"uniform"`` by 1; weights sum to 1 per row.

    Returns chosen positions, rejected positions and weights, each [B, T] with T = max L (weight 0 marks
    padding).
    """
    if weighting not in ("linear", "uniform"):
        raise ValueError(f"unknown prefix weighting '{weighting}', expected linear or uniform")
    if ((chosen_len < 1) | (rejected_len < 1)).any():
        raise ValueError("every response needs at least one token")
    end = torch.maximum(chosen_len, rejected_len)
    start = torch.minimum(common, end - 1)
    t = torch.arange(int(end.max()) if len(end) else 0, device=end.device)[None, :]
    valid = (t >= start[:, None]) & (t < end[:, None])
    chosen_pos = torch.minimum(t, chosen_len[:, None] - 1)
    rejected_pos = torch.minimum(t, rejected_len[:, None] - 1)
    raw = (
        (t - start[:, None] + 1).double()
        if weighting == "linear"
        else torch.ones_like(t, dtype=torch.float64)
    )
    raw = raw * valid
    return chosen_pos, rejected_pos, (raw / raw.sum(1, keepdim=True)).float()


def prefix_loss(margins: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row cumulative loss: sum_t weights[b, t] * -log sigmoid(margins[b, t]), padding at weight 0."""
    return (weights * logistic_loss(margins)).sum(-1)


def accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Share of rows whose chosen item scores higher; a tie counts half (a coin flip)."""
    return ((margin > 0).double() + 0.5 * (margin == 0).double()).mean()
