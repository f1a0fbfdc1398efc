"""Trainer mechanics and few-shot adaptation against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pluralign.datasets.synthetic import make_synthetic
from pluralign.models.base import Batch, Tables
from pluralign.models.mlp import MLPConfig
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import fit_user_weights, weights_to_logits, zero_shot_weights
from pluralign.training.losses import accuracy, get_loss, hinge_loss, logistic_loss
from pluralign.training.trainer import TrainConfig, fit, make_optimizer, predict_margins


def _tensors(data):
    batch = Batch(*(torch.from_numpy(a) for a in (data.user, data.context, data.chosen, data.rejected)))
    return batch, Tables(torch.from_numpy(data.item_vectors), torch.from_numpy(data.context_vectors))


def test_losses_match_definitions():
    m = torch.tensor([-50.0, -1.0, 0.0, 0.5, 2.0, 50.0])
    torch.testing.assert_close(
        logistic_loss(m), -torch.log(torch.sigmoid(m.double())).float(), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(hinge_loss(m), torch.clamp(1 - m, min=0))
    assert float(accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0]))) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("squared")


def test_optimizer_groups_have_their_own_learning_rates():
    model = PALBModel(3, 2, 4, 4, 8)
    config = TrainConfig(lr_maps=1e-4, wd_maps=0.1, lr_prototypes=2e-3, lr_users=3e-2)
    groups = {g["name"]: g for g in make_optimizer(model, config).param_groups}
    assert (groups["maps"]["lr"], groups["maps"]["weight_decay"]) == (1e-4, 0.1)
    assert groups["prototypes"]["lr"] == 2e-3 and groups["users"]["lr"] == 3e-2
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters()))


def test_metrics_file_and_early_stopping_restore_best(tmp_path, small):
    torch.manual_seed(0)
    model = PALAModel(small.train.n_users, 2, 16, 0, 16, MLPConfig(n_layers=1, bias=False))
    path = tmp_path / "m.jsonl"
    # a learning rate this large oscillates, so validation accuracy stops improving and training stops early
    config = TrainConfig(
        epochs=200,
        batch_size=64,
        lr_maps=0.5,
        lr_prototypes=0.5,
        lr_users=0.5,
        patience=3,
        metrics_path=str(path),
        progress=False,
    )
    val = _tensors(small.val)
    history = fit(model, _tensors(small.train), val, config)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(history.epochs) and lines[0]["epoch"] == 1
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_loss", "seconds"} <= set(lines[0])
    assert history.stopped_early and len(history.epochs) < 200
    assert history.best_val_accuracy == max(line["val_accuracy"] for line in lines)
    # the restored weights are those of the best epoch
    assert float(accuracy(predict_margins(model, *val))) == pytest.approx(history.best_val_accuracy)


def test_bad_train_config():
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr_users": 0.0}, {"patience": 0}, {"loss": "nope"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def _objective(model, batch, tables, weights, prior, ridge, loss):
    margins = predict_margins(model, batch, tables, weights_to_logits(weights))
    return float(get_loss(loss)(margins.double()).sum() + 0.5 * ridge * (weights[0] - prior).square().sum())


@pytest.mark.parametrize("cls", [PALAModel, PALBModel])
def test_few_shot_fit_reaches_the_brute_force_optimum(cls, small):
    """K = 2: the simplex is a segment, so a fine grid gives the optimum independently."""
    torch.manual_seed(1)
    model = cls(small.train.n_users, 2, 16, 0, 8)
    rows = small.unseen.subset(small.unseen.user == 0)
    batch, tables = _tensors(rows)
    batch = Batch(torch.zeros_like(batch.user), batch.context, batch.chosen, batch.rejected)
    prior = zero_shot_weights(model).double()
    w = fit_user_weights(model, batch, tables, n_users=1, prior=prior, ridge=0.5, steps=2000, lr=0.05)
    assert w.shape == (1, 2) and float(w.sum()) == pytest.approx(1.0)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    best = min(
        _objective(model, batch, tables, torch.stack([g, 1 - g])[None], prior, 0.5, "logistic") for g in grid
    )
    assert _objective(model, batch, tables, w, prior, 0.5, "logistic") <= best + 1e-4


def test_users_without_rows_get_the_prior(small):
    model = PALBModel(small.train.n_users, 3, 16, 0, 8)
    batch, tables = _tensors(small.unseen.subset(small.unseen.user < 2))
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    w = fit_user_weights(model, batch, tables, n_users=4, prior=prior)
    torch.testing.assert_close(w[2:], prior.expand(2, 3))
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0)
    with pytest.raises(ValueError, match="ridge"):
        fit_user_weights(model, batch, tables, n_users=4, prior=prior, ridge=-1.0)


def test_epoch_order_plain_and_grouped_by_context():
    from pluralign.training.trainer import epoch_order

    context = torch.randint(0, 50, (5000,), generator=torch.Generator().manual_seed(0))
    plain = epoch_order(context, 256, None, torch.Generator().manual_seed(1))
    assert torch.equal(plain.sort().values, torch.arange(5000))
    grouped = epoch_order(context, 256, 8, torch.Generator().manual_seed(1))
    assert torch.equal(grouped.sort().values, torch.arange(5000))  # still every row exactly once
    again = epoch_order(context, 256, 8, torch.Generator().manual_seed(1))
    assert torch.equal(grouped, again)
    # a batch touches about B / r contexts instead of nearly all 50
    touched = [len(torch.unique(context[b])) for b in grouped.split(256)]
    touched_plain = [len(torch.unique(context[b])) for b in plain.split(256)]
    assert np.mean(touched) < 0.8 * np.mean(touched_plain)
    assert np.mean(touched) <= 256 / 8 + 2 and max(touched) <= 2 * 256 // 8  # short last runs add a few


def test_grouped_batches_still_learn():
    data = make_synthetic(
        model="pal_b",
        setting="partition",
        dim=8,
        n_prototypes=2,
        n_users=40,
        n_train=60,
        n_test=30,
        n_contexts=40,
        seed=2,
    )
    results = {}
    for r in (None, 4):
        torch.manual_seed(0)
        model = PALBModel(data.train.n_users, 2, 8, 8, 8, MLPConfig(n_layers=1), MLPConfig(n_layers=1))
        config = TrainConfig(
            epochs=40,
            batch_size=128,
            lr_maps=1e-2,
            lr_prototypes=1e-2,
            lr_users=5e-2,
            patience=None,
            progress=False,
            rows_per_context=r,
        )
        fit(model, _tensors(data.train), None, config)
        results[r] = float(accuracy(predict_margins(model, *_tensors(data.test))))
    assert results[4] > 0.85 and abs(results[4] - results[None]) < 0.05, results
