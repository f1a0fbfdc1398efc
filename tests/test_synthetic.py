"""Synthetic PAL-A / PAL-B data: shapes, determinism, and labels checked against an independent model."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.synthetic import SyntheticDataset, make_synthetic

CASES = list(itertools.product(["pal_a", "pal_b"], ["mixture", "partition"]))


def rewards(ds: SyntheticDataset, data: PreferenceData, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The true reward of ``items`` (indices, one per row of ``data``) for each row's user, written
    directly from the generative model's definition."""
    x = data.item_vectors[items].astype(np.float64)
    w = weights[data.user]
    fmap = ds.true_map
    if ds.model == "pal_a":
        ideal = np.einsum("nk,kd->nd", w, ds.true_prototypes)
        return -(np.linalg.norm(x @ fmap.T - ideal @ fmap.T, axis=1) ** 2)
    fx = x @ fmap.T
    fx /= np.linalg.norm(fx, axis=1, keepdims=True)
    c = data.context_vectors[data.context].astype(np.float64)
    gc = np.einsum("kij,nj->nki", ds.true_prototypes, c)
    gc /= np.linalg.norm(gc, axis=2, keepdims=True)
    return np.einsum("nd,nk,nkd->n", fx, w, gc)


def true_margin(ds: SyntheticDataset, data: PreferenceData, weights: np.ndarray) -> np.ndarray:
    return rewards(ds, data, weights, data.chosen) - rewards(ds, data, weights, data.rejected)


# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "setting"), CASES)
def test_shapes_dtypes_and_shared_tables(model: str, setting: str) -> None:
    ds = make_synthetic(model=model, setting=setting, dim=8, n_prototypes=4, n_users=30, n_train=20, n_test=7,
                        n_val=5, n_unseen_users=6, n_unseen_per_user=9)  # fmt: skip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (600, 150, 210)
    assert (len(ds.unseen), len(ds.unseen_test)) == (54, 42)
    splits = [ds.train, ds.val, ds.test, ds.unseen, ds.unseen_test]
    n_rows = sum(len(s) for s in splits)
    for split in splits:
        for name in ("user", "context", "chosen", "rejected"):
            assert getattr(split, name).dtype == np.int64
        assert split.items is ds.train.items and split.item_vectors is ds.train.item_vectors
        assert split.contexts is ds.train.contexts and split.context_vectors is ds.train.context_vectors
        assert split.is_embedded and split.item_dim == 8
        assert (split.chosen != split.rejected).all()
    assert ds.train.item_vectors.dtype == np.float32 and ds.train.item_vectors.shape == (2 * n_rows, 8)
    assert ds.train.items[0] == "item-0" and ds.train.items[-1] == f"item-{2 * n_rows - 1}"
    if model == "pal_a":
        assert ds.train.context_vectors.shape == (1, 0) and list(ds.train.contexts) == [""]
        assert ds.true_prototypes.shape == (4, 8)
        assert (ds.train.context == 0).all()
    else:
        assert ds.train.context_vectors.shape == (n_rows, 8) and ds.train.context_vectors.dtype == np.float32
        assert ds.train.contexts[0] == "ctx-0"
        assert ds.true_prototypes.shape == (4, 8, 8)
    assert ds.true_map.shape == (8, 8)
    assert ds.true_weights.shape == (30, 4) and ds.unseen_weights.shape == (6, 4)
    np.testing.assert_allclose(ds.true_weights.sum(1), 1.0)
    assert (ds.true_weights >= 0).all()
    assert list(ds.train.user_ids[:2]) == ["user-0", "user-1"]
    assert ds.val.user_ids is ds.train.user_ids and ds.unseen_test.user_ids is ds.unseen.user_ids
    np.testing.assert_array_equal(np.bincount(ds.train.user), np.full(30, 20))
    np.testing.assert_array_equal(np.bincount(ds.unseen.user), np.full(6, 9))
    assert ds.train.to_frame().shape == (600, 4)


