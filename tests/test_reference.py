"""The official-reference synthetic data (DESIGN.md): its ceiling, groups, lifted vectors, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from pluralign.datasets.reference import expected_accuracy, make_reference
from pluralign.datasets.synthetic import make_synthetic

SMALL = {"users_per_group": 25, "comparisons_per_user": 40, "heldout_per_user": 20, "n_items": 500}


def test_reference_shapes_groups_and_ceiling() -> None:
    ref = make_reference(**SMALL, n_contexts=100, seed=1)
    assert len(ref.train) == 100 * 40 and len(ref.test) == 100 * 20
    assert ref.train.item_vectors.shape == (500, 384) and ref.train.context_vectors.shape == (100, 384)
    assert ref.test.item_vectors is ref.train.item_vectors  # one table, shared by both splits
    np.testing.assert_array_equal(np.bincount(ref.groups), [25, 25, 25, 25])
    assert ref.bayes_ceiling == pytest.approx(0.871, abs=1e-6)
    assert abs(ref.bayes_realized - ref.bayes_ceiling) < 0.04  # 2,000 labels drawn around the ceiling
    # the same users on both sides: held-out rows of seen users
    assert set(np.unique(ref.test.user)) == set(np.unique(ref.train.user))


def test_reference_is_deterministic_and_seeded() -> None:
    a, b = make_reference(**SMALL, seed=0), make_reference(**SMALL, seed=0)
    np.testing.assert_array_equal(a.train.item_vectors, b.train.item_vectors)
    np.testing.assert_array_equal(a.test.chosen, b.test.chosen)
    assert a.noise == b.noise
    c = make_reference(**SMALL, seed=1)
    assert not np.array_equal(a.train.item_vectors, c.train.item_vectors)


def test_lifted_vectors_keep_the_latent_truth() -> None:
    """The 384-d vectors project back onto the latent model's vectors exactly, noise orthogonal to them:
    the labels are those of the latent PAL-B model, whose true margins give the ceiling."""
    ref = make_reference(**SMALL, seed=2, ceiling=0.8, spread=1.0)
    latent = make_synthetic(
        model="pal_b", setting="groups", dim=16, n_prototypes=4, n_users=100, n_train=40, n_test=20,
        noise=ref.noise, n_items=500, n_contexts=2000, seed=2,
    )  # fmt: skip
    np.testing.assert_array_equal(ref.test.chosen, latent.test.chosen)
    z, v = latent.train.item_vectors.astype(np.float64), ref.train.item_vectors.astype(np.float64)
    assert np.linalg.matrix_rank(v) == min(v.shape)  # full rank, not a 16-d subspace
    assert np.linalg.norm(v, axis=1).mean() > 1.2 * np.linalg.norm(z, axis=1).mean()  # noise on top
    # without the noise the lift is an isometry of the latent vectors (orthonormal columns)
    flat = make_reference(**SMALL, seed=2, ceiling=0.8, spread=0.0)
    f = flat.train.item_vectors.astype(np.float64)
    np.testing.assert_allclose(f @ f.T, z @ z.T, atol=1e-5)
    assert np.linalg.matrix_rank(f, tol=1e-4) == 16  # up to float32 rounding
    margins = latent.true_margins(latent.test)
    assert ref.bayes_ceiling == pytest.approx(float(np.mean(expit(np.abs(margins) / ref.noise))), abs=1e-9)
    assert ref.bayes_ceiling == pytest.approx(0.8, abs=1e-6)
    assert expected_accuracy(margins, 1e-9) == pytest.approx(1.0)


def test_reference_rejects_bad_arguments() -> None:
    for bad in ({"ceiling": 0.5}, {"ceiling": 1.0}, {"latent_dim": 400}, {"spread": -1.0}):
        with pytest.raises(ValueError):
            make_reference(**SMALL, **bad)
