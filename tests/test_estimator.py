"""Estimator behaviour: learning the planted structure, determinism, checkpoints, new users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pluralign.checkpoint import CONFIG, TENSORS
from pluralign.datasets.synthetic import make_synthetic
from pluralign.demo import SYNTHETIC_PARAMS
from pluralign.encoders import PrecomputedEncoder
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.estimator import BTL, PALA, PALB, PALEstimator
from pluralign.training.simplex import fit_simplex_weights

FAST = {**SYNTHETIC_PARAMS, "epochs": 150}


@pytest.fixture(scope="module")
def pal_a_data():
    return make_synthetic(
        model="pal_a",
        setting="mixture",
        dim=16,
        n_prototypes=3,
        n_users=60,
        n_train=100,
        n_test=50,
        n_unseen_users=30,
        n_unseen_per_user=100,
        seed=0,
    )


@pytest.fixture(scope="module")
def fitted(pal_a_data):
    return {
        "k1": PALA(n_prototypes=1, dim=16, **FAST).fit(pal_a_data.train),
        "k3": PALA(n_prototypes=3, dim=16, **FAST).fit(pal_a_data.train),
    }


def test_pal_recovers_planted_heterogeneity(pal_a_data, fitted):
    """With K = K* PAL is clearly better than one prototype (paper Fig. 5b: about 7 points)."""
    acc1 = fitted["k1"].score(pal_a_data.test)
    acc3 = fitted["k3"].score(pal_a_data.test)
    assert acc3 > 0.9
    assert acc3 - acc1 > 0.05


def test_same_seed_same_numbers(pal_a_data):
    a = PALA(n_prototypes=2, dim=16, **{**FAST, "epochs": 5}).fit(pal_a_data.train)
    b = PALA(n_prototypes=2, dim=16, **{**FAST, "epochs": 5}).fit(pal_a_data.train)
    c = PALA(n_prototypes=2, dim=16, **{**FAST, "epochs": 5, "seed": 1}).fit(pal_a_data.train)
    np.testing.assert_array_equal(a.margins(pal_a_data.test), b.margins(pal_a_data.test))
    assert not np.array_equal(a.margins(pal_a_data.test), c.margins(pal_a_data.test))


@pytest.mark.parametrize("cls", [PALA, PALB, BTL])
def test_checkpoint_round_trip_gives_identical_rewards(tmp_path, pal_a_data, cls):
    params = {**FAST, "epochs": 3}
    est = cls(**params) if cls is BTL else cls(n_prototypes=2, dim=8, **params)
    est.fit(pal_a_data.train)
    est.save(tmp_path / "model")
    loaded = PALEstimator.load(tmp_path / "model")
    assert type(loaded) is cls
    np.testing.assert_array_equal(est.margins(pal_a_data.test), loaded.margins(pal_a_data.test))
    pd.testing.assert_frame_equal(est.user_weights(), loaded.user_weights())
    torch.testing.assert_close(est.zero_shot_weights_.double(), loaded.zero_shot_weights_.double())
    # saving over an existing checkpoint replaces it whole
    loaded.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_corrupt_or_wrong_checkpoint_is_refused(tmp_path, fitted):
    fitted["k1"].save(tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds a PALA"):
        PALB.load(tmp_path / "m")
    blob = bytearray((tmp_path / "m" / TENSORS).read_bytes())
    blob[-5] ^= 0xFF
    (tmp_path / "m" / TENSORS).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        PALEstimator.load(tmp_path / "m")
    (tmp_path / "m" / CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PALEstimator.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        PALEstimator.load(tmp_path / "missing")


def test_few_shot_adaptation_beats_zero_shot(pal_a_data, fitted):
    est = fitted["k3"].copy()
    pool, held_out = pal_a_data.unseen, pal_a_data.unseen_test
    zero_shot = est.score(held_out)
    weights = est.adapt(pool)
    assert len(weights) == pal_a_data.unseen.n_users
    assert (weights["n_comparisons"] == 100).all()
    np.testing.assert_allclose(weights.filter(like="w").sum(axis=1), 1.0, atol=1e-6)
    assert est.score(held_out) > zero_shot + 0.05
    # the copy was adapted, the original was not touched
    assert len(fitted["k3"].users_) == pal_a_data.train.n_users


def test_pal_b_few_shot_is_exact_and_fast():
    data = make_synthetic(
        model="pal_b",
        setting="partition",
        dim=8,
        n_prototypes=2,
        n_users=40,
        n_train=80,
        n_test=40,
        n_unseen_users=20,
        n_unseen_per_user=100,
        seed=1,
    )
    est = PALB(
        n_prototypes=2,
        dim=8,
        f_layers=1,
        g_layers=1,
        epochs=60,
        batch_size=256,
        lr_maps=5e-3,
        lr_prototypes=5e-3,
        lr_users=5e-2,
        patience=None,
    ).fit(data.train)
    pool, held_out = data.unseen, data.unseen_test
    before = est.score(held_out)
    frame = est.copy().adapt(pool, ridge=0.0)
    # exact: each new user's weights reach the optimum scipy finds for mean logistic loss over the simplex
    prepared = est.prepare(pool)
    with torch.no_grad():
        A = est.model_.prototype_margins(est.to_batch(prepared, prepared.user), est.to_tables(prepared))
    A = A.double().numpy()
    ours = frame.filter(regex=r"^w\d+$").to_numpy()
    ids = prepared.user_ids.astype(str)
    for u in range(len(ids)):
        rows = A[prepared.user == u]
        ref = _scipy_simplex_optimum(rows)
        mine = ours[frame.index.get_loc(ids[u])]
        assert _mean_logistic(rows, mine) <= _mean_logistic(rows, ref) + 1e-10
        np.testing.assert_allclose(mine, ref, atol=1e-4)
    # fast: the batched projected Newton certifies all 20 users in a few iterations (quadratic convergence)
    fit = fit_simplex_weights(
        torch.from_numpy(A), torch.from_numpy(prepared.user), len(ids), prior=est.zero_shot_weights_
    )
    assert bool(fit.converged.all()) and float(fit.gap.max()) <= 1e-9 and int(fit.iterations.max()) <= 15
    np.testing.assert_allclose(fit.weights.numpy(), ours[frame.index.get_indexer(ids)], atol=1e-12)
    est.adapt(pool, ridge=0.0)
    assert est.score(held_out) > before


def _mean_logistic(A: np.ndarray, w: np.ndarray) -> float:
    return float(np.logaddexp(0.0, -(A @ w)).mean())


def _scipy_simplex_optimum(A: np.ndarray) -> np.ndarray:
    """SLSQP with the analytic gradient from the barycentre and every vertex; the best point it finds."""
    from scipy.optimize import minimize
    from scipy.special import expit

    n, k = A.shape

    def objective(w):
        return _mean_logistic(A, w), -(A.T @ expit(-(A @ w))) / n

    best = None
    for start in [np.full(k, 1.0 / k), *np.eye(k)]:
        res = minimize(
            objective,
            start,
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    return np.clip(best.x, 0.0, None) / np.clip(best.x, 0.0, None).sum()


def test_reward_for_known_and_unknown_users(pal_a_data, fitted):
    items = list(pal_a_data.train.items[:4])
    # synthetic items are vectors named item-<i>: serve them through a precomputed encoder
    encoder = PrecomputedEncoder(list(pal_a_data.train.items), pal_a_data.train.item_vectors)
    est = fitted["k3"].copy().set_params(encoder=encoder)
    user = str(pal_a_data.train.user_ids[0])
    rewards = est.reward(user, "", items)
    assert rewards.shape == (4,)
    # the reward difference of two items is the margin of that comparison
    row = pd.DataFrame({"user_id": [user], "prompt": [""], "chosen": [items[0]], "rejected": [items[1]]})
    np.testing.assert_allclose(
        est.margins(_embedded_like(pal_a_data.train, row)), rewards[0] - rewards[1], rtol=1e-5
    )
    unknown = est.reward("nobody", "", items)
    assert np.isfinite(unknown).all()
    # an unknown user is scored at the zero-shot weights, the mean of the seen users' weights (paper 2.2):
    # rebuild that reward from the model's parts, r(x) = -||f(x) - f(w0 P)||^2 (PAL-A, eq. 4)
    model = est.model_
    with torch.no_grad():
        seen = torch.softmax(model.user_logits[: est.n_seen_users_].double(), -1)
        torch.testing.assert_close(est.zero_shot_weights_.double(), seen.mean(0), rtol=1e-6, atol=1e-7)
        x = torch.from_numpy(pal_a_data.train.item_vectors[:4])
        ideal = model.f(est.zero_shot_weights_.float() @ model.prototypes)
        expected = -(model.f(x) - ideal).square().sum(-1)
    np.testing.assert_allclose(unknown, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    # ... and not at some seen user's weights
    assert not np.allclose(unknown, rewards, rtol=1e-3)
    with pytest.raises(DataError, match="differ in length"):
        est.reward([user, user], "", items)


def _embedded_like(data, frame):
    from pluralign.data.comparisons import PreferenceData

    rows = PreferenceData.from_frame(frame)
    index = pd.Index(data.items.astype(str))
    vectors = data.item_vectors[index.get_indexer(rows.items.astype(str))]
    return rows.with_vectors(vectors, np.zeros((len(rows.contexts), data.context_dim), np.float32))


def test_unfitted_and_bad_params():
    with pytest.raises(PluralignError, match="not fitted"):
        PALA().score(pd.DataFrame())
    with pytest.raises(ValueError, match="no parameter"):
        PALA().set_params(n_protoypes=2)
    with pytest.raises(ValueError, match="one prototype"):
        BTL(n_prototypes=2)
    assert "n_prototypes=4" in repr(PALB(n_prototypes=4))


def test_wrong_vector_dimensions_are_reported(pal_a_data, fitted):
    other = make_synthetic(model="pal_a", dim=8, n_prototypes=2, n_users=5, n_train=10, n_test=5, seed=0)
    with pytest.raises(DataError, match="trained on item=16"):
        fitted["k1"].score(other.test)


def test_text_end_to_end_with_the_default_encoder(tmp_path):
    """Raw text rows -> MiniLM embeddings (cached) -> PAL-B -> rewards that survive save/load."""
    rng = np.random.default_rng(0)
    short, long = (
        ["Yes.", "Sure.", "No."],
        ["Here is a detailed, step-by-step answer.", "A long and careful reply."],
    )
    rows = []
    for u in range(8):
        likes_short = u % 2 == 0  # two groups with opposite tastes
        for i in range(6):
            s, lo = short[rng.integers(3)], long[rng.integers(2)]
            rows.append(
                {
                    "user_id": f"u{u}",
                    "prompt": f"question {i}",
                    "chosen": s if likes_short else lo,
                    "rejected": lo if likes_short else s,
                }
            )
    frame = pd.DataFrame(rows)
    est = PALB(
        n_prototypes=2,
        dim=8,
        epochs=60,
        batch_size=16,
        lr_maps=1e-2,
        lr_prototypes=1e-2,
        lr_users=1e-1,
        patience=None,
        cache_dir=tmp_path / "cache",
    )
    est.fit(frame)
    assert est.score(frame) > 0.9
    rewards = est.reward(["u0", "u1"], "question 0", ["Sure.", "Sure."])
    assert rewards[0] != rewards[1]  # the same text, two users with different tastes
    est.save(tmp_path / "model")
    loaded = PALEstimator.load(tmp_path / "model")
    np.testing.assert_allclose(
        loaded.reward(["u0", "u1"], "question 0", ["Sure.", "Sure."]), rewards, rtol=1e-6
    )
    assert any((tmp_path / "cache").rglob("*.npy"))


def test_saved_model_files_get_the_umask_mode(tmp_path):
    """model.safetensors used to be 0600 (safetensors' own default) beside 0644 siblings."""
    import os
    import stat

    from pluralign.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "model", {"kind": "test"}, {"w": torch.zeros(2)}, ["a"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["users.json"] == modes["config.json"] == 0o644
