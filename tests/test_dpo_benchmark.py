"""The DPO benchmark's hard task on a tiny model: varied responses, overlapping types, label noise, the
number of EM-DPO types chosen, one step budget, several seeds with spread, MMRA against the best mixture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dpo_heterogeneous.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_dpo_heterogeneous_hard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hard_task_data():
    bench = load()
    clean = bench.make_task(30, bench.HARD_MIX, 8, 4, 4, 0, hard=True, heldout_per_user=2)
    noisy = bench.make_task(30, bench.HARD_MIX, 8, 4, 4, 0, hard=True, noise=0.5, heldout_per_user=2)
    # responses are not one template: phrasings differ across topics for a style
    shorts = {
        responses[0].replace(t, "").replace(t.capitalize(), "") for t, responses in clean["pool"].items()
    }
    assert len(shorts) > 1
    # the mix is 50/30/20 and types overlap: A and B agree on the best response, A and C on the worst
    kinds = list(clean["user_type"].values())
    assert [kinds.count(k) for k in "ABC"] == [15, 9, 6]
    orders = clean["orders"]
    assert orders["A"][0] == orders["B"][0] and orders["A"][-1] == orders["C"][-1]
    # noise flips some rankings away from the type's order, never drops rows
    assert len(noisy["rankings"]) == len(clean["rankings"]) == 120
    flipped = sum(
        list(r)
        != [noisy["pool"][p.removeprefix("What do you think of ").removesuffix("?")][i] for i in orders[k]]
        for r, p, k in zip(
            noisy["rankings"]["responses"],
            noisy["rankings"]["prompt"],
            [noisy["user_type"][u] for u in noisy["rankings"]["user_id"]],
            strict=True,
        )
    )
    assert 20 < flipped < 100
    assert len(clean["heldout"]) == 60 and {t for _, t, _ in clean["heldout"]} <= set(range(4))


def test_hard_benchmark_runs_over_seeds(tmp_path):
    bench = load()
    argv = ["--model", "tiny", "--task", "hard", "--users", "10", "--per-user", "3", "--train-topics", "6"]
    argv += ["--test-topics", "4", "--em-iterations", "1", "--select-types", "1,2", "--seeds", "0,1"]
    argv += ["--timing-rounds", "2", "--lr", "5e-3", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    names = [m["method"] for m in results["methods"]]
    assert names == ["DPO", "MixDPO-LogNormal", "MixDPO-Gamma", "EM-DPO (rankings)", "EM-DPO (pairs)"]
    em = results["methods"][3]
    assert set(em["type_selection"]) == {"1", "2"} and em["n_types"] in (1, 2)
    assert em["n_types"] == max((1, 2), key=lambda n: em["type_selection"][str(n)])
    # one step budget: every single-policy method used it, EM-DPO at most that over all its M-steps
    budget = results["methods"][0]["steps"]
    assert all(m["steps"] == budget for m in results["methods"][:3])
    assert all(0 < m["steps"] <= budget for m in results["methods"][3:])
    oracle = results["regret"]["best mixture of EM-DPO's policies (true utilities) worst-type regret"]
    assert 0 <= oracle <= results["regret"]["MMRA (normalized) worst-type regret"] + 0.02
    across = results["across_seeds"]
    assert results["seeds"] == [0, 1] and len(results["per_seed"]) == 2
    for name in names:
        mean, std = across["methods"][name]["macro_accuracy"]
        values = [r["methods"][names.index(name)]["macro_accuracy"] for r in results["per_seed"]]
        assert mean == pytest.approx(sum(values) / 2) and std >= 0
    assert set(across["regret"]) == set(results["regret"])
    # every seed is kept as it finishes, and --combine rebuilds the same summary from those files
    seeds = [tmp_path / "seed_0.json", tmp_path / "seed_1.json"]
    assert all(path.is_file() for path in seeds)
    assert bench.main(["--combine", *map(str, seeds), "--out", str(tmp_path / "combined")]) == 0
    combined = json.loads((tmp_path / "combined" / "results.json").read_text())
    assert combined["across_seeds"] == across and combined["seeds"] == [0, 1]
    assert (tmp_path / "combined" / "dpo_heterogeneous.png").is_file()
