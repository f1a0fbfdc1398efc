"""Min-max-regret aggregation against brute force over the simplex."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pluralign.dpo.mmra import min_max_regret


def _grid(n_policies: int, steps: int = 60) -> np.ndarray:
    points = [c for c in itertools.product(range(steps + 1), repeat=n_policies) if sum(c) == steps]
    return np.array(points, dtype=np.float64) / steps


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (4, 3), (5, 2)])
def test_lp_matches_brute_force(seed, shape):
    values = np.random.default_rng(seed).normal(size=shape)
    result = min_max_regret(values, normalize=False)
    grid = _grid(shape[1])
    brute = (values.max(axis=1)[None, :] - grid @ values.T).max(axis=1).min()
    assert result.max_regret <= brute + 1e-9  # exact LP is at least as good as any grid point
    assert result.max_regret >= brute - 0.05  # and the grid gets close to it
    np.testing.assert_allclose(result.weights.sum(), 1.0)
    assert (result.weights >= 0).all()
    np.testing.assert_allclose(result.regret, values.max(axis=1) - values @ result.weights)


def test_two_opposed_types_get_an_even_mixture():
    # each type loves its own policy and gets nothing from the other's: serve both half the time
    result = min_max_regret(np.array([[1.0, 0.0], [0.0, 1.0]]), normalize=False)
    np.testing.assert_allclose(result.weights, [0.5, 0.5], atol=1e-9)
    assert result.max_regret == pytest.approx(0.5)


def test_a_dominant_policy_has_zero_regret():
    result = min_max_regret(np.array([[1.0, 0.2, 0.9], [2.0, 0.5, 1.0]]), normalize=False)
    np.testing.assert_allclose(result.weights, [1.0, 0.0, 0.0], atol=1e-9)
    assert result.max_regret == pytest.approx(0.0, abs=1e-9)


def test_sampling_follows_the_mixture():
    result = min_max_regret(np.array([[1.0, 0.0], [0.0, 3.0]]), normalize=False)
    draws = result.sample(20000, rng=0)
    np.testing.assert_allclose(np.bincount(draws, minlength=2) / 20000, result.weights, atol=0.02)
    assert result.sample(rng=1) in (0, 1)


def test_bad_values():
    with pytest.raises(ValueError, match="matrix"):
        min_max_regret(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        min_max_regret(np.array([[1.0, np.nan]]))


def test_normalized_regret_ignores_each_types_scale_and_shift():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(3, 4))
    scale, shift = rng.uniform(0.01, 100.0, size=(3, 1)), rng.normal(scale=50.0, size=(3, 1))
    base = min_max_regret(values, normalize=True)
    moved = min_max_regret(values * scale + shift, normalize=True)
    np.testing.assert_allclose(moved.regret, base.regret, atol=1e-9)
    assert moved.max_regret == pytest.approx(base.max_regret, abs=1e-9)
    # without normalizing, a type whose values are 100x larger dominates the mixture
    raw = min_max_regret(np.array([[100.0, 0.0], [0.0, 1.0]]), normalize=False)
    even = min_max_regret(np.array([[100.0, 0.0], [0.0, 1.0]]), normalize=True)
    assert raw.weights[0] > 0.98
    np.testing.assert_allclose(even.weights, [0.5, 0.5], atol=1e-9)
    assert even.max_regret == pytest.approx(0.5)


def test_normalized_regret_with_an_indifferent_type():
    # type 1 values every policy the same: it constrains nothing, type 0 gets its best policy
    result = min_max_regret(np.array([[0.0, 2.0, 1.0], [5.0, 5.0, 5.0]]), normalize=True)
    np.testing.assert_allclose(result.weights, [0.0, 1.0, 0.0], atol=1e-9)
    assert result.max_regret == pytest.approx(0.0, abs=1e-9)


def test_normalized_is_the_default():
    values = np.array([[100.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(min_max_regret(values).weights, min_max_regret(values, normalize=True).weights)
    np.testing.assert_allclose(min_max_regret(values).weights, [0.5, 0.5], atol=1e-9)


def test_normalization_has_a_tolerance():
    # type 1's values differ only by round-off: it is indifferent, not a type that loves policy 0
    values = np.array([[0.0, 1.0], [5.0 + 1e-13, 5.0]])
    result = min_max_regret(values)
    np.testing.assert_allclose(result.weights, [0.0, 1.0], atol=1e-9)
    # without the tolerance, 1e-13 would be stretched to [0, 1] and force an even mixture
    stretched = min_max_regret(values, tol=0.0)
    np.testing.assert_allclose(stretched.weights, [0.5, 0.5], atol=1e-9)
    with pytest.raises(ValueError, match="tol"):
        min_max_regret(values, tol=-1.0)


def test_mmra_values_use_the_policy_tilt_not_sequence_length():
    import torch

    from pluralign.dpo.mmra import mmra_values

    # one ranking of 2 responses; the reference (and so every policy) likes response 0 (shorter) far more,
    # but policy 0 tilts towards response 0 and policy 1 towards response 1
    ref = torch.tensor([[-2.0, -30.0]])
    logps = torch.stack([ref + torch.tensor([[1.0, -1.0]]), ref + torch.tensor([[-1.0, 1.0]])])
    ratio = logps - ref  # [S, R, M]
    values = mmra_values(ratio, ratio, torch.tensor([2]))
    choice = torch.softmax(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), dim=-1)
    expected = choice.numpy() @ np.array([[1.0, -1.0], [-1.0, 1.0]]).T  # rewards centred: +-1
    np.testing.assert_allclose(values, expected.T, rtol=1e-12)
    assert values[0, 0] > values[0, 1] and values[1, 1] > values[1, 0]  # each type prefers its own policy
    # a softmax of the raw sequence log-probs would pick response 0 for both policies: identical columns
    raw = mmra_values(logps, ratio, torch.tensor([2]))
    np.testing.assert_allclose(raw[:, 0], raw[:, 1], atol=1e-9)
