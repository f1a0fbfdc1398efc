"""Few-shot fitting of new users: the model is left as it was, and both starting points (our prior + ridge,
the paper's random init without a ridge, PAL App. D.1) reach the optimum of their own objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluralign.estimator import PALA, PALB, PALEstimator
from pluralign.models.base import Batch
from pluralign.models.btl import BTLModel
from pluralign.models.mlp import MLPConfig
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import fit_user_weights, weights_to_logits, zero_shot_weights
from pluralign.training.losses import get_loss
from pluralign.training.trainer import predict_margins
from test_training import _tensors

EST = {"f_layers": 1, "g_layers": 1, "epochs": 5, "batch_size": 256, "patience": None}
EST |= {"lr_maps": 5e-4, "lr_prototypes": 5e-3, "lr_users": 5e-3}  # the paper's (App. D.2), fixed here


def _one_user(data, user: int = 0):
    batch, tables = _tensors(data.subset(data.user == user))
    return Batch(torch.zeros_like(batch.user), batch.context, batch.chosen, batch.rejected), tables


def _model(cls, n_users: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)  # models draw their parameters from a generator
    config = MLPConfig(n_layers=2, dropout=0.3)
    if cls is BTLModel:
        return BTLModel(n_users, 16, 0, config, generator)
    if cls is PALAModel:
        return PALAModel(n_users, 2, 16, 0, 8, f_config=config, generator=generator)
    return PALBModel(n_users, 2, 16, 0, 8, f_config=config, g_config=config, generator=generator)


def _grid_optimum(model, batch, tables, prior, ridge) -> float:
    """K = 2: the simplex is a segment, so a fine grid gives the optimum independently of any solver."""
    grid = torch.linspace(0, 1, 4001, dtype=torch.float64)
    return min(_objective(model, batch, tables, torch.stack([g, 1 - g])[None], prior, ridge) for g in grid)


def _objective(model, batch, tables, weights, prior, ridge) -> float:
    margins = predict_margins(model, batch, tables, weights_to_logits(weights))
    penalty = 0.5 * ridge * (weights[0] - prior).square().sum()
    return float(get_loss("logistic")(margins.double()).sum() + penalty)


# --- the model is not modified -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PALAModel, PALBModel, BTLModel])
@pytest.mark.parametrize("init", ["prior", "random"])
def test_fit_leaves_train_mode_parameters_and_flags_as_they_were(small, cls, init):
    model = _model(cls, small.train.n_users)
    model.train()
    # a submodule in its own mode (a frozen part kept in eval) must keep it too
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    frozen.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch, tables = _tensors(small.unseen.subset(small.unseen.user < 3))
    prior = zero_shot_weights(model).double()
    fit_user_weights(model, batch, tables, n_users=3, prior=prior, steps=20, init=init)
    assert model.training
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key  # bit for bit


def test_fit_leaves_the_global_rng_alone(small):
    model = _model(PALAModel, small.train.n_users)
    batch, tables = _one_user(small.unseen)
    prior = zero_shot_weights(model).double()
    before = torch.random.get_rng_state()
    for init in ("prior", "random"):
        fit_user_weights(model, batch, tables, n_users=1, prior=prior, steps=5, init=init, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)


# --- the paper's procedure: random init, no ridge ----------------------------------------------------
def test_random_init_is_softmax_of_standard_normal_logits_from_the_seed(small):
    """With no steps the answer is the start: softmax(z), z ~ N(0, I) from a generator seeded by ``seed``."""
    model = _model(PALAModel, small.train.n_users)
    batch, tables = _tensors(small.unseen.subset(small.unseen.user < 4))
    prior = zero_shot_weights(model).double()
    w = fit_user_weights(model, batch, tables, n_users=5, prior=prior, steps=0, init="random", seed=7)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(w[:4], torch.softmax(z.float(), -1).double()[:4], rtol=0, atol=0)
    # user 4 has no rows: it gets the prior whatever the start
    torch.testing.assert_close(w[4], prior, rtol=0, atol=0)
    again = fit_user_weights(model, batch, tables, n_users=5, prior=prior, steps=0, init="random", seed=7)
    other = fit_user_weights(model, batch, tables, n_users=5, prior=prior, steps=0, init="random", seed=8)
    assert torch.equal(w, again) and not torch.equal(w[:4], other[:4])


@pytest.mark.parametrize("cls", [PALAModel, PALBModel])
def test_random_init_without_ridge_reaches_the_unregularized_optimum(small, cls):
    model = _model(cls, small.train.n_users)
    batch, tables = _one_user(small.unseen, 1)
    prior = zero_shot_weights(model).double()
    w = fit_user_weights(
        model, batch, tables, n_users=1, prior=prior, ridge=0.0, steps=3000, lr=0.05, init="random", seed=2
    )
    best = _grid_optimum(model, batch, tables, prior, 0.0)
    assert _objective(model, batch, tables, w, prior, 0.0) <= best + 1e-4
    # ... which is not where prior + ridge goes (a prior far from that optimum makes the difference plain)
    prior = torch.tensor([0.95, 0.05], dtype=torch.float64)
    w_map = fit_user_weights(model, batch, tables, n_users=1, prior=prior, ridge=5.0, steps=3000, lr=0.05)
    best_map = _grid_optimum(model, batch, tables, prior, 5.0)
    assert _objective(model, batch, tables, w_map, prior, 5.0) <= best_map + 1e-4
    assert _objective(model, batch, tables, w_map, prior, 0.0) > best + 1e-3
    assert float((w - w_map).abs().max()) > 0.02


def test_unknown_init_is_refused(small):
    model = _model(PALAModel, small.train.n_users)
    batch, tables = _one_user(small.unseen)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        fit_user_weights(model, batch, tables, n_users=1, prior=torch.tensor([0.5, 0.5]), init="zeros")


# --- the estimator's adapt_method --------------------------------------------------------------------
@pytest.fixture(scope="module")
def estimators(small):
    return {
        cls: cls(n_prototypes=2, dim=8, seed=5, **EST).fit(small.train, small.val) for cls in (PALA, PALB)
    }


@pytest.mark.parametrize("cls", [PALA, PALB])
def test_adapt_method_paper_is_random_init_without_ridge(small, estimators, cls):
    est = estimators[cls]
    assert est.adapt_method == "map" and est.get_params()["adapt_method"] == "map"
    paper = est.copy().set_params(adapt_method="paper")
    frame = paper.fit_weights(small.unseen)
    np.testing.assert_array_equal(frame.to_numpy(), paper.fit_weights(small.unseen).to_numpy())
    weights = frame.filter(regex=r"^w\d+$").to_numpy()
    map_ridge0 = est.fit_weights(small.unseen, ridge=0.0).filter(regex=r"^w\d+$").to_numpy()
    # no ridge: the same optimum as our method with the ridge switched off (30 rows, K = 2: unique) ...
    np.testing.assert_allclose(weights, map_ridge0, atol=0.02)
    # ... whatever adapt_ridge says, while our method follows it toward the zero-shot weights
    strong = {"adapt_ridge": 100.0}
    again = paper.copy().set_params(**strong).fit_weights(small.unseen)
    np.testing.assert_array_equal(again.to_numpy(), frame.to_numpy())
    pulled = est.copy().set_params(**strong).fit_weights(small.unseen).filter(regex=r"^w\d+$").to_numpy()
    assert np.abs(weights - pulled).max() > 0.05
    # the random start comes from the estimator's seed
    start = paper.copy().set_params(adapt_steps=0)
    if cls is PALA:
        n = len(frame)
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        np.testing.assert_array_equal(
            start.fit_weights(small.unseen).filter(regex=r"^w\d+$").to_numpy(),
            torch.softmax(z.float(), -1).double().numpy(),
        )


def test_adapt_method_survives_save_and_load_and_is_checked(tmp_path, small, estimators):
    est = estimators[PALB].copy().set_params(adapt_method="paper")
    est.save(tmp_path / "m")
    loaded = PALEstimator.load(tmp_path / "m")
    assert loaded.adapt_method == "paper"
    np.testing.assert_array_equal(
        loaded.fit_weights(small.unseen).to_numpy(), est.fit_weights(small.unseen).to_numpy()
    )
    with pytest.raises(ValueError, match="unknown adapt_method 'bayes'"):
        est.copy().set_params(adapt_method="bayes").fit_weights(small.unseen)
