"""Seeded splits: partitions of the rows, per-user proportions, determinism, shared tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluralign.data import PreferenceData, split_per_user, split_users
from pluralign.data.splits import take_per_user


@pytest.fixture
def data() -> PreferenceData:
    rng = np.random.default_rng(123)
    counts = np.concatenate([[1, 2, 3, 4, 5, 7, 10], rng.integers(1, 60, size=53)])  # 60 users
    users = np.repeat([f"user{i}" for i in range(len(counts))], counts)
    rng.shuffle(users)  # rows of a user are interleaved, as in real files
    n = len(users)
    frame = pd.DataFrame(
        {
            "user_id": users,
            "prompt": [f"p{i % 7}" for i in range(n)],
            "chosen": [f"item{i % 40}" for i in range(n)],
            "rejected": [f"item{40 + i % 37}" for i in range(n)],
            "_line": np.arange(1, n + 1),  # a unique id per row
        }
    )
    return PreferenceData.from_frame(frame, source="mem")


def _ids(part: PreferenceData) -> np.ndarray:
    return part.source_line


def _assert_partition(data: PreferenceData, parts: tuple[PreferenceData, ...]) -> None:
    ids = np.concatenate([_ids(p) for p in parts])
    assert len(ids) == len(data)
    np.testing.assert_array_equal(np.sort(ids), np.sort(data.source_line))
    for part in parts:
        assert np.all(np.diff(_ids(part)) > 0)  # original row order kept
        assert part.user_ids is data.user_ids and part.items is data.items and part.contexts is data.contexts
        # rows are unchanged, only selected
        rows = _ids(part) - 1
        np.testing.assert_array_equal(part.user, data.user[rows])
        np.testing.assert_array_equal(part.chosen, data.chosen[rows])


# --------------------------------------------------------------------------------------------------------
def test_split_users(data: PreferenceData) -> None:
    seen, unseen = split_users(data, 0.25, seed=1)
    _assert_partition(data, (seen, unseen))
    assert set(seen.users_present()).isdisjoint(unseen.users_present())
    assert len(unseen.users_present()) == 15 and len(seen.users_present()) == 45
    counts = data.comparisons_per_user()
    np.testing.assert_array_equal(
        unseen.comparisons_per_user()[unseen.users_present()], counts[unseen.users_present()]
    )

    again = split_users(data, 0.25, seed=1)
    np.testing.assert_array_equal(_ids(again[1]), _ids(unseen))
    other = split_users(data, 0.25, seed=2)
    assert not np.array_equal(other[1].users_present(), unseen.users_present())


def test_split_users_counts(data: PreferenceData) -> None:
    assert split_users(data, n_unseen=7)[1].users_present().size == 7
    assert split_users(data, n_unseen=0)[1].users_present().size == 0
    assert split_users(data, 0.0)[1].users_present().size == 0
    assert split_users(data, 1.0)[0].users_present().size == 0
    assert split_users(data, 0.001)[1].users_present().size == 1  # a positive fraction gives >= 1 user
    assert split_users(data, 0.999)[0].users_present().size == 1
    with pytest.raises(ValueError, match="unseen_fraction"):
        split_users(data, 1.5)
    with pytest.raises(ValueError, match="n_unseen"):
        split_users(data, n_unseen=61)


def test_split_users_ignores_users_without_rows(data: PreferenceData) -> None:
    present = data.subset(data.user < 10)  # the user table still lists 60 users
    seen, unseen = split_users(present, 0.5, seed=0)
    assert seen.users_present().size == 5 and unseen.users_present().size == 5


# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.5), (0.7, 0.2, 0.1), (0.6, 0.0, 0.4)])
def test_split_per_user_proportions(data: PreferenceData, fractions: tuple[float, ...]) -> None:
    parts = split_per_user(data, fractions, seed=3)
    assert len(parts) == len(fractions)
    _assert_partition(data, parts)
    n = data.comparisons_per_user()
    got = np.stack([p.comparisons_per_user() for p in parts], axis=1)  # [users, splits]
    exact = n[:, None] * np.asarray(fractions)[None, :]
    train_floor = np.minimum(n, 1)  # at least one training row per user
    regular = exact[:, 0] >= 1  # elsewhere that rule may take a row from another split
    assert regular.sum() > 40
    assert np.all(got[regular] >= np.floor(exact[regular] + 1e-9))
    assert np.all(got[regular] <= np.ceil(exact[regular] - 1e-9))
    assert np.all(got[:, 0] >= train_floor)
    assert np.all(got.sum(axis=1) == n)
    assert np.all(got[:, np.asarray(fractions) == 0] == 0)


def test_split_per_user_exact_counts(data: PreferenceData) -> None:
    train, val, test = split_per_user(data, (0.8, 0.1, 0.1), seed=0)
    n = data.comparisons_per_user()
    ten = n == 10
    assert ten.any()
    assert np.all(train.comparisons_per_user()[ten] == 8)
    assert np.all(val.comparisons_per_user()[ten] == 1)
    assert np.all(test.comparisons_per_user()[ten] == 1)
    one = n == 1
    assert np.all(train.comparisons_per_user()[one] == 1)


def test_split_per_user_unbiased_for_small_users() -> None:
    # 3 rows per user: plain rounding would put 2/1/0 rows in train/val/test for every user
    n_users = 3000
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(n_users), 3).astype(str),
            "prompt": "",
            "chosen": "a",
            "rejected": "b",
        }
    )
    data = PreferenceData.from_frame(frame)
    train, val, test = split_per_user(data, (0.6, 0.2, 0.2), seed=0)
    shares = np.array([len(train), len(val), len(test)]) / len(data)
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.02)


def test_split_per_user_seeds(data: PreferenceData) -> None:
    a = split_per_user(data, seed=5)
    b = split_per_user(data, seed=5)
    c = split_per_user(data, seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(_ids(x), _ids(y))
    assert not np.array_equal(_ids(a[1]), _ids(c[1]))


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.8, 0.1), "must sum to 1"),
        ((0.5, 0.6), "must sum to 1"),
        ((1.2, -0.2), ">= 0"),
        ((), "non-empty"),
    ],
)
def test_split_per_user_bad_fractions(data: PreferenceData, fractions: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_per_user(data, fractions)


def test_split_per_user_single_split_and_empty(data: PreferenceData) -> None:
    (everything,) = split_per_user(data, (1.0,))
    assert len(everything) == len(data)
    empty = data.subset(np.zeros(len(data), dtype=bool))
    assert [len(p) for p in split_per_user(empty)] == [0, 0, 0]
    assert [len(p) for p in take_per_user(empty, 3)] == [0, 0]


# --------------------------------------------------------------------------------------------------------
def test_take_per_user(data: PreferenceData) -> None:
    first, rest = take_per_user(data, 5, seed=0)
    _assert_partition(data, (first, rest))
    n = data.comparisons_per_user()
    np.testing.assert_array_equal(first.comparisons_per_user(), np.minimum(n, 5))
    np.testing.assert_array_equal(rest.comparisons_per_user(), np.maximum(n - 5, 0))


def test_take_per_user_nested_and_seeded(data: PreferenceData) -> None:
    previous = np.zeros(0, dtype=np.int64)
    for n in (0, 1, 2, 5, 10, 100):
        first, _ = take_per_user(data, n, seed=4)
        assert set(previous) <= set(_ids(first))
        previous = _ids(first)
    assert len(previous) == len(data)  # n above every user's count takes everything
    np.testing.assert_array_equal(
        _ids(take_per_user(data, 3, seed=4)[0]), _ids(take_per_user(data, 3, seed=4)[0])
    )
    assert not np.array_equal(
        _ids(take_per_user(data, 3, seed=4)[0]), _ids(take_per_user(data, 3, seed=5)[0])
    )
    with pytest.raises(ValueError, match="n must be >= 0"):
        take_per_user(data, -1)


def test_public_api() -> None:
    import pluralign.data as module

    assert {"PreferenceData", "read_preferences", "split_users", "split_per_user", "DataError"} <= set(
        module.__all__
    )
