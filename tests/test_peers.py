"""The peer methods (LoRe, matrix factorisation, per-user rewards): they recover planted structure, PerUser
is independent logistic regression, the ridge few-shot solver is exact, and the estimator API round-trips."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer.main
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.cli.common import ModelKind
from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.synthetic import make_synthetic, write_synthetic
from pluralign.errors import PluralignError
from pluralign.estimator import BTL, ESTIMATORS, PALB, LoRe, MatrixFactorization, PALEstimator, PerUser
from pluralign.estimator.params import LORE_PARAMS, MF_PARAMS, PER_USER_PARAMS, TINY_PARAMS
from pluralign.training.ridge import fit_ridge_logistic

PEERS = (LoRe, MatrixFactorization, PerUser)


def _rows(rng, items, theta, users, n, n_users):
    """``n`` random comparisons per user of ``users``, labelled by Bradley-Terry on theta_u . x; and the
    planted model's accuracy on them."""
    user = np.repeat(users, n)
    a = rng.integers(len(items), size=len(user))
    b = (a + 1 + rng.integers(len(items) - 1, size=len(user))) % len(items)
    margin = ((items[a] - items[b]).astype(np.float64) * theta[user]).sum(-1)
    first = rng.random(len(user)) < 1 / (1 + np.exp(-margin))
    data = PreferenceData(
        user=user.astype(np.int64),
        context=np.zeros(len(user), np.int64),
        chosen=np.where(first, a, b).astype(np.int64),
        rejected=np.where(first, b, a).astype(np.int64),
        user_ids=np.array([f"u{i}" for i in range(n_users)], dtype=object),
        contexts=np.array([""], dtype=object),
        items=np.array([f"item {j}" for j in range(len(items))], dtype=object),
        item_vectors=items,
        context_vectors=np.zeros((1, 0), np.float32),
    )
    return data, float(np.mean((margin > 0) == first))


def planted(kind: str, seed: int = 0, n_users: int = 60, n_new: int = 20, dim: int = 16, k: int = 3) -> dict:
    """K = 3 planted linear rewards over random 16-d embeddings; users are mixtures of them on the simplex
    ("mixture", LoRe's model) or a population reward plus free combinations ("free", MF's model)."""
    rng = np.random.default_rng(seed)
    items = (rng.normal(size=(400, dim)) / np.sqrt(dim)).astype(np.float32)
    basis = rng.normal(size=(k, dim)) * 4.0
    total = n_users + n_new
    if kind == "mixture":
        theta = rng.dirichlet(np.full(k, 0.3), size=total) @ basis
    else:
        theta = rng.normal(size=dim) * 1.2 + rng.normal(size=(total, k)) @ basis
    seen, new = np.arange(n_users), np.arange(n_users, total)
    test, planted_seen = _rows(rng, items, theta, seen, 40, total)
    new_test, planted_new = _rows(rng, items, theta, new, 40, total)
    return {
        "train": _rows(rng, items, theta, seen, 60, total)[0],
        "test": test,
        "shots": _rows(rng, items, theta, new, 10, total)[0],
        "new_test": new_test,
        "planted_seen": planted_seen,
        "planted_new": planted_new,
    }


@pytest.fixture(scope="module")
def mixture():
    return planted("mixture")


@pytest.fixture(scope="module")
def free():
    return planted("free")


def _measure(cls, data):
    est = cls().fit(data["train"])
    seen, zero = est.score(data["test"]), est.score(data["new_test"])
    adapted = est.copy()
    adapted.adapt(data["shots"])
    return est, seen, zero, adapted.score(data["new_test"])


@pytest.mark.parametrize(("cls", "kind"), [(LoRe, "mixture"), (MatrixFactorization, "free")])
def test_recovers_planted_low_rank_structure(cls, kind, mixture, free):
    data = {"mixture": mixture, "free": free}[kind]
    _, seen, zero, few = _measure(cls, data)
    btl = BTL().fit(data["train"]).score(data["test"])
    # measured (seed 0): LoRe 0.851 of the planted 0.873, BTL 0.738, new users 0.728 -> 0.834 with 10 shots;
    # MF 0.899 of the planted 0.922, BTL 0.565, new users 0.551 -> 0.828
    assert seen > data["planted_seen"] - 0.06, (seen, data["planted_seen"])
    assert seen > btl + 0.1, (seen, btl)
    assert few > zero + 0.05, (zero, few)
    assert few > data["planted_new"] - 0.1, (few, data["planted_new"])


