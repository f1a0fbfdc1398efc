"""Active onboarding: factorized margins, info-gain and variance against brute force, planted problems,
decision-rule edge cases and the estimator API."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit

from pluralign.errors import DataError, PluralignError
from pluralign.estimator import PALEstimator
from pluralign.models.base import Batch, Tables
from pluralign.models.btl import BTLModel
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.serve.testing import make_demo_model
from pluralign.training.active import (
    OnboardingPosterior,
    answer_tables,
    pair_features,
    particle_features,
    prior_particles,
    question_scores,
    select_questions,
)


def _pairs(n: int, dim: int, seed: int = 0) -> tuple[Batch, Tables]:
    gen = torch.Generator().manual_seed(seed)
    tables = Tables(torch.randn(2 * n, dim, generator=gen), torch.randn(n, dim, generator=gen))
    batch = Batch(torch.zeros(n, dtype=torch.long), torch.arange(n), torch.arange(n), torch.arange(n, 2 * n))
    return batch, tables


@pytest.mark.parametrize("kind", ["pal_b", "pal_a"])
def test_factorized_margins_equal_model_margins(kind):
    torch.manual_seed(0)
    model = PALBModel(1, 3, 6, 6, 4) if kind == "pal_b" else PALAModel(1, 3, 6, 6, 4)
    batch, tables = _pairs(40, 6)
    weights = torch.from_numpy(np.random.default_rng(0).dirichlet(np.ones(3), 5))
    phi = pair_features(model, batch, tables)
    got = phi @ particle_features(model, weights).T  # [pairs, weight vectors]
    for i, w in enumerate(weights):
        expected = model.margins(batch, tables, w.log().float()[None]).detach().double()
        np.testing.assert_allclose(got[:, i], expected, rtol=1e-4, atol=1e-5)
    assert pair_features(model, batch.take(slice(0, 0)), tables).shape == (0, phi.shape[1])


def _brute_force(probs: np.ndarray, mass: np.ndarray, particles: np.ndarray) -> tuple[float, float]:
    """Mutual information I(y; w) and tr Cov(w) - E_y tr Cov(w | y) by enumerating answers and particles."""
    info, expected_trace = 0.0, 0.0
    prior_trace = float(np.trace(np.cov(particles.T, aweights=mass, bias=True)))
    for y in (0, 1):
        like = probs if y == 1 else 1.0 - probs
        p_y = float(np.sum(mass * like))
        for s in range(len(mass)):
            info += mass[s] * like[s] * math.log(like[s] / p_y)
        post = mass * like / p_y
        expected_trace += p_y * float(np.trace(np.cov(particles.T, aweights=post, bias=True)))
    return info, prior_trace - expected_trace


@pytest.mark.parametrize("shared", [True, False])
def test_scores_equal_brute_force(shared):
    torch.manual_seed(1)
    model = PALBModel(1, 3, 5, 5, 4, init_scale=5.0)
    batch, tables = _pairs(4, 5, seed=1)
    phi = pair_features(model, batch, tables)
    particles = prior_particles(7, 3, seed=3)
    post = OnboardingPosterior(model, particles, 2, lapse=0.1, temperature=0.7)
    post.observe(torch.tensor([0, 0, 1]), phi[[0, 1, 2]], torch.tensor([True, False, True]))
    candidates = None if shared else torch.tensor([[3, 1, 2, 0], [0, 2, 3, 1]])
    scores = {
        s: question_scores(post, phi, candidates, strategy=s, dtype=torch.float64)
        for s in ("info-gain", "variance")
    }
    mass = post.probabilities().numpy()
    for u in range(2):
        for j in range(4):
            row = j if shared else int(candidates[u, j])
            margins = (phi[row] @ particles.T).numpy()
            probs = 0.05 + 0.9 / (1.0 + np.exp(-margins / 0.7))  # lapse 0.1, temperature 0.7
            info, variance = _brute_force(probs, mass[u], particles.numpy())
            assert scores["info-gain"][u, j].item() == pytest.approx(info, rel=1e-9, abs=1e-12)
            assert scores["variance"][u, j].item() == pytest.approx(variance, rel=1e-9, abs=1e-12)
    # precomputed answer tables give the same scores (float32 tables: to float32 precision)
    tables32 = answer_tables(post, phi)
    again = question_scores(post, tables32, candidates, strategy="info-gain")
    np.testing.assert_allclose(again, scores["info-gain"], rtol=1e-4, atol=1e-6)


def test_likelihood_with_lapse_is_stable_and_exact():
    model = PALBModel(1, 2, 3, 3, 2)
    post = OnboardingPosterior(model, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1, lapse=0.2)
    margins = torch.tensor([[-1e4, -2.0, 0.0, 3.0, 1e4]], dtype=torch.float64).T.expand(-1, 2)
    loglik = post._log_likelihood(margins, torch.ones(5, dtype=torch.bool))
    expected = np.log(0.1 + 0.8 * expit(np.array([-1e4, -2.0, 0.0, 3.0, 1e4])))
    np.testing.assert_allclose(loglik[:, 0], expected, rtol=1e-12)
    assert torch.isfinite(loglik).all()


def _planted(strategy: str, steps: int) -> float:
    """Mean |posterior mean - true w| of 150 planted users after ``steps`` answers to a shared pool."""
    torch.manual_seed(0)
    model = PALBModel(1, 3, 8, 8, 4)  # known prototypes: the model is the ground truth
    batch, tables = _pairs(150, 8, seed=2)
    phi = pair_features(model, batch, tables)
    truth = torch.from_numpy(np.random.default_rng(1).dirichlet(np.ones(3), 150))
    true_margins = truth @ phi.T  # [users, candidates]
    post = OnboardingPosterior(model, prior_particles(400, 3, seed=0), 150, lapse=0.0)
    gen = torch.Generator().manual_seed(0)
    asked = torch.zeros(150, len(phi), dtype=torch.bool)
    users = torch.arange(150)
    for _ in range(steps):
        pick = select_questions(post, phi, strategy=strategy, asked=asked, generator=gen)
        assert not asked[users, pick].any()  # never asks twice
        asked[users, pick] = True
        answer = torch.rand(150, generator=gen, dtype=torch.float64) < torch.sigmoid(
            true_margins[users, pick]
        )
        post.observe(users, phi[pick], answer)
    return float((post.mean() - truth).norm(dim=1).mean())


def test_active_selection_concentrates_posterior_faster_than_random():
    random_error = _planted("random", 6)
    for strategy in ("info-gain", "variance"):
        assert _planted(strategy, 6) < 0.75 * random_error


def test_decision_rule_edge_cases():
    model = PALBModel(1, 2, 3, 3, 2)
    post = OnboardingPosterior(model, prior_particles(16, 2), 2)
    batch, tables = _pairs(3, 3)
    phi = pair_features(model, batch, tables)
    with pytest.raises(PluralignError, match="candidate pool is empty"):
        select_questions(post, phi[:0])
    with pytest.raises(
        PluralignError, match=r"unknown strategy 'best'.*info-gain, variance, uncertainty, random"
    ):
        select_questions(post, phi, strategy="best")
    asked = torch.tensor([[True, True, False], [False, True, True]])
    for strategy in ("info-gain", "variance", "uncertainty", "random"):
        pick = select_questions(post, phi, strategy=strategy, asked=asked)
        assert pick.tolist() == [2, 0]  # the only candidate each has left
    # ragged pools: -1 pads a row, and padding is never picked
    pick = select_questions(post, phi, torch.tensor([[1, -1], [-1, 2]]))
    assert pick.tolist() == [0, 1]
    with pytest.raises(PluralignError, match="no candidate left for 1 user"):
        select_questions(post, phi, asked=torch.tensor([[True, True, True], [False, False, False]]))
    with pytest.raises(PluralignError, match="PAL-A or PAL-B"):
        OnboardingPosterior(BTLModel(1, 3, 3), torch.ones(2, 1), 1)
    with pytest.raises(ValueError, match="lapse"):
        OnboardingPosterior(model, prior_particles(4, 2), 1, lapse=1.0)


def test_prior_particles():
    population = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    particles = prior_particles(10, 3, population=population, population_share=0.4, seed=0)
    assert particles.shape == (10, 3) and torch.allclose(
        particles.sum(1), torch.ones(10, dtype=torch.float64)
    )
    rows = {tuple(r) for r in particles[:4].tolist()}
    assert rows <= {(1.0, 0.0, 0.0), (0.0, 0.5, 0.5)}
    assert (particles >= 0).all()
    assert torch.equal(particles, prior_particles(10, 3, population=population, population_share=0.4, seed=0))


# --- estimator API ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def est(tmp_path_factory):
    return PALEstimator.load(make_demo_model(tmp_path_factory.mktemp("active")))


CANDIDATES = [(f"ctx-{i}", f"item-{2 * i}", f"item-{2 * i + 1}") for i in range(12)]


def test_next_questions_skips_answered_pairs_in_either_order(est):
    answers = pd.DataFrame(
        {
            "user_id": ["alice", "alice", "bob"],
            "prompt": ["ctx-3", "ctx-0", "ctx-5"],
            "chosen": ["item-7", "item-0", "item-10"],  # ctx-3 answered as (b over a): still the same pair
            "rejected": ["item-6", "item-1", "item-11"],
        }
    )
    out = est.next_questions(CANDIDATES, answers, users=["alice", "bob", "carol"], seed=0)
    assert list(out.index) == ["alice", "bob", "carol"]
    assert out["n_answers"].tolist() == [2, 1, 0] and out["n_candidates"].tolist() == [10, 11, 12]
    for strategy in ("info-gain", "variance", "uncertainty", "random"):
        picks = est.next_questions(CANDIDATES, answers, users=["alice", "bob"], strategy=strategy)
        assert picks.loc["alice", "index"] not in (0, 3) and picks.loc["bob", "index"] != 5
        assert ((picks["p_a"] > 0) & (picks["p_a"] < 1)).all()
    row = out.loc["carol"]
    assert (row["prompt"], row["a"], row["b"]) == CANDIDATES[row["index"]]
    everything = pd.DataFrame(
        {"user_id": "dora", "prompt": [c[0] for c in CANDIDATES], "chosen": [c[1] for c in CANDIDATES],
         "rejected": [c[2] for c in CANDIDATES]}
    )  # fmt: skip
    with pytest.raises(PluralignError, match=r"no question left for 1 user.*'dora'"):
        est.next_questions(CANDIDATES, everything)


def test_next_questions_uncertainty_matches_the_service_rule(est):
    p = np.array([1 / (1 + np.exp(-np.subtract(*est.reward("new", c[0], [c[1], c[2]])))) for c in CANDIDATES])
    out = est.next_questions(CANDIDATES, users=["new"], strategy="uncertainty")
    best = int(np.argmin(np.abs(p - 0.5)))
    assert out.loc["new", "index"] == best and out.loc["new", "p_a"] == pytest.approx(p[best], abs=1e-6)


def test_next_questions_answers_move_the_choice_and_are_deterministic(est):
    first = est.next_questions(CANDIDATES, users=["u"], seed=0)
    again = est.next_questions(CANDIDATES, users=["u"], seed=0)
    pd.testing.assert_frame_equal(first, again)


def test_next_questions_bad_input(est):
    with pytest.raises(DataError, match=r"^candidates:2: field 'b': is identical to 'a'$"):
        est.next_questions([("ctx-0", "item-0", "item-1"), ("ctx-1", "item-2", "item-2")], users=["u"])
    with pytest.raises(PluralignError, match="candidate pool is empty"):
        est.next_questions([], users=["u"])
    with pytest.raises(PluralignError, match="unknown strategy"):
        est.next_questions(CANDIDATES, users=["u"], strategy="greedy")
    with pytest.raises(PluralignError, match="no users"):
        est.next_questions(CANDIDATES)
    with pytest.raises(DataError, match="field 'a'"):
        est.next_questions(pd.DataFrame({"prompt": ["ctx-0"], "b": ["item-0"]}), users=["u"])


# --- benchmark at toy size -------------------------------------------------------------------------------
@pytest.mark.slow
def test_active_onboarding_benchmark_runs(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "active_onboarding.py"
    spec = importlib.util.spec_from_file_location("bench_active_onboarding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--datasets", "synthetic", "--seeds", "1", "--synthetic-users", "8", "--pool", "10"]
    argv += ["--max-answers", "4", "--particles", "64", "--synthetic-epochs", "20"]
    assert module.main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["grid"] == [0, 1, 2, 3, 4]
    strategies = results["summary"]["synthetic"]["strategies"]
    assert set(strategies) == {"info-gain", "variance", "uncertainty", "random"}
    # n = 0 is the zero-shot point, the same for every strategy
    assert len({s["fit_mean"][0] for s in strategies.values()}) == 1
    assert (tmp_path / "active_onboarding.png").stat().st_size > 0


# --- service ---------------------------------------------------------------------------------------------
def test_service_next_question_strategies(tmp_path, est):
    from starlette.testclient import TestClient

    from pluralign.serve import create_app

    model_dir = Path(est.encoder["path"]).parent / "model"
    candidates = [{"prompt": p, "a": a, "b": b} for p, a, b in CANDIDATES]
    auth = {"Authorization": "Bearer t0ken"}
    with TestClient(create_app(model_dir, tmp_path / "state.db", token="t0ken")) as http:

        def ask(user: str, strategy: str) -> dict:
            out = http.post(
                "/v1/next-question", json={"user_id": user, "candidates": candidates, "strategy": strategy}
            )
            assert out.status_code == 200, out.text
            return out.json()

        first = ask("erin", "info-gain")
        expected = est.next_questions(CANDIDATES, users=["erin"])
        assert first["strategy"] == "info-gain" and first["index"] == expected.loc["erin", "index"]
        assert first["p_a"] == pytest.approx(expected.loc["erin", "p_a"], abs=1e-9)
        rows = [("ctx-2", "item-5", "item-4"), ("ctx-7", "item-14", "item-15")]
        feedback = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]
        assert http.post(
            "/v1/feedback", headers=auth, json={"user_id": "erin", "comparisons": feedback}
        ).is_success
        answers = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected"]).assign(user_id="erin")
        for strategy in ("info-gain", "variance"):
            body = ask("erin", strategy)
            expected = est.next_questions(CANDIDATES, answers, strategy=strategy).loc["erin"]
            assert body["index"] == expected["index"] and body["n_candidates"] == 10
            assert (body["prompt"], body["a"], body["b"]) == CANDIDATES[body["index"]]
            assert body["p_a"] == pytest.approx(expected["p_a"], abs=1e-9)
        assert ask("erin", "random")["index"] not in (2, 7)
        # a user known only from the checkpoint has no stored answers: the fitted weights decide
        assert ask("user-1", "info-gain")["strategy"] == "uncertainty"
        bad = http.post(
            "/v1/next-question", json={"user_id": "erin", "candidates": candidates, "strategy": "x"}
        )
        assert bad.status_code == 422 and "strategy" in bad.json()["detail"]


# --- CLI -------------------------------------------------------------------------------------------------
def test_cli_ask(tmp_path, est):
    from typer.testing import CliRunner

    from pluralign.cli import app

    model_dir = Path(est.encoder["path"]).parent / "model"
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": p, "a": a, "b": b}) + "\n" for p, a, b in CANDIDATES))
    answers = tmp_path / "answers.jsonl"
    rows = [("alice", "ctx-3", "item-7", "item-6"), ("bob", "ctx-5", "item-10", "item-11")]
    keys = ("user_id", "prompt", "chosen", "rejected")
    answers.write_text("".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in rows))
    runner = CliRunner()
    result = runner.invoke(app, ["ask", str(model_dir), str(pool), "--answers", str(answers), "--json"])
    assert result.exit_code == 0, result.output
    got = {row["user_id"]: row for row in json.loads(result.output)}
    expected = est.next_questions(CANDIDATES, pd.read_json(answers, lines=True), seed=0)
    assert set(got) == {"alice", "bob"}
    for user in got:
        assert got[user]["index"] == expected.loc[user, "index"] and got[user]["n_candidates"] == 11
    result = runner.invoke(app, ["ask", str(model_dir), str(pool), "--user", "carol", "--strategy", "random"])
    assert result.exit_code == 0 and "carol" in result.output
    # bad input: one line naming the file, line and field; exit code 2
    pool.write_text(json.dumps({"prompt": "ctx-0", "a": "item-0"}) + "\n")
    result = runner.invoke(app, ["ask", str(model_dir), str(pool), "--user", "carol"])
    assert result.exit_code == 2 and f"{pool}:1: field 'b'" in result.output
    result = runner.invoke(app, ["ask", str(model_dir), str(pool)])
    assert result.exit_code == 2 and "--user" in result.output
    result = runner.invoke(app, ["ask", str(model_dir), str(pool), "--user", "u", "--strategy", "greedy"])
    assert result.exit_code == 2
