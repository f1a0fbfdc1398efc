"""Benchmarks run end to end at toy sizes, so they do not rot between real runs (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _main(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_few_shot_benchmark(tmp_path):
    assert (
        _main("few_shot")(["--users", "30", "--rows", "20", "--adam-steps", "50", "--out", str(tmp_path)])
        == 0
    )
    payload = json.loads((tmp_path / "results.json").read_text())
    results = {r["method"].split(" ")[0]: r for r in payload["results"]}
    assert list(results) == ["exact", "adam", "slsqp"]
    assert payload["certificate"]["all_converged"] and payload["certificate"]["max_gap"] <= 1e-9
    # excess over the certified lower bound on each user's optimum: exact is within its certificate ...
    assert 0 <= results["exact"]["worst_excess_over_bound"] <= 1e-9
    # ... no method gets below the bound (that would break the certificate) ...
    assert all(r["worst_excess_over_bound"] > -1e-12 for r in results.values())
    assert all(r["worst_excess_over_exact"] > -1e-8 for r in results.values())
    # ... SLSQP with the analytic gradient converges too, 50 Adam steps do not
    assert results["slsqp"]["worst_excess_over_bound"] < 1e-6
    assert results["adam"]["worst_excess_over_bound"] > 100 * results["exact"]["worst_excess_over_bound"]


def test_persona_sweeps_benchmark(tmp_path):
    argv = [
        "sweeps",
        "--which",
        "k",
        "fewshot",
        "--k-stars",
        "2",
        "--ks",
        "1",
        "2",
        "--fewshot-ks",
        "2",
        "--users-per-persona",
        "10",
        "--queries",
        "40",
        "--steps",
        "5",
        "--unseen-users",
        "3",
        "--shots",
        "0",
        "5",
        "--k-star",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path),
    ]
    assert _main("persona")(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["k_grid"]["accuracy"]) == {"2"}
    assert results["few_shot"]["series"]["K=2"]["shots"] == [0, 5]
    # the paper's fit of new users (random start, no ridge) beside ours, from the same zero-shot point
    paper_fit = results["few_shot"]["series"]["K=2, paper's fit"]
    assert (
        paper_fit["shots"] == [0, 5]
        and paper_fit["mean"][0] == results["few_shot"]["series"]["K=2"]["mean"][0]
    )
    # the paper's figures are numbers in the JSON, each measured one next to ours
    assert results["paper"]["full"]["value"] == 1.0 and results["paper"]["few_shot"]["value"] == 0.0
    figures = {f["figure"]: f for f in results["vs_paper"]}
    assert set(figures) == {"k", "few_shot"}
    assert figures["k"]["paper"] == 1.0 and 0 <= figures["k"]["ours"]["2"] <= 1
    assert figures["few_shot"]["paper_trend"] == 1 and figures["few_shot"]["ours"] == {}  # no K = 1 run
    assert set(figures["few_shot"]["ours_change"]) == {"K=2", "K=2, paper's fit"}
    assert all(f["metric"] for f in figures.values())
    assert (tmp_path / "sweeps.png").stat().st_size > 0


def test_pal_large_benchmark(tmp_path):
    argv = ["--tasks", "statements", "--users-per-persona", "1", "--queries", "60", "--train-rows", "8",
            "--batch-size", "4", "--max-length", "16", "--tiny-long-epochs", "0", "--no-bf16",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]  # fmt: skip
    assert _main("pal_large")(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]["statements"]["rows"]
    assert [r["model"] for r in rows] == [
        "Tiny, logistic (baseline)",
        "Tiny, cumulative",
        "Large, logistic",
        "Large, cumulative",
    ]
    assert rows[0]["step_time_vs_baseline"] == 1.0 and all(0 <= r["test_accuracy"] <= 1 for r in rows)


def test_dpo_heterogeneous_benchmark(tmp_path):
    argv = ["--model", "tiny", "--users", "8", "--per-user", "3", "--train-topics", "6", "--test-topics", "4"]
    argv += ["--em-iterations", "1", "--timing-rounds", "2", "--lr", "5e-3", "--out", str(tmp_path)]
    assert _main("dpo_heterogeneous")(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    names = [m["method"] for m in results["methods"]]
    assert names == ["DPO", "MixDPO-LogNormal", "MixDPO-Gamma", "EM-DPO (rankings)", "EM-DPO (pairs)"]
    for m in results["methods"]:
        assert set(m["accuracy"]) == {"A", "B"} and 0 <= m["macro_accuracy"] <= 1
    assert all(-1 <= m["ari"] <= 1 for m in results["methods"][3:])
    assert set(results["step_ratio"]) == {"DPO", "MixDPO-LogNormal", "MixDPO-Gamma"}
    assert {h["method"] for h in results["homogeneous"]} == {
        "MixDPO-LogNormal-homogeneous",
        "MixDPO-Gamma-homogeneous",
    }
    assert set(results["regret"]) == {
        "DPO worst-type regret",
        "MMRA worst-type regret",
        "MMRA (normalized) worst-type regret",
        "reference worst-type regret",
    }
    assert all(0 <= r <= 1 for r in results["regret"].values())
    assert (tmp_path / "dpo_heterogeneous.png").stat().st_size > 0


def test_select_k_benchmark(tmp_path):
    assert _main("select_k")(["--quick", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    datasets = [h["dataset"] for h in results["hits"]]
    assert datasets == ["synthetic mixture", "synthetic partition", "Persona K*=2 (linear maps)"]
    for run in results["runs"]:
        assert set(run["chosen"]) == {"ours (combined)", "seen log loss", "few-shot accuracy",
                                      "one-SE on accuracy", "argmax accuracy (naive)"}  # fmt: skip
        assert all(k in run["k_values"] for k in run["chosen"].values())
    assert (tmp_path / "select_k.png").stat().st_size > 0


def test_defaults_benchmark(tmp_path):
    tiny = [
        "--reference-users",
        "10",
        "--reference-comparisons",
        "20",
        "--threads",
        "1",
        "--grid-lr-mults",
        "0.5",
        "1",
    ]
    common = [*tiny, "--cache", str(tmp_path / "cache"), "--seed", "0"]
    argv = ["--quick", "--datasets", "examples", "reference", *common, "--out", str(tmp_path / "a")]
    assert _main("defaults")(argv) == 0
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    from pluralign.training import budget

    assert set(payload["results"]) == set(payload["summary"]) == {"examples", "reference"}
    for name, result in payload["results"].items():
        (defaults,) = result["defaults"].values()  # one thread
        assert defaults["threads"] == 1
        run = defaults["defaults"]
        assert run["params"] == {}  # the library's defaults: no training argument at all
        assert run["comparisons_per_second"] > 0 and run["steps_run"] >= 1 and run["epochs_run"] >= 1
        grid = result["grid"]["grid"]
        n = defaults["train_rows"]
        # --quick: batches {full, 256} capped at the rows (deduplicated) x the lr multipliers given
        assert sorted({(g["batch_size"], g["lr_mult"]) for g in grid}) == sorted(
            {(b, m) for b in (n, min(256, n)) for m in (0.5, 1.0)}
        )
        for g in grid:  # the multiplier is on the rates the library derives for the grid's batch size
            for k, v in budget.BASE_LR.items():
                assert g["params"][k] == pytest.approx(v * budget.lr_scale(g["batch_size"], k) * g["lr_mult"])
        summary = payload["summary"][name]
        best = max(g["heldout_accuracy"] for g in grid)
        assert summary["best"]["heldout_accuracy"] == best
        assert summary["gap"] == pytest.approx(run["heldout_accuracy"] - best)
        assert summary["gap_target_met"] == (summary["gap"] >= -0.005)
        assert summary["wall_target_met"] == (run["wall_seconds"] <= 60)
    assert payload["results"]["examples"]["defaults"]["1"]["train_rows"] == 12
    # the 12 rows are learnable: the defaults find the two shared preferences (held-out 1.0)
    assert payload["results"]["examples"]["defaults"]["1"]["defaults"]["heldout_accuracy"] > 0.9
    assert payload["summary"]["examples"]["best"]["heldout_accuracy"] > 0.9
    ref = payload["summary"]["reference"]
    assert ref["bayes_ceiling"] == pytest.approx(0.871, abs=1e-6)
    assert isinstance(ref["reference_accuracy_target_met"], bool)
    assert isinstance(ref["reference_speed_target_met"], bool)
    # the same seeds give the same accuracies
    again = ["--datasets", "reference", "--no-grid", *common, "--out", str(tmp_path / "b")]
    assert _main("defaults")(again) == 0
    rerun = json.loads((tmp_path / "b" / "results.json").read_text())["results"]["reference"]
    first = payload["results"]["reference"]["defaults"]["1"]["defaults"]
    assert rerun["defaults"]["1"]["defaults"]["heldout_accuracy"] == first["heldout_accuracy"]