def test_per_user_learns_every_user_on_its_own(free):
    _, seen, zero, few = _measure(PerUser, free)
    # 16 free coefficients from 60 rows per user: below MF (0.899), above BTL (0.565); measured 0.823,
    # new users 0.556 -> 0.719
    assert 0.75 < seen < free["planted_seen"] - 0.05, seen
    assert few > zero + 0.05, (zero, few)


def _solo_user(n=2000, dim=8, seed=1):
    """One user with many rows, and the same rows as scikit-learn's (X, y): each difference vector
    phi(chosen) - phi(rejected) with a random sign, labelled by that sign (logistic loss is symmetric, so
    the objective is the same)."""
    rng = np.random.default_rng(seed)
    items = (rng.normal(size=(300, dim)) / np.sqrt(dim)).astype(np.float32)
    theta = rng.normal(size=(1, dim)) * 3.0
    data, _ = _rows(rng, items, theta, np.zeros(1, dtype=np.int64), n, 1)
    diff = (items[data.chosen] - items[data.rejected]).astype(np.float64)
    flip = rng.random(n) < 0.5
    return data, np.where(flip[:, None], -diff, diff), (~flip).astype(int)


@pytest.mark.parametrize("user_l2", [1.0, 0.1])
def test_per_user_is_independent_logistic_regression(user_l2):
    data, x, y = _solo_user()
    reference = LogisticRegression(C=1 / user_l2, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(x, y)
    est = PerUser(user_l2=user_l2, val_fraction=0.0, patience=None).fit(data)
    theta = est.user_weights().to_numpy()[0]
    # measured: largest coefficient error 5e-6 (user_l2 = 1) and 2e-6 (0.1), coefficients up to 4.2
    np.testing.assert_allclose(theta, reference.coef_[0], atol=1e-3)
    np.testing.assert_allclose(1 / (1 + np.exp(-(x @ theta))), reference.predict_proba(x)[:, 1], atol=1e-4)
    # the estimator's own probabilities are the same model's
    np.testing.assert_allclose(
        est.predict_proba(data), 1 / (1 + np.exp(-(data_diff(data) @ theta))), atol=1e-5
    )


def data_diff(data: PreferenceData) -> np.ndarray:
    return (data.item_vectors[data.chosen] - data.item_vectors[data.rejected]).astype(np.float64)


def test_ridge_solver_matches_scikit_learn_for_many_users_at_once():
    gen = torch.Generator().manual_seed(0)
    n, dim, users = 600, 6, 5
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    group = torch.randint(0, users, (n,), generator=gen)
    group[group == 3] = 2  # user 3 has no rows: it gets its prior
    truth = torch.randn(users, dim, generator=gen, dtype=torch.float64) * 2
    label = torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid((x * truth[group]).sum(-1))
    oriented = torch.where(label[:, None], x, -x)  # rows as (chosen - rejected) features
    prior = torch.full((dim,), 0.25, dtype=torch.float64)
    got = fit_ridge_logistic(oriented, group, users, ridge=0.5, prior=prior)
    np.testing.assert_array_equal(got[3].numpy(), prior.numpy())
    for u in (0, 1, 2, 4):
        rows = (group == u).numpy()
        xs, ys = x[rows].numpy(), label[rows].numpy().astype(int)
        # a prior mean v0: substitute v = v0 + d, the fit is over d with offsets x . v0 (scikit-learn has
        # none), so check the zero-prior problem against scikit-learn and the shifted one by its gradient
        ref = LogisticRegression(C=1 / 0.5, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(xs, ys)
        one = torch.zeros(int(rows.sum()), dtype=torch.long)
        zero = fit_ridge_logistic(oriented[rows], one, 1, ridge=0.5, prior=torch.zeros(dim))
        np.testing.assert_allclose(zero[0].numpy(), ref.coef_[0], atol=1e-5)
        feats = oriented[rows]
        grad = -(torch.sigmoid(-(feats @ got[u]))[:, None] * feats).sum(0) + 0.5 * (got[u] - prior)
        assert float(grad.abs().max()) < 1e-6


def test_ridge_solver_with_fewer_rows_than_features_matches_scikit_learn():
    """Few-shot users (rows < features) take the Woodbury path; same optimum as scikit-learn's."""
    gen = torch.Generator().manual_seed(1)
    users, rows_per_user, dim = 4, 8, 40
    n = users * rows_per_user
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    group = torch.arange(users).repeat_interleave(rows_per_user)
    label = torch.rand(n, generator=gen, dtype=torch.float64) < 0.5
    label[::rows_per_user] = ~label[1::rows_per_user]  # both classes for every user
    oriented = torch.where(label[:, None], x, -x)
    got = fit_ridge_logistic(oriented, group, users, ridge=2.0, prior=torch.zeros(dim))
    for u in range(users):
        rows = (group == u).numpy()
        ref = LogisticRegression(C=1 / 2.0, fit_intercept=False, tol=1e-12, max_iter=10_000)
        ref.fit(x[rows].numpy(), label[rows].numpy().astype(int))
        np.testing.assert_allclose(got[u].numpy(), ref.coef_[0], atol=1e-6)


# --- the estimator API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(free):
    return {cls: cls(max_steps=60, patience=None).fit(free["train"]) for cls in PEERS}


@pytest.mark.parametrize("cls", PEERS)
def test_save_load_round_trip_gives_identical_margins(cls, fitted, free, tmp_path):
    est = fitted[cls].copy()
    est.adapt(free["shots"])  # new users are saved too
    est.save(tmp_path / "model")
    loaded = PALEstimator.load(tmp_path / "model")
    assert type(loaded) is cls
    assert {**loaded.get_params(), "encoder": None} == {**est.get_params(), "encoder": None}
    for data in (free["test"], free["new_test"]):
        np.testing.assert_array_equal(loaded.margins(data), est.margins(data))
    pd.testing.assert_frame_equal(loaded.user_weights(), est.user_weights())
    with pytest.raises(PluralignError, match="not a"):
        PALB.load(tmp_path / "model")


@pytest.mark.parametrize("cls", PEERS)
def test_clone_signature_and_clear_errors(cls, free):
    table = {p.name: p.default for p in cls.hyperparameters}
    assert {n: p.default for n, p in inspect.signature(cls).parameters.items()} == table
    est = cls(seed=3)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert ESTIMATORS[cls.__name__] is cls
    with pytest.raises(PluralignError, match="not fitted yet"):
        est.adapt(free["shots"])
    with pytest.raises(PluralignError, match="not fitted yet"):
        est.margins(free["test"])
    with pytest.raises(ValueError, match="no parameter"):
        est.set_params(dim=4)  # a PAL map setting the peer has no use for is refused, not ignored
    with pytest.raises(TypeError):
        cls(loss="hinge")


def test_tables_keep_pal_unchanged_and_drop_what_a_peer_has_no_use_for():
    assert {p.name for p in PALB.hyperparameters} == {p.name for p in TINY_PARAMS}
    assert "dim" not in {p.name for p in LORE_PARAMS} and "n_prototypes" in {p.name for p in LORE_PARAMS}
    assert "user_l2" in {p.name for p in MF_PARAMS} and "user_l2" not in {p.name for p in TINY_PARAMS}
    assert "n_prototypes" not in {p.name for p in PER_USER_PARAMS}


def test_free_vectors_zero_shot_and_few_shot(fitted, free):
    mf, per_user, lore = fitted[MatrixFactorization], fitted[PerUser], fitted[LoRe]
    # MF: free vectors off the simplex; an unknown user is u = 0, the population reward b
    weights = mf.user_weights()
    assert weights.shape == (60, 3) and not np.allclose(weights.sum(axis=1), 1.0)
    assert (weights.to_numpy() < 0).any()
    np.testing.assert_array_equal(mf.zero_shot_weights_.numpy(), np.zeros(3))
    data = free["new_test"]
    with torch.no_grad():
        joint = torch.from_numpy(data.item_vectors)
        b = mf.model_.b(joint).squeeze(-1).double().numpy()
    np.testing.assert_allclose(mf.margins(data), b[data.chosen] - b[data.rejected], rtol=1e-5, atol=1e-5)
    # PerUser: an unknown user is the seen users' mean theta
    np.testing.assert_allclose(
        per_user.zero_shot_weights_.numpy(), per_user.user_weights().mean().to_numpy(), rtol=1e-5
    )
    # few-shot: a huge ridge keeps the prior, a small one moves; LoRe's weights stay on the simplex
    stiff = per_user.fit_weights(free["shots"], ridge=1e9).filter(like="w").to_numpy()
    np.testing.assert_allclose(stiff, np.tile(per_user.zero_shot_weights_.numpy(), (20, 1)), atol=1e-6)
    loose = mf.fit_weights(free["shots"]).filter(like="w").to_numpy()
    assert np.abs(loose).max() > 0.1
    lore_weights = lore.fit_weights(free["shots"]).filter(like="w").to_numpy()
    assert (lore_weights >= -1e-12).all() and np.allclose(lore_weights.sum(1), 1.0)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        mf.fit_weights(free["shots"], ridge=0.0)
    with pytest.raises(PluralignError, match="PAL-A or PAL-B"):
        lore.next_questions(pd.DataFrame({"a": ["item 0"], "b": ["item 1"]}), free["shots"])


# --- command line and docs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers_synth")
    data = make_synthetic(
        model="pal_b", dim=8, n_prototypes=2, n_users=12, n_train=30, n_test=10, n_unseen_users=4, seed=0
    )
    write_synthetic(data, out)
    return out


@pytest.mark.parametrize(
    ("flag", "cls"), [("lore", LoRe), ("mf", MatrixFactorization), ("per-user", PerUser)]
)
def test_cli_trains_evaluates_and_adapts_a_peer(flag, cls, synth_files, tmp_path):
    run, encoder = tmp_path / "run", str(synth_files / "vectors.npz")
    args = ["train", str(synth_files / "train.jsonl"), "--encoder", encoder, "--out", str(run)]
    args += ["--model", flag, "--epochs", "3", "--patience", "none", "--json"]
    if cls is not PerUser:
        args += ["--k", "2"]
    if cls is not LoRe:
        args += ["--user-l2", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["estimator"] == cls.__name__ and config["model_kind"] == cls.model_kind
    if cls is not LoRe:
        assert config["params"]["user_l2"] == 0.5
    assert json.loads(result.stdout)[0]["K"] == (None if cls is PerUser else 2)
    adapt = ["adapt", str(run), str(synth_files / "unseen_adapt.jsonl"), "--out", str(tmp_path / "adapted")]
    adapt += ["--test", str(synth_files / "unseen_test.jsonl"), "--encoder", encoder, "--json"]
    result = CliRunner().invoke(app, adapt)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)[0]
    assert summary["users_fitted"] == 4 and 0.0 <= summary["few_shot_acc"] <= 1.0
    est = PALEstimator.load(tmp_path / "adapted" / "model")
    assert type(est) is cls and len(est.users_) == 16
    frame = pd.read_json(synth_files / "test.jsonl", lines=True).head(3)
    rewards = est.reward(list(frame["user_id"].astype(str)), list(frame["prompt"]), list(frame["chosen"]))
    against = est.reward(list(frame["user_id"].astype(str)), list(frame["prompt"]), list(frame["rejected"]))
    np.testing.assert_allclose(rewards - against, est.margins(frame), rtol=1e-4, atol=1e-5)


def test_cli_refuses_options_a_model_does_not_have(synth_files, tmp_path):
    base = ["train", str(synth_files / "train.jsonl"), "--encoder", str(synth_files / "vectors.npz")]
    for model, option in (
        ("per-user", ["--dim", "4"]),
        ("pal-b", ["--user-l2", "2"]),
        ("lore", ["--f-layers", "1"]),
    ):
        result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / model), "--model", model, *option])
        assert result.exit_code == 2 and "not an option of --model" in result.output, result.output
        assert not (tmp_path / model / "model").exists()
    result = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "x"), "--model", "mf", "--encoder-trainable"]
    )
    assert result.exit_code == 2 and "pal-a and pal-b" in result.output
    result = CliRunner().invoke(app, ["select-k", str(synth_files / "train.jsonl"), "--model", "lore"])
    assert result.exit_code == 2 and "select-k" in result.output


def test_user_l2_is_a_train_option_with_the_tables_default_and_help():
    from pluralign.estimator.params import PEER_EXTRA

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    for param in PEER_EXTRA:
        assert param.flag in options[param.name].opts and options[param.name].help == param.help
        assert options[param.name].default == param.default == MatrixFactorization().user_l2
    assert {"lore", "mf", "per-user"} <= {m.value for m in ModelKind}  # (each trains in the test above)


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    doc = Path(__file__).resolve().parents[1] / "docs" / "peers.md"
    text = doc.read_text()
    example = re.search(r"```python\n(.*?)```", text[text.index("## Python") :], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(doc), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    for name in ("LoRe", "MatrixFactorization", "PerUser"):
        assert f"{name}: seen 0." in printed
