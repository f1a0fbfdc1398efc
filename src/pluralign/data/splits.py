"""Seeded, vectorized splits of a :class:`PreferenceData`: by user, within each user, and few-shot pools.

Every split is a set of boolean masks over the rows, so subsets keep the original row order and share the
user, context and item tables (and their vectors) with the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pluralign.data.comparisons import PreferenceData

__all__ = ["split_per_user", "split_users", "take_per_user"]


def split_users(
    data: PreferenceData, unseen_fraction: float = 0.2, *, n_unseen: int | None = None, seed: int = 0
) -> tuple[PreferenceData, PreferenceData]:
    """Partition the rows by user into ``(seen, unseen)``.

    ``n_unseen`` users (default: ``round(unseen_fraction * n)`` of the ``n`` users that have rows, but at
    least 1 if the fraction is > 0 and at most n - 1 if it is < 1) are drawn uniformly at random; all their
    rows go to ``unseen``, all other rows to ``seen``.
    """
    present = data.users_present()
    n = len(present)
    if n_unseen is None:
        if not 0.0 <= unseen_fraction <= 1.0:
            raise ValueError(f"unseen_fraction must be in [0, 1], got {unseen_fraction}")
        n_unseen = int(np.floor(unseen_fraction * n + 0.5))
        if unseen_fraction > 0 and n >= 1:
            n_unseen = max(n_unseen, 1)
        if unseen_fraction < 1 and n >= 2:
            n_unseen = min(n_unseen, n - 1)
    elif not 0 <= n_unseen <= n:
        raise ValueError(f"n_unseen must be between 0 and the {n} users with rows, got {n_unseen}")
    rng = np.random.default_rng(seed)
    unseen_user = np.zeros(data.n_users, dtype=bool)
    unseen_user[rng.permutation(present)[:n_unseen]] = True
    unseen = unseen_user[data.user]
    return data.subset(~unseen), data.subset(unseen)


def split_per_user(
    data: PreferenceData, fractions: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> tuple[PreferenceData, ...]:
    """Partition every user's rows at random into one split per fraction (e.g. train, val, test).

    A user with ``n`` rows gives split ``k`` either ``floor`` or ``ceil`` of ``n * fractions[k]`` rows,
    rounded with a random offset per user so that the totals over users are unbiased (plain rounding would
    starve small splits when users have few rows). Every row lands in exactly one split, and every user gets
    at least one row in the first split if ``fractions[0] > 0``.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or len(fractions) == 0:
        raise ValueError(f"fractions must be a non-empty sequence of numbers, got {fractions.tolist()}")
    if (fractions < 0).any() or not np.isfinite(fractions).all():
        raise ValueError(f"fractions must be finite and >= 0, got {fractions.tolist()}")
    if abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions.tolist()} (sum {fractions.sum():.6g})")
    rng = np.random.default_rng(seed)
    rank, count = rank_within_user(data, rng)
    offset = rng.random(data.n_users)[data.user]
    # Split boundaries per row's user; the same offset for every boundary keeps them ordered and makes
    # each split's share floor or ceil of its exact share.
    cumulative = np.round(np.cumsum(fractions)[:-1], 12)  # 0.7 + 0.2 must not floor 10 * 0.9 to 8
    bounds = np.floor(count[:, None] * cumulative[None, :] + offset[:, None]).astype(np.int64)
    if fractions[0] > 0:
        bounds = np.maximum(bounds, np.minimum(count, 1)[:, None])
    bounds = np.minimum(bounds, count[:, None])
    split = (rank[:, None] >= bounds).sum(axis=1)
    return tuple(data.subset(split == k) for k in range(len(fractions)))


def take_per_user(data: PreferenceData, n: int, *, seed: int = 0) -> tuple[PreferenceData, PreferenceData]:
    """``(first, rest)``: ``n`` random rows of every user in ``first``, the remaining rows in ``rest``.

    A user with ``n`` rows or fewer has all of them in ``first`` and none in ``rest``. The rows are the
    first ``n`` of one random order per user that depends only on ``seed`` and the data, so the ``first``
    sets for growing ``n`` are nested (as few-shot curves need).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rank, _ = rank_within_user(data, np.random.default_rng(seed))
    first = rank < n
    return data.subset(first), data.subset(~first)


def rank_within_user(data: PreferenceData, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its position in a random order of its user's rows, and its user's row count."""
    m = len(data)
    shuffled = rng.permutation(m)
    order = shuffled[np.argsort(data.user[shuffled], kind="stable")]
    sorted_user = data.user[order]
    is_start = np.ones(m, dtype=bool)
    is_start[1:] = sorted_user[1:] != sorted_user[:-1]
    group_start = np.maximum.accumulate(np.where(is_start, np.arange(m), 0)) if m else np.zeros(0, np.int64)
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m) - group_start
    count = np.bincount(data.user, minlength=data.n_users)[data.user]
    return rank, count