@pytest.mark.parametrize(("model", "setting"), CASES)
def test_same_seed_same_data_and_other_seed_other_data(model: str, setting: str) -> None:
    kwargs = {"model": model, "setting": setting, "n_users": 10, "n_train": 5, "n_test": 3, "noise": 0.2}
    a, b, c = (
        make_synthetic(**kwargs, seed=7),
        make_synthetic(**kwargs, seed=7),
        make_synthetic(**kwargs, seed=8),
    )
    for split in ("train", "test"):
        for name in ("user", "context", "chosen", "rejected"):
            np.testing.assert_array_equal(getattr(getattr(a, split), name), getattr(getattr(b, split), name))
    np.testing.assert_array_equal(a.train.item_vectors, b.train.item_vectors)
    np.testing.assert_array_equal(a.train.context_vectors, b.train.context_vectors)
    for name in ("true_weights", "true_prototypes", "true_map"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.bayes_accuracy == b.bayes_accuracy
    assert not np.array_equal(a.train.item_vectors, c.train.item_vectors)
    assert not np.array_equal(a.true_map, c.true_map)


def test_unseen_users_and_test_size_leave_the_training_data_alone() -> None:
    base = make_synthetic(model="pal_b", n_users=10, n_train=5, n_test=3, noise=0.5)
    more = make_synthetic(model="pal_b", n_users=10, n_train=5, n_test=9, n_unseen_users=4, noise=0.5)
    n = len(base.train)
    np.testing.assert_array_equal(base.train.item_vectors[: 2 * n], more.train.item_vectors[: 2 * n])
    np.testing.assert_array_equal(base.train.chosen, more.train.chosen)
    np.testing.assert_array_equal(base.true_weights, more.true_weights)


@pytest.mark.parametrize(("model", "setting"), CASES)
def test_labels_follow_the_true_model(model: str, setting: str) -> None:
    ds = make_synthetic(model=model, setting=setting, n_users=40, n_train=30, n_test=20, n_val=5,
                        n_unseen_users=10, n_unseen_per_user=8)  # fmt: skip
    for split in (ds.train, ds.val, ds.test):
        margin = true_margin(ds, split, ds.true_weights)
        assert (margin > 0).all()
        np.testing.assert_allclose(ds.true_margins(split), margin, rtol=1e-9, atol=1e-12)
    for split in (ds.unseen, ds.unseen_test):
        assert (true_margin(ds, split, ds.unseen_weights) > 0).all()
    assert ds.bayes_accuracy == 1.0


@pytest.mark.parametrize("model", ["pal_a", "pal_b"])
def test_noisy_labels_are_btl_draws(model: str) -> None:
    noise = 0.2 if model == "pal_b" else 0.5
    ds = make_synthetic(model=model, n_users=200, n_train=50, n_test=50, noise=noise)
    margin = true_margin(ds, ds.test, ds.true_weights)
    assert 0.5 < ds.bayes_accuracy < 1.0
    assert ds.bayes_accuracy == pytest.approx(np.mean(margin > 0), abs=1e-12)
    # The share of rows whose label agrees with the true ordering matches the BTL prediction.
    expected = np.mean(1 / (1 + np.exp(-np.abs(margin) / noise)))
    assert ds.bayes_accuracy == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("model", ["pal_a", "pal_b"])
def test_partition_users_sit_on_one_prototype_each(model: str) -> None:
    ds = make_synthetic(model=model, setting="partition", n_prototypes=5, n_users=300, n_unseen_users=20)
    for w in (ds.true_weights, ds.unseen_weights):
        assert set(np.unique(w)) == {0.0, 1.0}
        np.testing.assert_array_equal(w.sum(1), 1.0)
    assert (ds.true_weights.sum(0) > 0).all()  # 300 users cover all 5 prototypes


@pytest.mark.parametrize("mixture_weights", ["softmax", "dirichlet"])
def test_mixture_users_lie_inside_the_simplex(mixture_weights: str) -> None:
    ds = make_synthetic(n_users=200, mixture_weights=mixture_weights)
    assert (ds.true_weights > 0).all() and (ds.true_weights < 1).all()
    np.testing.assert_allclose(ds.true_weights.sum(1), 1.0)


@pytest.mark.parametrize(("k", "dim", "delta"), [(3, 16, 1.0), (5, 2, 0.3), (8, 16, 1.2)])
def test_prototypes_respect_the_minimum_distance(k: int, dim: int, delta: float) -> None:
    for seed in range(3):
        ds = make_synthetic(
            n_prototypes=k, dim=dim, min_prototype_distance=delta, n_users=5, n_train=2, seed=seed
        )
        p = ds.true_prototypes
        distances = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(k, 1)]
        assert distances.min() >= delta


