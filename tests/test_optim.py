"""The fit loop's optimizer: no weight decay on scales, biases and norms; lazy updates of the user table
(users absent from a step stay bit-identical), checked against plain AdamW as the reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from pluralign.datasets.synthetic import make_synthetic
from pluralign.models.base import Batch, Tables
from pluralign.models.btl import BTLModel
from pluralign.models.mlp import MLPConfig
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.budget import BASE_LR
from pluralign.training.config import Callback
from pluralign.training.optim import LazyRowsAdamW
from pluralign.training.trainer import TrainConfig, epoch_order, fit, make_optimizer

DECAY = {"wd_maps": 0.5, "wd_prototypes": 0.5, "wd_users": 0.5, "lr_maps": 0.1, "lr_prototypes": 0.1}


@pytest.mark.parametrize(
    "model",
    [PALBModel(5, 2, 4, 3, 6), PALAModel(5, 2, 4, 3, 6), BTLModel(5, 4, 3), PALBModel(5, 2, 4, 0, 6)],
    ids=["pal_b", "pal_a", "btl", "pal_b_no_context"],
)
def test_scales_biases_and_constants_are_not_decayed(model):
    """A zero gradient with weight decay configured: the undecayed parameters must not move at all."""
    optimizer = make_optimizer(model, TrainConfig(**DECAY))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    lr = {"user_logits": BASE_LR["lr_users"], "prototypes": 0.1}  # lr_users not set: the base rate
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:  # biases, PAL-B's log_scale, a context-free map's constant
            assert torch.equal(p, before[name]), name
        elif name == "user_logits":  # lazy: step() without rows touches every row
            torch.testing.assert_close(p, before[name] * (1 - lr[name] * 0.5), rtol=0, atol=1e-7)
        else:  # weight matrices (and PAL-A's prototype points) shrink by (1 - lr * wd)
            torch.testing.assert_close(p, before[name] * (1 - lr.get(name, 0.1) * 0.5), rtol=0, atol=1e-7)
            assert not torch.equal(p, before[name]), name
    if isinstance(model, PALBModel):
        assert torch.equal(model.log_scale, before["log_scale"])
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["maps_no_decay"]["weight_decay"] == 0.0 and groups["maps_no_decay"]["lr"] == 0.1


def test_encoder_layer_norms_and_biases_are_not_decayed():
    model = PALBModel(3, 2, 4, 4, 6)
    encoder = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    config = TrainConfig(encoder_lr=0.1, encoder_wd=0.5)
    optimizer = make_optimizer(model, config, encoder)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert (groups["encoder"]["lr"], groups["encoder"]["weight_decay"]) == (0.1, 0.5)
    assert (groups["encoder_no_decay"]["lr"], groups["encoder_no_decay"]["weight_decay"]) == (0.1, 0.0)
    before = [p.detach().clone() for p in encoder.parameters()]
    for p in encoder.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for (name, p), old in zip(encoder.named_parameters(), before, strict=True):
        if p.dim() < 2:  # the Linear's bias, the LayerNorm's weight and bias
            assert torch.equal(p, old), name
        else:
            torch.testing.assert_close(p, old * (1 - 0.1 * 0.5), rtol=0, atol=1e-7)
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters())) + len(list(encoder.parameters()))


def _adamw_on_rows(rows_per_step, grads, init, lr, wd):
    """The reference: each row alone under torch's AdamW, stepped only on the steps that touch it."""
    out = init.clone()
    for r in range(len(init)):
        row = nn.Parameter(init[r].clone())
        optimizer = torch.optim.AdamW([row], lr=lr, weight_decay=wd, foreach=False)
        for touched, grad in zip(rows_per_step, grads, strict=True):
            if r in touched.tolist():
                row.grad = grad[r].clone()
                optimizer.step()
        out[r] = row.detach()
    return out


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lazy_rows_match_adamw_on_the_steps_that_touch_each_row(wd):
    g = torch.Generator().manual_seed(0)
    init = torch.randn(6, 3, generator=g, dtype=torch.float64)
    rows_per_step = [
        torch.tensor([0, 1, 2]),
        torch.tensor([2, 3]),
        torch.tensor([0, 3, 5]),
        torch.tensor([1]),
    ]
    grads = [torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in rows_per_step]
    table = nn.Parameter(init.clone())
    optimizer = LazyRowsAdamW([{"params": [table], "lr": 0.05, "weight_decay": wd, "lazy_rows": True}])
    for rows, grad in zip(rows_per_step, grads, strict=True):
        table.grad = grad.clone()  # a dense gradient: the untouched rows' entries must be ignored
        optimizer.step(rows=rows)
    want = _adamw_on_rows(rows_per_step, grads, init, lr=0.05, wd=wd)
    torch.testing.assert_close(table.detach(), want, rtol=1e-12, atol=1e-14)
    assert torch.equal(table.detach()[4], init[4])  # never touched: never moved
    assert optimizer.state[table]["step"].tolist() == [2, 2, 2, 2, 0, 1]
    # without rows every row is touched: plain AdamW
    dense, reference = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    lazy = LazyRowsAdamW([{"params": [dense], "lr": 0.05, "weight_decay": wd, "lazy_rows": True}])
    plain = torch.optim.AdamW([reference], lr=0.05, weight_decay=wd)
    for grad in grads:
        dense.grad, reference.grad = grad.clone(), grad.clone()
        lazy.step()
        plain.step()
    torch.testing.assert_close(dense.detach(), reference.detach(), rtol=1e-12, atol=1e-14)


