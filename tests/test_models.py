"""Model math against direct NumPy implementations of the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluralign.models.base import Batch, Tables
from pluralign.models.btl import BTLModel
from pluralign.models.mlp import MLP, MLPConfig
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel


def _random_problem(seed: int = 0, n_users: int = 5, n_items: int = 7, n_contexts: int = 3, rows: int = 40):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, 6)).astype(np.float32)
    contexts = rng.normal(size=(n_contexts, 4)).astype(np.float32)
    user = rng.integers(0, n_users, rows)
    context = rng.integers(0, n_contexts, rows)
    chosen = rng.integers(0, n_items, rows)
    rejected = (chosen + rng.integers(1, n_items, rows)) % n_items
    batch = Batch(*(torch.from_numpy(a) for a in (user, context, chosen, rejected)))
    return batch, Tables(torch.from_numpy(items), torch.from_numpy(contexts))


def _linear(layer: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def _np_mlp2(mlp: MLP, x: np.ndarray) -> np.ndarray:
    """Independent 2-layer MLP with exact (erf) GELU."""
    from scipy.special import erf

    (w1, b1), (w2, b2) = _linear(mlp.net[0]), _linear(mlp.net[-1])
    h = x @ w1.T + b1
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return h @ w2.T + b2


def test_pal_a_margin_matches_numpy():
    torch.manual_seed(0)
    batch, tables = _random_problem()
    model = PALAModel(5, 3, item_dim=6, context_dim=4, dim=8).double()
    tables = Tables(tables.items.double(), tables.contexts.double())
    got = model.margins(batch, tables).detach().numpy()

    w = torch.softmax(model.user_logits, -1).detach().numpy()
    protos = model.prototypes.detach().numpy()
    x, c = tables.items.numpy(), tables.contexts.numpy()
    u, ctx, ch, rj = (t.numpy() for t in batch)
    ideal = _np_mlp2(model.f, w[u] @ protos)
    r_ch = -((_np_mlp2(model.f, np.hstack([x[ch], c[ctx]])) - ideal) ** 2).sum(1)
    r_rj = -((_np_mlp2(model.f, np.hstack([x[rj], c[ctx]])) - ideal) ** 2).sum(1)
    np.testing.assert_allclose(got, r_ch - r_rj, rtol=1e-10, atol=1e-10)


def test_pal_b_margin_matches_numpy():
    torch.manual_seed(1)
    batch, tables = _random_problem(seed=1)
    model = PALBModel(5, 3, item_dim=6, context_dim=4, dim=8).double()
    tables = Tables(tables.items.double(), tables.contexts.double())
    got = model.margins(batch, tables).detach().numpy()

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    w = torch.softmax(model.user_logits, -1).detach().numpy()
    x, c = tables.items.numpy(), tables.contexts.numpy()
    u, ctx, ch, rj = (t.numpy() for t in batch)
    g = np.stack([unit(_np_mlp2(gk, c[ctx])) for gk in model.g], axis=1)  # [B, K, d]
    z = np.einsum("bk,bkd->bd", w[u], g)
    s = float(model.scale.detach())
    expected = s * ((unit(_np_mlp2(model.f, x[ch])) - unit(_np_mlp2(model.f, x[rj]))) * z).sum(1)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # The per-prototype margins are linear in w: the user's margin is their dot product with w.
    per_proto = model.prototype_margins(batch, tables).detach().numpy()
    np.testing.assert_allclose((per_proto * w[u]).sum(1), expected, rtol=1e-10, atol=1e-10)


def test_btl_margin_is_shared_reward_difference():
    torch.manual_seed(2)
    batch, tables = _random_problem(seed=2)
    model = BTLModel(5, item_dim=6, context_dim=4).double()
    tables = Tables(tables.items.double(), tables.contexts.double())
    x, c = tables.items.numpy(), tables.contexts.numpy()
    _, ctx, ch, rj = (t.numpy() for t in batch)
    expected = (
        _np_mlp2(model.f, np.hstack([x[ch], c[ctx]])) - _np_mlp2(model.f, np.hstack([x[rj], c[ctx]]))
    )[:, 0]
    np.testing.assert_allclose(model.margins(batch, tables).detach().numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("cls", [PALAModel, PALBModel])
def test_rewards_agree_with_margins(cls):
    torch.manual_seed(3)
    batch, tables = _random_problem(seed=3)
    model = cls(5, 3, item_dim=6, context_dim=4, dim=8).double()
    tables = Tables(tables.items.double(), tables.contexts.double())
    w = model.weights()[batch.user]
    r_ch = model.rewards(w, tables.items[batch.chosen], tables.contexts[batch.context])
    r_rj = model.rewards(w, tables.items[batch.rejected], tables.contexts[batch.context])
    torch.testing.assert_close(r_ch - r_rj, model.margins(batch, tables))


def test_gradients_flow_to_every_parameter_group():
    torch.manual_seed(4)
    batch, tables = _random_problem(seed=4)
    for model in (PALAModel(5, 3, 6, 4, 8), PALBModel(5, 3, 6, 4, 8)):
        model.margins(batch, tables).sum().backward()
        for name, params in model.param_groups().items():
            assert params, name
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_mlp_variants():
    x = torch.randn(10, 5)
    assert isinstance(MLP(5, 3, MLPConfig(n_layers=1, bias=False)).net, torch.nn.Linear)
    deep = MLP(5, 3, MLPConfig(n_layers=4, hidden=7, dropout=0.1, residual=True))
    assert deep(x).shape == (10, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in deep.modules()) == 4
    constant = MLP(0, 3)
    assert constant(torch.zeros(4, 0)).shape == (4, 3)
    with pytest.raises(ValueError, match="n_layers"):
        MLPConfig(n_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        MLPConfig(dropout=1.0)


def test_no_context_features():
    """PAL-A and PAL-B work when contexts carry no features (Dc = 0), as in the synthetic data."""
    torch.manual_seed(5)
    batch, tables = _random_problem(seed=5, n_contexts=1)
    tables = Tables(tables.items, torch.zeros(1, 0))
    batch = Batch(batch.user, torch.zeros_like(batch.context), batch.chosen, batch.rejected)
    for model in (PALAModel(5, 2, 6, 0, 4), PALBModel(5, 2, 6, 0, 4), BTLModel(5, 6, 0)):
        assert torch.isfinite(model.margins(batch, tables)).all()


def test_grow_users_keeps_existing_rows():
    model = PALBModel(3, 2, 6, 4, 8)
    before = model.user_logits.detach().clone()
    model.grow_users(2, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert model.n_users == 5
    torch.testing.assert_close(model.user_logits[:3].detach(), before)
    btl = BTLModel(3, 6, 4)
    btl.grow_users(1)
    assert not btl.user_logits.requires_grad
