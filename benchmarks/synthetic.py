"""PAL paper Sec. 4.2 / App. D.2 on synthetic data: does PAL find the K* = 3 preference groups, and how
many comparisons does a new user need?

    pluralign bench synthetic [--seeds 3] [--out runs/bench/synthetic]
    python benchmarks/synthetic.py --help

For each setting (mixture: users inside the hull of the prototypes; partition: each user on one prototype)
and seed it generates the paper's data (d = 16, K* = 3, N = 100 users, n = 100 training and 50 held-out
comparisons per user), trains the BTL baseline and PAL-A with K = 1..5 (linear f as in App. D.2), and reports
held-out accuracy of seen users. Then unseen users are onboarded by fitting only their K weights on
n = 0 (zero-shot) .. 100 of their comparisons. Writes results.json and synthetic.png; prints the tables with
the paper's claims beside ours.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json
from pluralign.datasets.synthetic import make_synthetic
from pluralign.demo import SYNTHETIC_PARAMS
from pluralign.estimator import BTL, PALA
from pluralign.evaluation import few_shot_curve
from pluralign.report.plots import accuracy_vs_k_axes, few_shot_axes, plt, save_figure

PAPER = {
    "k_star_gain": "K = K* beats K = 1 by about 7 points (Sec. 4.2, Fig. 5b)",
    "few_shot": "about 40 comparisons let a new user reach seen-user accuracy (Fig. 5d)",
}
SHOTS = [0, 5, 10, 20, 30, 40, 50, 100]


def run(seeds: list[int], ks: list[int], out: Path, console: Console) -> dict:
    torch.set_num_threads(1)
    results: dict = {
        "config": {
            "seeds": seeds,
            "ks": ks,
            "shots": SHOTS,
            "train_params": SYNTHETIC_PARAMS,
            "threads": torch.get_num_threads(),
            "paper": PAPER,
        },
        "runs": [],
    }
    start = time.perf_counter()
    for setting in ("mixture", "partition"):
        for seed in seeds:
            data = make_synthetic(
                model="pal_a",
                setting=setting,
                dim=16,
                n_prototypes=3,
                n_users=100,
                n_train=100,
                n_test=50,
                n_unseen_users=100,
                n_unseen_per_user=100,
                seed=seed,
            )
            pool, unseen_test = data.unseen, data.unseen_test
            row = {"setting": setting, "seed": seed, "btl": None, "pal_a": {}, "few_shot": None}
            btl = BTL(seed=seed, **SYNTHETIC_PARAMS).fit(data.train)
            row["btl"] = btl.score(data.test)
            for k in ks:
                est = PALA(n_prototypes=k, dim=16, seed=seed, **SYNTHETIC_PARAMS).fit(data.train)
                row["pal_a"][k] = est.score(data.test)
                if k == 3:
                    curve = few_shot_curve(est, pool, unseen_test, SHOTS, seed=seed)
                    row["few_shot"] = curve["accuracy"].tolist()
            console.print(
                f"{setting} seed {seed}: BTL {row['btl']:.3f}, PAL-A "
                + ", ".join(f"K={k} {a:.3f}" for k, a in row["pal_a"].items())
            )
            results["runs"].append(row)
    results["seconds"] = time.perf_counter() - start
    results["summary"] = summarize(results, ks)
    results.update(report_sections(results["summary"], ks))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    plot(results, ks, out / "synthetic.png")
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarize(results: dict, ks: list[int]) -> dict:
    summary = {}
    for setting in ("mixture", "partition"):
        runs = [r for r in results["runs"] if r["setting"] == setting]
        per_k = {k: _mean_std([r["pal_a"][k] for r in runs]) for k in ks}
        gains = [r["pal_a"][3] - r["pal_a"][1] for r in runs if 3 in r["pal_a"] and 1 in r["pal_a"]]
        curve = np.array([r["few_shot"] for r in runs if r["few_shot"] is not None])
        seen_k3 = per_k.get(3, (float("nan"), 0.0))[0]
        reach = [s for s, acc in zip(SHOTS, curve.mean(0), strict=True) if acc >= seen_k3 - 0.01]
        summary[setting] = {
            "btl": _mean_std([r["btl"] for r in runs]),
            "pal_a": per_k,
            "gain_k3_over_k1": _mean_std(gains) if gains else None,
            "few_shot_mean": curve.mean(0).tolist(),
            "few_shot_std": curve.std(0).tolist(),
            "shots_to_reach_seen_minus_1pt": reach[0] if reach else None,
        }
    return summary


def report_sections(summary: dict, ks: list[int]) -> dict:
    """The keys `pluralign report` reads (schema in pluralign.report.html)."""
    table = []
    for setting, s in summary.items():
        table.append({"setting": setting, "model": "BTL", "accuracy": s["btl"][0], "std": s["btl"][1]})
        table += [
            {
                "setting": setting,
                "model": f"PAL-A K={k}",
                "accuracy": s["pal_a"][k][0],
                "std": s["pal_a"][k][1],
            }
            for k in ks
        ]
    mixture = summary["mixture"]
    return {
        "table": table,
        "accuracy_vs_k": {
            "series": {
                f"PAL-A {setting}": {
                    "k": ks,
                    "mean": [s["pal_a"][k][0] for k in ks],
                    "std": [s["pal_a"][k][1] for k in ks],
                }
                for setting, s in summary.items()
            },
            "true_k": 3,
        },
        "few_shot": {
            "series": {
                "PAL-A K=3, mixture": {
                    "shots": SHOTS,
                    "mean": mixture["few_shot_mean"],
                    "std": mixture["few_shot_std"],
                }
            },
            "reference": mixture["pal_a"][3][0],
            "reference_label": "seen users, K = 3",
        },
    }


def plot(results: dict, ks: list[int], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, setting in zip(axes[:2], ("mixture", "partition"), strict=True):
        s = results["summary"][setting]
        accuracy_vs_k_axes(
            ax,
            {
                "PAL-A": (ks, [s["pal_a"][k][0] for k in ks], [s["pal_a"][k][1] for k in ks]),
                "BTL": (ks, [s["btl"][0]] * len(ks), [s["btl"][1]] * len(ks)),
            },
            true_k=3,
            title=f"{setting} setting (K* = 3)",
        )
    s = results["summary"]["mixture"]
    few_shot_axes(
        axes[2],
        SHOTS,
        s["few_shot_mean"],
        s["few_shot_std"],
        reference=s["pal_a"][3][0],
        reference_label="seen users, K = 3",
        title="new users, mixture, K = 3",
    )
    save_figure(fig, path)


def print_tables(results: dict, ks: list[int], console: Console) -> None:
    for setting, s in results["summary"].items():
        table = Table(
            title=f"Seen-user held-out accuracy, {setting} setting, K* = 3 "
            f"(mean ± std over {len(results['config']['seeds'])} seeds)"
        )
        table.add_column("model")
        table.add_column("accuracy", justify="right")
        table.add_row("BTL", f"{s['btl'][0]:.3f} ± {s['btl'][1]:.3f}")
        for k in ks:
            mean, std = s["pal_a"][k]
            table.add_row(f"PAL-A K={k}" + (" (= K*)" if k == 3 else ""), f"{mean:.3f} ± {std:.3f}")
        if s["gain_k3_over_k1"]:
            g = s["gain_k3_over_k1"]
            table.add_row("gain K=3 over K=1", f"{100 * g[0]:+.1f} ± {100 * g[1]:.1f} points")
            table.add_row("paper", PAPER["k_star_gain"])
        console.print(table)
    s = results["summary"]["mixture"]
    table = Table(title="Unseen users, mixture, PAL-A K=3: accuracy vs comparisons used to fit their weights")
    table.add_column("n")
    table.add_column("accuracy", justify="right")
    for n, m, sd in zip(SHOTS, s["few_shot_mean"], s["few_shot_std"], strict=True):
        table.add_row("0 (zero-shot)" if n == 0 else str(n), f"{m:.3f} ± {sd:.3f}")
    table.add_row("seen users (K=3)", f"{s['pal_a'][3][0]:.3f}")
    table.add_row("n to reach seen - 1 pt", str(s["shots_to_reach_seen_minus_1pt"]))
    table.add_row("paper", PAPER["few_shot"])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    parser.add_argument(
        "--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="K values (must include 1, 3)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/synthetic"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    results = run(list(range(args.seeds)), args.ks, args.out, console)
    print_tables(results, args.ks, console)
    console.print(
        f"wrote {args.out / 'results.json'} and {args.out / 'synthetic.png'} "
        f"in {results['seconds']:.0f} s ({results['config']['threads']} torch thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
