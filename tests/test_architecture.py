"""The architecture's contracts: one hyperparameter table for Python and the CLI, the scikit-learn API,
fit's state handling, no reseeded process RNG, and the residual maps (issue 13)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch
import typer.main
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.cli.train import SELECT_K_EXCLUDED
from pluralign.datasets.synthetic import make_synthetic, write_synthetic
from pluralign.errors import DataError
from pluralign.estimator import BTL, PALA, PALB, PALBLarge
from pluralign.estimator.params import LARGE_EXTRA, LARGE_PARAMS, TINY_PARAMS
from pluralign.models.mlp import MLP, MLPConfig

FAST = {"dim": 8, "epochs": 3, "batch_size": 256, "patience": None}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    data = make_synthetic(
        model="pal_b", dim=8, n_prototypes=2, n_users=12, n_train=30, n_test=10, n_unseen_users=4, seed=0
    )
    write_synthetic(data, out)
    frame = pd.read_json(out / "train.jsonl", lines=True)
    return {"dir": out, "data": data, "frame": frame, "encoder": str(out / "vectors.npz")}


def _options(command_name: str) -> dict[str, object]:
    command = typer.main.get_command(app).commands[command_name]
    return {p.name: p for p in command.params}


# --- one source of hyperparameters ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PALA, PALB, BTL, PALBLarge])
def test_python_signature_is_the_table(cls):
    table = {p.name: p.default for p in cls.hyperparameters}
    signature = inspect.signature(cls)
    assert {n: p.default for n, p in signature.parameters.items()} == table
    assert cls().get_params() == table  # scikit-learn sees the same names and defaults


def test_every_hyperparameter_is_a_cli_option_with_the_same_name_and_default():
    train, select_k = _options("train"), _options("select-k")
    for param in (*TINY_PARAMS, *LARGE_EXTRA):
        if not param.cli:  # set by the command from the run directory (metrics, checkpoints, progress)
            assert param.name not in train
            continue
        option = train[param.name]
        assert param.flag in option.opts, (param.name, option.opts)
        shown = option.default
        expected = (
            str(param.default) if isinstance(shown, str) and param.default is not None else param.default
        )
        assert shown == expected, (param.name, shown, param.default)
        assert option.help == param.help
        if param.name not in SELECT_K_EXCLUDED and param in TINY_PARAMS:
            assert param.flag in select_k[param.name].opts
    # the settings the old CLI lacked, and the ones the estimator could not set
    for name in ("residual", "wd_users", "adapt_ridge", "max_grad_norm", "wd_prototypes"):
        assert name in train and name in inspect.signature(PALB).parameters


def test_cli_options_reach_the_estimator_and_unset_ones_keep_its_defaults(synth, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(synth["dir"] / "train.jsonl"), "--encoder", synth["encoder"], "--out", str(run)]
    args += ["--k", "2", "--epochs", "2", "--wd-users", "0.01", "--max-grad-norm", "0.5"]
    args += ["--adapt-ridge", "2.5", "--patience", "none", "--no-bias", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "model" / "config.json").read_text())["params"]
    assert saved["wd_users"] == 0.01 and saved["max_grad_norm"] == 0.5 and saved["adapt_ridge"] == 2.5
    assert saved["patience"] is None and saved["bias"] is False and saved["n_prototypes"] == 2
    assert saved["lr_maps"] == PALB().lr_maps and saved["wd_maps"] == PALB().wd_maps  # not given: defaults
    bad = CliRunner().invoke(app, [*args[:6], "--out", str(tmp_path / "x"), "--encoder-lr", "1e-4"])
    assert bad.exit_code == 2 and "--encoder-trainable" in bad.output
    bad = CliRunner().invoke(app, [*args[:6], "--out", str(tmp_path / "y"), "--patience", "soon"])
    assert bad.exit_code == 2 and "'none'" in bad.output


def test_large_defaults_come_from_the_same_table():
    large = PALBLarge()
    for param in LARGE_PARAMS:
        assert getattr(large, param.name) == param.default
    assert large.epochs == 1 and PALB().epochs is None  # App. D.3's epochs; Tiny: the step budget


# --- scikit-learn --------------------------------------------------------------------------------------
def test_clone_get_params_and_set_params():
    est = PALB(2, dim=4, seed=3, lr_users=0.1)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert est.get_params(deep=True)["seed"] == 3
    assert repr(est) == "PALB(dim=4, lr_users=0.1, n_prototypes=2, seed=3)"
    with pytest.raises(ValueError, match="no parameter"):
        est.set_params(n_protoypes=1)
    with pytest.raises(TypeError):
        PALB(n_protoypes=2)


def test_grid_search_and_pipeline_run(synth):
    frame = synth["frame"]
    base = PALB(encoder=synth["encoder"], **FAST)
    search = GridSearchCV(base, {"n_prototypes": [1, 2]}, cv=KFold(2, shuffle=True, random_state=0))
    search.fit(frame)
    assert search.best_params_["n_prototypes"] in (1, 2)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert 0.0 <= search.score(frame) <= 1.0
    # a preprocessing step, then the estimator: Pipeline.fit/score pass the rows through
    drop_first_user = FunctionTransformer(lambda x: x[x["user_id"] != x["user_id"].iloc[0]])
    pipe = Pipeline([("filter", drop_first_user), ("pal", PALB(2, encoder=synth["encoder"], **FAST))])
    pipe.fit(frame)
    assert len(pipe.named_steps["pal"].users_) == frame["user_id"].nunique() - 1
    assert pipe.score(frame) == pytest.approx(pipe.named_steps["pal"].score(drop_first_user.transform(frame)))


# --- fit state, refit, RNG -----------------------------------------------------------------------------
def test_refit_with_prompts_after_a_fit_without_them(synth):
    data = synth["data"]
    frame = synth["frame"].copy()
    est = PALB(2, encoder=synth["encoder"], **FAST)
    no_prompts = frame.assign(prompt="")
    est.fit(no_prompts)
    assert est.context_dim_ == 0
    est.fit(frame)  # the previous fit's context width must not decide this one's
    assert est.context_dim_ == data.train.context_dim > 0


def test_fit_resets_state_and_a_failed_fit_leaves_none(synth):
    est = PALB(2, encoder=synth["encoder"], **FAST).fit(synth["frame"])
    assert hasattr(est, "model_")
    bad_val = synth["frame"].assign(chosen="a text the vector file does not know")
    with pytest.raises(DataError):
        est.fit(synth["frame"], bad_val)
    assert not hasattr(est, "model_") and not hasattr(est, "users_")


def test_fit_does_not_reseed_the_process_rng(synth):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    PALB(2, encoder=synth["encoder"], dropout=0.1, **FAST).fit(synth["frame"])
    assert torch.equal(torch.rand(3), expected)  # the process's stream goes on as if fit never ran


# --- residual maps -------------------------------------------------------------------------------------
def test_residual_two_layer_map_is_x_plus_mlp():
    plain = MLP(6, 6, MLPConfig(n_layers=2), torch.Generator().manual_seed(0))
    residual = MLP(6, 6, MLPConfig(n_layers=2, residual=True), torch.Generator().manual_seed(0))
    x = torch.randn(5, 6)
    torch.testing.assert_close(residual(x), x + plain(x))
    with pytest.raises(ValueError, match="output width must equal its input width"):
        MLP(6, 4, MLPConfig(n_layers=2, residual=True))


@pytest.mark.parametrize("field", [{"dropout": 0.1}, {"hidden": 4}, {"residual": True}])
def test_a_linear_map_refuses_settings_it_would_ignore(field):
    with pytest.raises(ValueError, match="1-layer"):
        MLPConfig(n_layers=1, **field)


def test_paper_residual_setting_trains(synth):
    data = synth["data"]
    est = PALB(2, encoder=synth["encoder"], residual=True, **{**FAST, "dim": data.train.item_dim})
    assert 0.0 <= est.fit(synth["frame"]).score(synth["frame"]) <= 1.0
