"""Checks of data that cannot support the model, each a clear one-line warning, and the automatic
validation share that early stopping needs when no validation data is given.

    check_training_data   K >= the number of users, a single user, fewer than ~2 comparisons per user
    check_validation      validation rows of unknown users, training users without validation rows
    check_fit             training accuracy that is not clearly above chance at the end of a fit
    hold_out              a seeded share of each user's rows, held out for early stopping

The warnings go to the ``pluralign`` logger and are returned, so ``fit`` keeps them in ``fit_warnings_``
(and the CLI's JSON output carries them).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user
from pluralign.training.config import History

logger = logging.getLogger("pluralign.estimator")

#: fewer comparisons per user than this, on average, rarely pin down K weights per user
MIN_ROWS_PER_USER = 2.0
#: an automatic validation share smaller than this many rows is too noisy to stop on: train the budget
MIN_HOLDOUT_ROWS = 20
#: "clearly above chance": this many binomial standard errors above 0.5
CHANCE_SE = 2.0


def _warn(found: list[str], message: str) -> None:
    logger.warning(message)
    found.append(message)


def check_training_data(data: PreferenceData, n_prototypes: int, model: str) -> list[str]:
    """Warnings about ``data`` for a model with ``n_prototypes`` prototypes (``model``: its class name)."""
    found: list[str] = []
    n, n_users = len(data), len(np.unique(data.user))
    source = f"{data.source}: " if data.source else ""
    if n_prototypes > 1 and n_users == 1:
        _warn(
            found,
            f"{source}a single user: {model} with K = {n_prototypes} prototypes has nothing to tell apart; "
            "one shared reward (BTL, or K = 1) fits the same",
        )
    elif n_prototypes > 1 and n_prototypes >= n_users:
        _warn(
            found,
            f"{source}K = {n_prototypes} prototypes for {n_users} users: with at least one prototype per "
            f"user nothing is shared; use K <= {max(1, n_users - 1)} (select-k chooses K)",
        )
    if n / n_users < MIN_ROWS_PER_USER:
        _warn(
            found,
            f"{source}{n} comparisons from {n_users} users ({n / n_users:.2g} per user on average): "
            f"fewer than {MIN_ROWS_PER_USER:g} per user rarely pin down a user's weights",
        )
    return found


def check_validation(
    train_users: np.ndarray, val_users: np.ndarray, n_users: int, *, given: bool
) -> list[str]:
    """Warnings about validation rows whose model rows are ``val_users`` (-1: a user not in training):
    rows of unknown users (left out of early stopping) and, for validation data the user ``given``,
    training users (model rows ``train_users``) without any validation row."""
    found: list[str] = []
    unknown = val_users < 0
    if unknown.any():
        _warn(
            found,
            f"validation: {int(unknown.sum())} of {len(val_users)} comparisons are from users not in the "
            "training data; they are left out of early stopping",
        )
    missing = n_users - len(np.intersect1d(np.unique(train_users), np.unique(val_users[~unknown])))
    if given and missing:
        _warn(
            found,
            f"validation: {missing} of {n_users} training users have no validation comparisons; early "
            "stopping does not see how well they are fitted",
        )
    return found


def check_fit(history: History) -> list[str]:
    """A warning when the last evaluation's training accuracy is not clearly above chance (0.5)."""
    found: list[str] = []
    if not history.records:
        return found
    last = history.records[-1]
    rows, accuracy = max(int(last.get("rows", 0)), 1), float(last["train_accuracy"])
    floor = 0.5 + CHANCE_SE * math.sqrt(0.25 / rows)
    if accuracy <= floor:
        _warn(
            found,
            f"training accuracy {accuracy:.3f} at the end (over the last {rows:,} comparisons trained on) is "
            f"not clearly above chance (0.5; {floor:.3f} would be): the model has not learned these "
            "labels; check that chosen/rejected are right, or train longer (--max-steps)",
        )
    return found


def hold_out(
    data: PreferenceData, fraction: float, seed: int
) -> tuple[PreferenceData, PreferenceData | None, str]:
    """``(train, validation, message)``: ``fraction`` of each user's rows (seeded; every user keeps at
    least one training row) for early stopping, or ``(data, None, message)`` when that share would be
    smaller than ``MIN_HOLDOUT_ROWS`` rows (too noisy to stop on)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    train, val = split_per_user(data, (1.0 - fraction, fraction), seed=seed)
    if len(val) < MIN_HOLDOUT_ROWS:
        return (
            data,
            None,
            f"no validation data: {len(data)} comparisons are too few to hold out {fraction:.0%} for early "
            f"stopping (under {MIN_HOLDOUT_ROWS} rows); training the whole step budget",
        )
    n_users = len(np.unique(data.user))
    return (
        train,
        val,
        f"no validation data given: held out {len(val):,} of {len(data):,} comparisons ({fraction:.0%} of "
        f"each user's rows, {len(np.unique(val.user)):,} of {n_users:,} users, seeded) for early stopping; "
        "val_fraction=0 (--no-val) trains on all of them",
    )
