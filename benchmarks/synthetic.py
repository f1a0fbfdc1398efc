"""PAL paper Sec. 4.2 / App. D.2 on synthetic data: does PAL find the K* = 3 preference groups, and how
many comparisons does a new user need?

    pluralign bench synthetic [--seeds 3] [--out runs/bench/synthetic]
    python benchmarks/synthetic.py --help

For each setting (mixture: users inside the hull of the prototypes; partition: each user on one prototype)
and seed it generates the paper's data (d = 16, K* = 3, N = 100 users, n = 100 training and 50 held-out
comparisons per user), trains the BTL baseline and PAL-A with K = 1..5 (linear f as in App. D.2), and reports
held-out accuracy of seen users. Then unseen users are onboarded by fitting only their K weights on
n = 0 (zero-shot) .. 100 of their comparisons, twice: with our default (start at the zero-shot weights, ridge
toward them: ``adapt_method="map"``) and with the paper's procedure (random start, no ridge, App. D.1:
``adapt_method="paper"``); n = 0 is the zero-shot point for both. Writes results.json and synthetic.png;
prints the tables with the paper's figures beside ours, and stores those figures as numbers in the JSON
(``paper``, and ``vs_paper`` pairing each with ours).

The BTL baseline is the paper's one-layer linear map without bias, so its reward r(x) = v . x is linear in
the item: it cannot express "closer to an ideal point" and is less expressive than PAL-A with K = 1 (one
ideal point, r quadratic in x). It is labelled so; PAL-A K = 1 is the homogeneous model of equal
expressiveness, and the K* gain is measured against it.
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
from pluralign.report.plots import accuracy_vs_k_axes, few_shot_curves_axes, plt, save_figure

#: the paper's figures as numbers (Sec. 4.2, App. D.2), with the setting each was measured in
PAPER = {
    "k_star_gain": {
        "value": 0.07,
        "unit": "held-out accuracy of seen users, PAL-A K = K* minus K = 1 (fraction)",
        "approximate": True,
        "source": "Sec. 4.2, Fig. 5b",
        "claim": "K = K* beats K = 1 by about 7 points",
        "setting": {"model": "PAL-A", "setting": "mixture", "d": 16, "n_users": 100, "n_per_user": 100},
    },
    "few_shot_shots": {
        "value": 40,
        "unit": "comparisons per new user to reach seen-user accuracy",
        "approximate": True,
        "source": "Fig. 5d caption; App. D.2 item 2",
        "claim": "with as few as 40 samples, performance comparable to that of seen users",
        # App. D.2: n_new in {5, 10, 20, 30, 40, 50, 100}, d in {2, 16}, K = 5, n = 50 per seen user
        "setting": {
            "model": "PAL-A",
            "K": 5,
            "d": [2, 16],
            "n_per_seen_user": 50,
            "fit": "random init, no ridge (App. D.1)",
        },
    },
}
SHOTS = [0, 5, 10, 20, 30, 40, 50, 100]
#: how "reaches seen-user accuracy" is read off a curve: mean accuracy >= seen K = 3 accuracy minus this
REACH_TOLERANCE = 0.01
BTL_LABEL = "BTL (linear r = v.x, < PAL-A K=1)"
BTL_NOTE = (
    "linear reward r(x) = v . x (one-layer map, no bias): less expressive than PAL-A K = 1 (an ideal "
    "point, r quadratic in x), the homogeneous model of equal expressiveness"
)
#: the two few-shot fits: ours (estimator default) and the paper's (App. D.1)
FITS = {"map": "ours: zero-shot start + ridge", "paper": "paper's: random start, no ridge (App. D.1)"}


def run(seeds: list[int], ks: list[int], out: Path, console: Console) -> dict:
    torch.set_num_threads(1)
    results: dict = {
        "config": {
            "seeds": seeds,
            "ks": ks,
            "shots": SHOTS,
            "train_params": SYNTHETIC_PARAMS,
            "threads": torch.get_num_threads(),
            "baselines": {"BTL": BTL_NOTE},
            "few_shot_fits": FITS,
            "reach_tolerance": REACH_TOLERANCE,
        },
        "paper": PAPER,
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
            row["few_shot_paper"] = None
            btl = BTL(seed=seed, **SYNTHETIC_PARAMS).fit(data.train)
            row["btl"] = btl.score(data.test)
            for k in ks:
                est = PALA(n_prototypes=k, dim=16, seed=seed, **SYNTHETIC_PARAMS).fit(data.train)
                row["pal_a"][k] = est.score(data.test)
                if k == 3:
                    curve = few_shot_curve(est, pool, unseen_test, SHOTS, seed=seed)
                    row["few_shot"] = curve["accuracy"].tolist()
                    paper_fit = est.copy().set_params(adapt_method="paper")
                    curve = few_shot_curve(paper_fit, pool, unseen_test, SHOTS, seed=seed)
                    row["few_shot_paper"] = curve["accuracy"].tolist()
            console.print(
                f"{setting} seed {seed}: BTL {row['btl']:.3f}, PAL-A "
                + ", ".join(f"K={k} {a:.3f}" for k, a in row["pal_a"].items())
            )
            results["runs"].append(row)
    results["seconds"] = time.perf_counter() - start
    results["summary"] = summarize(results, ks)
    results["vs_paper"] = vs_paper(results["summary"])
    results.update(report_sections(results["summary"], ks))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    plot(results, ks, out / "synthetic.png")
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _shots_to_reach(curve: np.ndarray, seen: float) -> int | None:
    reach = [s for s, acc in zip(SHOTS, curve, strict=True) if acc >= seen - REACH_TOLERANCE]
    return reach[0] if reach else None


def summarize(results: dict, ks: list[int]) -> dict:
    summary = {}
    for setting in ("mixture", "partition"):
        runs = [r for r in results["runs"] if r["setting"] == setting]
        per_k = {k: _mean_std([r["pal_a"][k] for r in runs]) for k in ks}
        gains = [r["pal_a"][3] - r["pal_a"][1] for r in runs if 3 in r["pal_a"] and 1 in r["pal_a"]]
        curve = np.array([r["few_shot"] for r in runs if r["few_shot"] is not None])
        paper_curve = np.array([r["few_shot_paper"] for r in runs if r["few_shot_paper"] is not None])
        seen_k3 = per_k.get(3, (float("nan"), 0.0))[0]
        summary[setting] = {
            "btl": _mean_std([r["btl"] for r in runs]),
            "pal_a": per_k,
            "gain_k3_over_k1": _mean_std(gains) if gains else None,
            "few_shot_mean": curve.mean(0).tolist(),
            "few_shot_std": curve.std(0).tolist(),
            "shots_to_reach_seen_minus_1pt": _shots_to_reach(curve.mean(0), seen_k3),
            "few_shot_paper_fit_mean": paper_curve.mean(0).tolist(),
            "few_shot_paper_fit_std": paper_curve.std(0).tolist(),
            "shots_to_reach_seen_minus_1pt_paper_fit": _shots_to_reach(paper_curve.mean(0), seen_k3),
        }
    return summary


def vs_paper(summary: dict) -> list[dict]:
    """Each figure of the paper next to ours, as numbers (ours per setting; few-shot for both fits)."""
    gain = {
        setting: s["gain_k3_over_k1"][0] if s["gain_k3_over_k1"] else None for setting, s in summary.items()
    }
    shots = summary["mixture"]
    return [
        {"figure": "k_star_gain", "paper": PAPER["k_star_gain"]["value"], "ours": gain},
        {
            "figure": "few_shot_shots",
            "paper": PAPER["few_shot_shots"]["value"],
            "ours": {
                "map": shots["shots_to_reach_seen_minus_1pt"],
                "paper": shots["shots_to_reach_seen_minus_1pt_paper_fit"],
            },
            "ours_setting": {"setting": "mixture", "K": 3, "d": 16, "n_per_seen_user": 100},
            "criterion": f"first n with mean accuracy >= seen-user accuracy (K = 3) - {REACH_TOLERANCE}",
        },
    ]


def report_sections(summary: dict, ks: list[int]) -> dict:
    """The keys `pluralign report` reads (schema in pluralign.report.html)."""
    table = []
    for setting, s in summary.items():
        table.append({"setting": setting, "model": BTL_LABEL, "accuracy": s["btl"][0], "std": s["btl"][1]})
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
                f"PAL-A K=3, mixture, {FITS['map']}": {
                    "shots": SHOTS,
                    "mean": mixture["few_shot_mean"],
                    "std": mixture["few_shot_std"],
                },
                f"PAL-A K=3, mixture, {FITS['paper']}": {
                    "shots": SHOTS,
                    "mean": mixture["few_shot_paper_fit_mean"],
                    "std": mixture["few_shot_paper_fit_std"],
                },
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
                BTL_LABEL: (ks, [s["btl"][0]] * len(ks), [s["btl"][1]] * len(ks)),
            },
            true_k=3,
            title=f"{setting} setting (K* = 3)",
        )
    s = results["summary"]["mixture"]
    few_shot_curves_axes(
        axes[2],
        {
            FITS["map"]: (SHOTS, s["few_shot_mean"], s["few_shot_std"]),
            FITS["paper"]: (SHOTS, s["few_shot_paper_fit_mean"], s["few_shot_paper_fit_std"]),
        },
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
        table.add_row(BTL_LABEL, f"{s['btl'][0]:.3f} ± {s['btl'][1]:.3f}")
        for k in ks:
            mean, std = s["pal_a"][k]
            table.add_row(f"PAL-A K={k}" + (" (= K*)" if k == 3 else ""), f"{mean:.3f} ± {std:.3f}")
        if s["gain_k3_over_k1"]:
            g = s["gain_k3_over_k1"]
            table.add_row("gain K=3 over K=1", f"{100 * g[0]:+.1f} ± {100 * g[1]:.1f} points")
            paper = PAPER["k_star_gain"]
            table.add_row(f"paper ({paper['source']})", f"about {100 * paper['value']:+.0f} points")
        console.print(table)
    s = results["summary"]["mixture"]
    table = Table(title="Unseen users, mixture, PAL-A K=3: accuracy vs comparisons used to fit their weights")
    table.add_column("n")
    for name in FITS.values():
        table.add_column(name, justify="right")
    curves = [
        (s["few_shot_mean"], s["few_shot_std"]),
        (s["few_shot_paper_fit_mean"], s["few_shot_paper_fit_std"]),
    ]
    for i, n in enumerate(SHOTS):
        cells = [f"{m[i]:.3f} ± {sd[i]:.3f}" for m, sd in curves]
        table.add_row("0 (zero-shot)" if n == 0 else str(n), *cells)
    table.add_row("seen users (K=3)", *[f"{s['pal_a'][3][0]:.3f}"] * 2)
    reach = (s["shots_to_reach_seen_minus_1pt"], s["shots_to_reach_seen_minus_1pt_paper_fit"])
    table.add_row(f"n to reach seen - {REACH_TOLERANCE:g}", *map(str, reach))
    paper = PAPER["few_shot_shots"]
    table.add_row(f"paper ({paper['source']}; K = 5, n = 50)", "", f"about {paper['value']}")
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
