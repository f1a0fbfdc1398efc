"""The official-reference synthetic data of DESIGN.md: precomputed 384-d vectors, 4 groups x 500 users,
200k training comparisons, K = 4, Bayes ceiling 0.871 (the data the official PAL-B-Tiny code was timed on).

The generative model is the PAL-B one of :func:`pluralign.datasets.synthetic.make_synthetic` in a
``latent_dim``-dimensional space (``setting="groups"``: every user follows one of ``n_groups`` prototypes,
the groups equal in size; shared pools of ``n_items`` items and ``n_contexts`` prompts), with
Bradley-Terry-Luce labels at the temperature that puts the Bayes ceiling at ``ceiling``. The latent vectors
are then lifted into ``dim`` dimensions, as sentence embeddings would be: ``v = Q z + e``, with ``Q`` a
random ``dim x latent_dim`` matrix of orthonormal columns and ``e`` isotropic noise projected onto the
orthogonal complement of ``Q``'s columns (so ``Q^T v = z`` exactly and the labels stay those of the latent
model, while every vector is full rank). ``spread`` (default 0.3) sets the noise's norm relative to the
signal's (about 1): at 1.0 a PAL-B-Tiny model (2-layer maps of width 384) overfits the 200k rows after
about five epochs and peaks near 0.84; at 0.3 it approaches the ceiling (0.85 in seven epochs of 4,096).

The Bayes ceiling is the accuracy of the true reward on the held-out rows in expectation over the labels,
``mean(max(p, 1 - p))`` with ``p = sigmoid(true margin / T)``: no model of the data can exceed it in
expectation. ``bayes_realized`` is the share of held-out rows whose drawn label agrees with the true
reward's sign (the ceiling plus sampling noise). The temperature ``T`` is found by bisection on the
held-out rows' true margins (which do not depend on ``T``: only the labels do), so the construction is
deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.synthetic import make_synthetic

__all__ = ["ReferenceDataset", "expected_accuracy", "make_reference"]

#: DESIGN.md's reference point: the Bayes ceiling of the data the official code was measured on
REFERENCE_CEILING = 0.871


@dataclass(frozen=True, eq=False)
class ReferenceDataset:
    """Embedded train and held-out rows of the same users, each user's group and the truth's summary."""

    train: PreferenceData
    test: PreferenceData
    #: the prototype (group) of each entry of ``train.user_ids``
    groups: np.ndarray
    #: label temperature T of the BTL labels
    noise: float
    #: expected accuracy of the true reward on ``test`` (see the module docstring)
    bayes_ceiling: float
    #: share of ``test`` rows whose label agrees with the true reward
    bayes_realized: float
    latent_dim: int


def expected_accuracy(margins: np.ndarray, noise: float) -> float:
    """Expected accuracy of the sign of ``margins`` against BTL labels at temperature ``noise``."""
    return float(np.mean(expit(np.abs(np.asarray(margins, dtype=np.float64)) / noise)))


def make_reference(
    *,
    n_groups: int = 4,
    users_per_group: int = 500,
    comparisons_per_user: int = 100,
    heldout_per_user: int = 25,
    dim: int = 384,
    latent_dim: int = 16,
    n_items: int = 10_000,
    n_contexts: int = 2_000,
    ceiling: float = REFERENCE_CEILING,
    spread: float = 0.3,
    seed: int = 0,
) -> ReferenceDataset:
    """The reference data (module docstring); defaults: 2,000 users x 100 training comparisons = 200k,
    25 held-out comparisons per user, 384-d vectors, ceiling 0.871. ``spread``: the noise ``e`` has
    standard deviation ``spread / sqrt(dim)`` per coordinate (0: vectors of rank ``latent_dim``)."""
    if not 0.5 < ceiling < 1.0:
        raise ValueError(f"ceiling must be in (0.5, 1), got {ceiling!r}")
    if dim < latent_dim or latent_dim < 1:
        raise ValueError(f"need 1 <= latent_dim <= dim, got latent_dim={latent_dim}, dim={dim}")
    if not spread >= 0:
        raise ValueError(f"spread must be >= 0, got {spread!r}")
    if heldout_per_user < 1:
        raise ValueError(f"heldout_per_user must be >= 1, got {heldout_per_user!r}")

    def draw(noise: float):
        return make_synthetic(
            model="pal_b",
            setting="groups",
            dim=latent_dim,
            n_prototypes=n_groups,
            n_users=n_groups * users_per_group,
            n_train=comparisons_per_user,
            n_test=heldout_per_user,
            noise=noise,
            n_items=n_items,
            n_contexts=n_contexts,
            seed=seed,
        )

    # The rows (and so the absolute true margins) do not depend on the temperature, only the labels do.
    probe = draw(1.0)
    margins = probe.true_margins(probe.test)
    low, high = 1e-4, 1e3
    noise = float(brentq(lambda t: expected_accuracy(margins, t) - ceiling, low, high, xtol=1e-12))
    data = draw(noise)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 384]))
    basis, _ = np.linalg.qr(rng.normal(size=(dim, latent_dim)))  # [dim, latent] orthonormal columns

    def lift(z: np.ndarray) -> np.ndarray:
        e = rng.normal(0.0, spread / np.sqrt(dim), size=(len(z), dim))
        e -= (e @ basis) @ basis.T  # the part orthogonal to the signal's subspace
        return (z.astype(np.float64) @ basis.T + e).astype(np.float32)

    items, contexts = lift(data.train.item_vectors), lift(data.train.context_vectors)
    test_margins = data.true_margins(data.test)
    agree = np.where(test_margins == 0, 0.5, test_margins > 0)  # chosen-minus-rejected margin
    return ReferenceDataset(
        train=data.train.with_vectors(items, contexts),
        test=data.test.with_vectors(items, contexts),
        groups=data.true_weights.argmax(axis=1),
        noise=noise,
        bayes_ceiling=expected_accuracy(test_margins, noise),
        bayes_realized=float(np.mean(agree)),
        latent_dim=latent_dim,
    )