class _Snapshots(Callback):
    """A fit-loop callback keeping the user table after every step."""

    def __init__(self, model):
        self.model, self.tables = model, [model.user_logits.detach().clone()]

    def on_step_end(self, run):
        self.tables.append(self.model.user_logits.detach().clone())


@pytest.mark.parametrize("wd_users", [0.0, 0.05])
def test_users_absent_from_a_step_stay_bit_identical(wd_users):
    data = make_synthetic(model="pal_b", n_users=30, n_train=6, n_val=2, n_test=2, n_prototypes=3, seed=0)
    train = data.train
    batch = Batch(*(torch.from_numpy(a) for a in (train.user, train.context, train.chosen, train.rejected)))
    tables = Tables(torch.from_numpy(train.item_vectors), torch.from_numpy(train.context_vectors))
    torch.manual_seed(0)
    model = PALBModel(train.n_users, 3, tables.items.shape[1], tables.contexts.shape[1], 8, MLPConfig(1))
    config = TrainConfig(epochs=3, batch_size=16, lr_users=0.05, wd_users=wd_users, patience=None, seed=4)
    config.progress = False
    snapshots = _Snapshots(model)
    fit(model, (batch, tables), None, config, [snapshots])
    # the loop's batches, regenerated from its seed
    generator = torch.Generator().manual_seed(config.seed)
    steps = [
        rows
        for _ in range(config.epochs)
        for rows in epoch_order(batch.context, config.batch_size, None, generator).split(config.batch_size)
    ]
    assert len(steps) == len(snapshots.tables) - 1
    absent_after_present = 0
    seen = torch.zeros(model.n_users, dtype=torch.bool)
    for t, rows in enumerate(steps):
        present = torch.zeros(model.n_users, dtype=torch.bool)
        present[batch.user[rows]] = True
        before, after = snapshots.tables[t], snapshots.tables[t + 1]
        assert torch.equal(after[~present], before[~present]), f"step {t}: absent users moved"
        assert (after[present] != before[present]).any(1).all(), f"step {t}: a present user did not move"
        absent_after_present += int((seen & ~present).sum())
        seen |= present
    assert absent_after_present > 50  # many users sat out steps while carrying momentum


def test_trainer_does_not_import_resume_and_needs_a_checkpoint_callback(tmp_path):
    code = "import sys, pluralign.training.trainer; print('pluralign.training.resume' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    model = PALBModel(2, 2, 3, 0, 4)
    batch = Batch(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    tables = Tables(torch.randn(2, 3), torch.zeros(1, 0))
    config = TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every=1, progress=False)
    with pytest.raises(ValueError, match="no callback checkpoints"):
        fit(model, (batch, tables), None, config)
