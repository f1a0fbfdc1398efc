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


LOSSES: dict[str, LossFn] = {"logistic": logistic_loss, "hinge": hinge_loss}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}', expected one of {', '.join(LOSSES)}") from None


def accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Share of rows whose chosen item scores higher; a tie counts half (a coin flip)."""
    return ((margin > 0).double() + 0.5 * (margin == 0).double()).mean()