def test_unreachable_prototype_distance_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="could not draw 10 prototypes"):
        make_synthetic(n_prototypes=10, dim=2, min_prototype_distance=3.0)


def test_unseen_users_have_their_own_ids() -> None:
    ds = make_synthetic(n_users=12, n_unseen_users=7)
    assert set(ds.unseen.user_ids).isdisjoint(ds.train.user_ids)
    assert len(set(ds.unseen.user_ids)) == 7
    assert ds.unseen_test.user_ids is ds.unseen.user_ids
    none = make_synthetic(n_users=12)
    assert none.unseen is None and none.unseen_test is None and none.unseen_weights is None


def test_item_and_context_pools() -> None:
    ds = make_synthetic(model="pal_b", n_users=20, n_train=30, n_items=15, n_contexts=4, n_unseen_users=3)
    for split in (ds.train, ds.test, ds.unseen):
        assert split.item_vectors.shape == (15, 16) and split.context_vectors.shape == (4, 16)
        assert split.chosen.max() < 15 and split.context.max() < 4
        assert (split.chosen != split.rejected).all()
    assert len(np.unique(ds.train.context)) == 4
    assert (true_margin(ds, ds.train, ds.true_weights) > 0).all()


def test_empty_validation_split_is_usable() -> None:
    ds = make_synthetic(n_users=5, n_train=3, n_test=2)
    assert len(ds.val) == 0 and ds.val.items is ds.train.items
    assert len(ds.true_margins(ds.val)) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "pal_c"}, "unknown model 'pal_c'"),
        ({"setting": "blend"}, "unknown setting 'blend'"),
        ({"mixture_weights": "uniform"}, "unknown mixture_weights"),
        ({"dim": 0}, "dim must be an int >= 1"),
        ({"n_prototypes": 0}, "n_prototypes must be an int >= 1"),
        ({"n_users": 2.5}, "n_users must be an int >= 1"),
        ({"n_train": 0}, "n_train must be an int >= 1"),
        ({"n_test": -1}, "n_test must be an int >= 0"),
        ({"n_unseen_users": -2}, "n_unseen_users"),
        ({"min_prototype_distance": -1.0}, "min_prototype_distance"),
        ({"noise": 0.0}, "noise must be None"),
        ({"noise": float("nan")}, "noise must be None"),
        ({"n_items": 1}, "n_items must be None"),
        ({"n_contexts": 5}, "PAL-B only"),
        ({"model": "pal_b", "n_contexts": 0}, "n_contexts must be None"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic(**kwargs)


def test_true_margins_needs_weights_for_foreign_user_tables() -> None:
    ds = make_synthetic(n_users=4, n_train=3)
    foreign = replace(ds.train, user_ids=ds.train.user_ids.copy())
    with pytest.raises(ValueError, match="pass the users' weights"):
        ds.true_margins(foreign)
    assert (ds.true_margins(foreign, ds.true_weights) > 0).all()


@pytest.mark.parametrize("n_users", [12, 13])
def test_groups_setting_gives_equal_groups(n_users: int) -> None:
    ds = make_synthetic(model="pal_b", setting="groups", n_prototypes=4, n_users=n_users, seed=3)
    assert set(np.unique(ds.true_weights)) == {0.0, 1.0}
    sizes = ds.true_weights.sum(0)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n_users
    again = make_synthetic(model="pal_b", setting="groups", n_prototypes=4, n_users=n_users, seed=3)
    np.testing.assert_array_equal(ds.true_weights, again.true_weights)
    assert not np.array_equal(ds.true_weights.argmax(1), np.arange(n_users) % 4)  # shuffled, not in turn
