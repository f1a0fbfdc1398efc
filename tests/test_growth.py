"""Growing prototypes: detection on a planted problem, exactness for existing users, gains, checkpoints,
the CLI, and bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pluralign.checkpoint import config_digest
from pluralign.cli import app
from pluralign.data.readers import write_preferences
from pluralign.datasets.synthetic import make_synthetic
from pluralign.encoders.precomputed import save_vectors
from pluralign.errors import DataError, PluralignError
from pluralign.estimator import BTL, PALA, PALB, PALEstimator
from pluralign.estimator.growth import detect
from pluralign.models.base import Batch, Tables
from pluralign.models.grown import GrownPALAModel, GrownPALBModel, block_weights
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import MIN_LOG_WEIGHT
from pluralign.training.growth import NothingToGrow, add_prototypes


@pytest.fixture(scope="module")
def planted():
    """PAL-B partition data with 3 true prototypes; the model is trained on users of groups 0 and 1 only,
    so new users of group 2 lie outside the hull of what it learned."""
    data = make_synthetic(
        model="pal_b",
        setting="partition",
        dim=8,
        n_prototypes=3,
        n_users=60,
        n_train=100,
        n_test=40,
        n_unseen_users=30,
        n_unseen_per_user=60,
        n_contexts=50,
        seed=1,
    )
    group = data.true_weights.argmax(1)
    unseen_group = data.unseen_weights.argmax(1)
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
    ).fit(data.train.subset(group[data.train.user] < 2))
    return {
        "data": data,
        "est": est,
        "seen_test": data.test.subset(group[data.test.user] < 2),
        "hidden": set(data.unseen.user_ids[unseen_group == 2].astype(str)),
        "unseen_group": unseen_group,
    }


@pytest.fixture(scope="module")
def grown(planted):
    original = planted["est"].copy()
    est = original.grow(planted["data"].unseen, 1, reference=planted["seen_test"])
    # grow returns a new estimator and leaves the one it grew from as it was
    assert original.n_prototypes == 2 and len(original.users_) == len(planted["est"].users_)
    return est, est.grow_report_


def test_detection_flags_exactly_the_users_of_the_hidden_prototype(planted):
    flagged, population = detect(planted["est"], planted["data"].unseen, planted["seen_test"])
    assert set(flagged.index[flagged["flagged"]]) == planted["hidden"]
    assert flagged["assessed"].all() and population["accuracy"] > 0.9
    hidden = flagged.index.isin(planted["hidden"])
    assert flagged.loc[hidden, "z"].max() < -3 < flagged.loc[~hidden, "z"].min()


def test_grow_leaves_existing_users_bit_for_bit(planted, grown):
    old, (est, report) = planted["est"], grown
    seen = planted["seen_test"]
    assert isinstance(est.model_, GrownPALBModel) and est.model_.prototype_blocks == (2, 1)
    assert np.array_equal(old.margins(seen), est.margins(seen))
    assert (
        report.reference_check["margins_identical"] and report.reference_check["max_abs_margin_change"] == 0
    )
    # users the model does not know get the zero-shot weights, unchanged as well
    strangers = np.array([f"stranger-{u}" for u in seen.user_ids], dtype=object)
    unknown = dataclasses.replace(seen, user_ids=strangers)
    assert np.array_equal(old.margins(unknown), est.margins(unknown))
    items = torch.from_numpy(seen.item_vectors[:2])
    contexts = torch.from_numpy(seen.context_vectors[:2])
    with torch.no_grad():
        for row in (0, 7, len(old.users_) - 1):
            w_old = old.model_.weights(old.model_.user_logits[row : row + 1])
            w_new = est.model_.weights(est.model_.user_logits[row : row + 1])
            assert torch.equal(w_new[:, :2], w_old) and (w_new[:, 2] == 0).all()
            assert torch.equal(
                old.model_.rewards(w_old, items, contexts), est.model_.rewards(w_new, items, contexts)
            )
    # every old parameter is untouched
    new_state = est.model_.state_dict()
    for name, value in old.model_.state_dict().items():
        if name != "user_logits":
            assert torch.equal(new_state[name], value), name
    assert torch.equal(new_state["user_logits"][: old.model_.n_users, :2], old.model_.user_logits)


def test_flagged_users_get_all_prototypes_and_improve(planted, grown):
    est, report = grown
    assert set(report.flagged) == planted["hidden"]
    assert report.n_prototypes_after == 3 and est.n_prototypes == 3
    assert report.heldout_after > report.heldout_before + 0.25
    weights = est.user_weights(sorted(planted["hidden"]))
    assert (weights["w2"] > 0.5).all()
    # on the hidden group's own test rows, against few-shot with the old prototypes
    data = planted["data"]
    test = data.unseen_test.subset(planted["unseen_group"][data.unseen_test.user] == 2)
    before = planted["est"].copy()
    before.adapt(data.unseen)
    assert est.score(test) > before.score(test) + 0.2
    assert len(est.users_) == len(planted["est"].users_) + data.unseen.n_users


def test_grown_checkpoint_round_trip(tmp_path, planted, grown):
    est, _ = grown
    est.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["prototype_blocks"] == [2, 1] and config["params"]["n_prototypes"] == 3
    loaded = PALEstimator.load(tmp_path / "m")
    assert isinstance(loaded.model_, GrownPALBModel) and loaded.model_.prototype_blocks == (2, 1)
    both = planted["data"].unseen_test
    assert np.array_equal(loaded.margins(both), est.margins(both))
    assert np.array_equal(loaded.margins(planted["seen_test"]), planted["est"].margins(planted["seen_test"]))
    # a blocks entry that does not match the tensors is refused
    config["prototype_blocks"] = [2, 2]
    config["config_sha256"] = config_digest(config)  # re-sealed: reach the blocks check, not the checksum
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PluralignError, match="prototype blocks"):
        PALEstimator.load(tmp_path / "m")


@pytest.mark.parametrize("cls", [PALBModel, PALAModel])
def test_blockwise_is_exact_where_padding_is_not(cls):
    """Against the trained K-prototype model itself: K = 7 plus 5 new, where a zero-padded softmax and sum
    over 12 columns already differ in the last bit; two successive grows."""
    torch.manual_seed(0)
    n_users, k = 50, 7
    if cls is PALBModel:
        model = PALBModel(n_users, k, item_dim=6, context_dim=5, dim=4)
    else:
        model = PALAModel(n_users, k, item_dim=6, context_dim=5, dim=4)
    with torch.no_grad():
        model.user_logits.normal_(0, 3)
    tables = Tables(torch.randn(40, 6), torch.randn(30, 5))
    gen = torch.Generator().manual_seed(1)
    batch = Batch(*(torch.randint(0, n, (4000,), generator=gen) for n in (n_users, 30, 40, 40)))
    once = add_prototypes(model, 5, seed=3)
    twice = add_prototypes(once, 2, seed=4)
    assert isinstance(twice, GrownPALBModel | GrownPALAModel) and twice.prototype_blocks == (7, 5, 2)
    with torch.no_grad():
        expected = model.margins(batch, tables)
        assert torch.equal(once.margins(batch, tables), expected)
        assert torch.equal(twice.margins(batch, tables), expected)
        weights = model.weights()
        assert torch.equal(twice.weights()[:, :k], weights) and (twice.weights()[:, k:] == 0).all()
        rewards = twice.rewards(twice.weights()[:30], tables.items[:30], tables.contexts)
        assert torch.equal(rewards, model.rewards(weights[:30], tables.items[:30], tables.contexts))
        # a user with finite logits everywhere gets softmax weights (up to rounding)
        logits = torch.randn(3, k + 7)
        assert torch.allclose(twice.weights(logits), torch.softmax(logits, -1), atol=1e-6)


def test_block_weights_edge_cases():
    logits = torch.tensor(
        [[0.3, -1.0, MIN_LOG_WEIGHT, MIN_LOG_WEIGHT], [MIN_LOG_WEIGHT] * 4, [1.0, 2.0, 3.0, 4.0]]
    )
    parts = block_weights(logits, (2, 2))
    w = torch.cat(parts, -1)
    assert torch.equal(w[0, :2], torch.softmax(logits[0, :2], -1)) and (w[0, 2:] == 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(3)) and torch.isfinite(w).all()
    assert torch.allclose(w[2], torch.softmax(logits[2], -1))
    # gradients stay finite through a switched-off block
    x = logits.clone().requires_grad_(True)
    torch.cat(block_weights(x, (2, 2)), -1)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pal_a_grows_on_named_users(planted):
    data = make_synthetic(
        setting="partition",
        dim=6,
        n_prototypes=3,
        n_users=30,
        n_train=60,
        n_test=20,
        n_unseen_users=12,
        n_unseen_per_user=40,
        seed=2,
    )
    group = data.true_weights.argmax(1)
    est = PALA(
        n_prototypes=2,
        dim=6,
        f_layers=1,
        bias=False,
        epochs=40,
        batch_size=256,
        lr_maps=5e-3,
        lr_prototypes=5e-2,
        lr_users=5e-2,
        patience=None,
    ).fit(data.train.subset(group[data.train.user] < 2))
    seen = data.test.subset(group[data.test.user] < 2)
    before = est.margins(seen)
    hidden = list(data.unseen.user_ids[data.unseen_weights.argmax(1) == 2].astype(str))
    est = est.grow(data.unseen, 2, users=hidden, epochs=30)
    report = est.grow_report_
    assert isinstance(est.model_, GrownPALAModel) and est.n_prototypes == 4
    assert set(report.flagged) == set(hidden)
    assert report.population is None
    assert np.array_equal(est.margins(seen), before)
    assert report.heldout_after >= report.heldout_before
    # users adapted after growing can reach the new prototypes (the grown prior is 0 there): the hidden
    # group's answers, as if from new users, put most of their weight on prototypes 2 and 3
    again = data.unseen.subset(np.isin(data.unseen.user_ids[data.unseen.user].astype(str), hidden))
    again = dataclasses.replace(
        again, user_ids=np.asarray([f"again-{u}" for u in again.user_ids], dtype=object)
    )
    weights = est.fit_weights(again)
    assert (weights["w2"] + weights["w3"]).mean() > 0.5


def test_bad_input(planted, tmp_path):
    est, data = planted["est"].copy(), planted["data"]
    group = planted["unseen_group"]
    explained = data.unseen.subset(group[data.unseen.user] < 2)
    with pytest.raises(PluralignError, match="n_new must be an integer >= 1"):
        est.grow(data.unseen, 0, reference=planted["seen_test"])
    with pytest.raises(NothingToGrow, match="nothing to grow"):
        est.grow(explained, 1, reference=planted["seen_test"])
    with pytest.raises(DataError, match=r"unknown user.*nobody"):
        est.grow(data.unseen, 1, users=["nobody"])
    with pytest.raises(DataError, match="already in the model"):
        est.grow(planted["seen_test"], 1, reference=planted["seen_test"])
    with pytest.raises(PluralignError, match="reference"):
        est.grow(data.unseen, 1)
    # failures leave the estimator as it was
    assert est.n_prototypes == 2 and len(est.users_) == len(planted["est"].users_)
    btl = BTL(epochs=1, f_layers=1).fit(data.train.subset(np.arange(200)))
    with pytest.raises(PluralignError, match="no prototypes to grow"):
        btl.grow(data.unseen, 1, users=["unseen-0"])


def test_cli_grow(planted, tmp_path):
    data = planted["data"]
    keys = list(data.train.items) + list(data.train.contexts)
    vectors = np.concatenate([data.train.item_vectors, data.train.context_vectors])
    npz = save_vectors(tmp_path / "vectors.npz", np.asarray(keys, dtype=str), vectors)
    write_preferences(data.unseen, tmp_path / "new.jsonl")
    write_preferences(planted["seen_test"], tmp_path / "seen.jsonl")
    est = planted["est"].copy()
    est.set_params(encoder=str(npz))
    est.save(tmp_path / "run" / "model")
    runner = CliRunner()
    args = ["grow", tmp_path / "run", tmp_path / "new.jsonl", "--out", tmp_path / "grown"]
    result = runner.invoke(app, [str(a) for a in [*args, "--reference", tmp_path / "seen.jsonl"]])
    assert result.exit_code == 0, result.output
    assert (
        f"{len(planted['hidden'])} of 30 new users flagged" in result.output and "K 2 -> 3" in result.output
    )
    assert "seen users" in result.output and "identical: True" in " ".join(result.output.split())
    loaded = PALEstimator.load(tmp_path / "grown" / "model")
    assert loaded.n_prototypes == 3 and set(planted["hidden"]) <= set(loaded.users_)
    # no reference and no named users: a one-line error, exit code 2, nothing written
    result = runner.invoke(app, [str(a) for a in [*args[:-1], tmp_path / "other"]])
    assert result.exit_code == 2 and "reference" in result.output and not (tmp_path / "other").exists()
    result = runner.invoke(app, [str(a) for a in [*args, "--n-new", 0, "--users", "x"]])
    assert result.exit_code == 2 and "n_new" in result.output


@pytest.mark.slow
def test_grow_benchmark_at_toy_size(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_grow", Path(__file__).resolve().parents[1] / "benchmarks" / "grow.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--k-star", "2", "--users", "12", "--unseen-users", "4", "--queries", "120", "--steps", "10"]
    argv += ["--repeats", "1", "--synthetic-epochs", "5", "--synthetic-grow-epochs", "5"]
    assert module.main([*argv, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["k_after"] for r in results] == [2, 3]
    assert all(r["old_groups_margins_identical"] and r["old_groups_drop_points"] == 0 for r in results)
    assert (tmp_path / "grow.png").stat().st_size > 0


def test_default_grow_epochs_give_at_least_one_training_epoch_of_steps(planted, tmp_path):
    from pluralign.estimator.growth import grow_epochs as _grow_epochs

    est = planted["est"]
    n_train = int((planted["data"].true_weights.argmax(1)[planted["data"].train.user] < 2).sum())
    assert est.history_.steps_per_epoch == -(-n_train // 256)  # batch_size 256
    loaded = PALEstimator.load(est.save(tmp_path / "model"))
    assert loaded.history_.steps_per_epoch == est.history_.steps_per_epoch
    # few flagged rows (one step an epoch): as many epochs as the training had steps in one epoch
    assert _grow_epochs(est, 100, 256) == max(est.epochs, est.history_.steps_per_epoch)
    assert _grow_epochs(est, 10 * n_train, 256) == est.epochs  # more rows than training: the model's epochs
    loaded.history_.steps_per_epoch = None  # a checkpoint from before the field
    assert _grow_epochs(loaded, 100, 256) == est.epochs
