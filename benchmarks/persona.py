"""PAL paper App. D.4 (Persona): the full-scale run and the paper's sweeps, from the CLI.

    pluralign bench persona full     # 40,000 users x 1,000 questions (40M comparisons), PAL-B and PAL-A
    pluralign bench persona sweeps   # K* x K, n_p, d and the few-shot curve, at reduced N (stated)
    python benchmarks/persona.py {full,sweeps} --help

Users have one of K* personas (Table 7) and answer "would you say this statement?" with Yes exactly when
the statement belongs to their persona. Statements are embedded once with all-MiniLM-L6-v2 (cached under
--cache). Each seen user's questions are split 90/10 into training and held-out test; unseen users are
onboarded by fitting only their K weights (exactly, for PAL-B) on n of their answers and scored on the
rest, with our default fit (zero-shot start + ridge, ``adapt_method="map"``) and with the paper's (random
start, no ridge, App. D.1: ``adapt_method="paper"``; series marked "paper's fit"). Writes results.json
(readable by `pluralign report`), PNG plots and prints tables with the paper's reported figures beside ours;
the JSON holds those figures as numbers (``paper``) and pairs each with ours (``vs_paper``). Where the
paper states only a trend, the number is its sign (+1 rising, 0 flat) and ours is the measured change.
One torch thread; peak RSS from getrusage.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pluralign.atomic import atomic_write_json
from pluralign.data.splits import split_per_user, take_per_user
from pluralign.datasets.persona import build_persona, embed_persona
from pluralign.estimator import BTL, PALA, PALB, PALEstimator
from pluralign.evaluation import few_shot_curve
from pluralign.report.plots import accuracy_vs_k_axes, few_shot_curves_axes, plt, save_figure
from pluralign.report.tables import rows_table

console = Console(width=110)

#: the paper's Persona figures (App. D.4, Figs. D.5/D.6), as numbers; "value" is None where it gives none
PAPER = {
    "full": {
        "claim": "Fig. D.6: seen-user accuracy about 100% at K = K* (PAL-B-Tiny, N = 10,000, n_p = 1,000)",
        "source": "App. D.4 text, Fig. D.6a",
        "metric": "seen-user held-out accuracy at K = K* (value)",
        "value": 1.0,
        "approximate": True,
        "setting": {"model": "PAL-B-Tiny", "N": 10_000, "n_p": 1_000, "d": 16},
    },
    "k": {
        "claim": "Fig. D.5a/D.6a: accuracy grows with K up to K = K*, then stays flat",
        "source": "App. D.4, Figs. D.5a, D.6a",
        "metric": "seen-user accuracy at K = K* (value); its change from K = K* to the largest K (trend)",
        "value": 1.0,
        "trend": 0,
        "approximate": True,
        "setting": {"K_star": [2, 3, 4, 5, 6], "K": list(range(1, 9)), "n_p": 1_000, "d": 16, "N": 10_000},
    },
    "n_p": {
        "claim": "Fig. D.5b/D.6b: more comparisons per user, higher seen-user accuracy",
        "source": "App. D.4, Figs. D.5b, D.6b",
        "metric": "accuracy change from the smallest to the largest n_p (sign)",
        "value": None,
        "trend": 1,
        "setting": {"n_p": [75, 100, 200, 500, 1000], "K_star": 4, "d": 16, "N": 10_000},
    },
    "d": {
        "claim": "Fig. D.6c: the latent dimension d does not change seen accuracy much",
        "source": "App. D.4, Fig. D.6c",
        "metric": "accuracy range over d (sign of change: 0 = flat)",
        "value": None,
        "trend": 0,
        "setting": {"d": [4, 8, 16, 32, 64], "K_star": 4, "n_p": 1_000, "N": 10_000},
    },
    "few_shot": {
        "claim": "Fig. D.5c/D.6d: diminishing returns in n; K = 1 flat; larger K needs more answers",
        "source": "App. D.4, Figs. D.5c, D.6d",
        "metric": "accuracy change from n = 0 to the largest n: at K = 1 (value, 'makes no difference'); "
        "at K > 1 (trend)",
        "value": 0.0,
        "trend": 1,
        "setting": {
            "n_unseen": [1, 10, 20, 50, 100, 200, 500, 1000],
            "K": [1, 2, 3, 4, 5],
            "K_star": 4,
            "fit": "random init, no ridge (App. D.1)",
        },
    },
}
PAPER_FIT = "paper's fit"


def paper_curve(est: PALEstimator, pool, held_out, shots, seed: int):
    """The few-shot curve with the paper's fit of new users (random start, no ridge, App. D.1)."""
    return few_shot_curve(est.copy().set_params(adapt_method="paper"), pool, held_out, shots, seed=seed)


def vs_paper(results: dict) -> list[dict]:
    """Each of the paper's figures that this run measured, next to ours (numbers only)."""
    out = []
    if "k_grid" in results:
        grid = results["k_grid"]
        at_k_star = {
            ks: accs[grid["ks"].index(ks)] for ks, accs in grid["accuracy"].items() if ks in grid["ks"]
        }
        beyond = {
            ks: accs[-1] - accs[grid["ks"].index(ks)]
            for ks, accs in grid["accuracy"].items()
            if ks in grid["ks"] and ks != grid["ks"][-1]
        }
        out.append(
            {
                "figure": "k",
                "paper": PAPER["k"]["value"],
                "ours": at_k_star,
                "paper_trend": PAPER["k"]["trend"],
                "ours_change": beyond,
            }
        )
    for name in ("n_p", "d"):
        if name in results:
            accs = results[name]["accuracy"]
            change = accs[-1] - accs[0] if name == "n_p" else max(accs) - min(accs)
            out.append(
                {
                    "figure": name,
                    "paper": PAPER[name]["value"],
                    "paper_trend": PAPER[name]["trend"],
                    "ours_change": change,
                }
            )
    if "few_shot" in results:
        series = results["few_shot"]["series"]
        change = {name: c["mean"][-1] - c["mean"][0] for name, c in series.items()}
        k1 = {name: x for name, x in change.items() if name.split(",")[0].split()[-1] == "K=1"}
        out.append(
            {
                "figure": "few_shot",
                "paper": PAPER["few_shot"]["value"],
                "ours": k1,
                "paper_trend": PAPER["few_shot"]["trend"],
                "ours_change": {name: x for name, x in change.items() if name not in k1},
            }
        )
    for entry in out:
        entry["metric"] = PAPER[entry["figure"]]["metric"]
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare(
    k_star: int, users: int, queries: int, unseen_users: int, unseen_queries: int, seed: int, cache: Path
):
    data = embed_persona(
        build_persona(
            k_star=k_star,
            users_per_persona=users,
            queries_per_user=queries,
            unseen_users_per_persona=unseen_users,
            unseen_queries_per_user=unseen_queries,
            seed=seed,
        ),
        cache_dir=cache,
    )
    train, test = split_per_user(data.seen, (0.9, 0.1), seed=seed)
    return data, train, test


def estimator(
    kind: str,
    k: int,
    d: int,
    n_train: int,
    *,
    steps: int,
    batch: int,
    seed: int,
    rows_per_context: int | None = None,
    progress: bool = False,
) -> PALEstimator:
    """A Tiny model (2-layer f and g, hidden 128) trained for about ``steps`` optimizer steps."""
    params = {
        "hidden": 128,
        "batch_size": batch,
        "epochs": max(1, math.ceil(steps * batch / n_train)),
        "lr_maps": 3e-3,
        "lr_prototypes": 3e-3,
        "lr_users": 3e-2,
        "patience": None,
        "seed": seed,
        "rows_per_context": rows_per_context,
        "progress": progress,
    }
    if kind == "btl":
        return BTL(**params)
    if kind == "pal_a":
        return PALA(n_prototypes=k, dim=d, loss="hinge", **params)
    return PALB(n_prototypes=k, dim=d, loss="logistic", **params)


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)


def print_rows(title: str, rows: list[dict], paper: str | None = None) -> None:
    console.print(f"[bold]{title}[/]")
    console.print(rows_table(rows))
    if paper:
        console.print(f"paper: {paper}")


# ---------------------------------------------------------------------------------------------------------
def run_full(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    data, train, test = prepare(
        args.k_star,
        args.users_per_persona,
        args.queries,
        args.unseen_users,
        args.unseen_queries,
        args.seed,
        args.cache,
    )
    prep_s = time.perf_counter() - start
    console.print(
        f"built + embedded {len(data.seen):,} seen comparisons ({data.seen.n_users:,} users) in "
        f"{prep_s:.0f} s; training on {len(train):,}, testing on {len(test):,}; "
        f"peak RSS so far {peak_rss_gib():.2f} GiB"
    )
    rows, curves = [], {}
    pool, held_out = take_per_user(data.unseen, max(args.shots), seed=args.seed)
    for kind, loss in (("pal_b", "logistic"), ("pal_a", "hinge")):
        est = estimator(
            kind,
            args.k_star,
            16,
            len(train),
            steps=args.steps,
            batch=args.batch if kind == "pal_b" else args.batch_pal_a,
            seed=args.seed,
            progress=True,
        )
        est.fit(train)
        seconds = est.history_.seconds
        accuracy = est.score(test)
        curve = few_shot_curve(est, pool, held_out, args.shots, seed=args.seed)
        curves[f"{kind} K={args.k_star}"] = curve
        curves[f"{kind} K={args.k_star}, {PAPER_FIT}"] = paper_curve(
            est, pool, held_out, args.shots, args.seed
        )
        rows.append(
            {
                "model": f"{kind.upper().replace('_', '-')}-Tiny ({loss})",
                "K": args.k_star,
                "epochs": round(est.history_.steps / est.history_.steps_per_epoch, 2),
                "seen_test_acc": accuracy,
                "train_minutes": seconds / 60,
                "comparisons_per_s": est.history_.comparisons_per_second,
                "peak_rss_gib": peak_rss_gib(),
            }
        )
        console.print(f"{rows[-1]['model']}: seen accuracy {accuracy:.4f} in {seconds / 60:.1f} min")
        est.save(args.out / kind / "model")
    results = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "threads": torch.get_num_threads(),
        "n_seen_comparisons": len(data.seen),
        "n_train": len(train),
        "n_test": len(test),
        "prepare_seconds": prep_s,
        "table": rows,
        "few_shot": {
            "series": {
                name: {"shots": c["shots"].tolist(), "mean": c["accuracy"].tolist(), "std": None}
                for name, c in curves.items()
            },
            "reference": rows[0]["seen_test_acc"],
            "reference_label": "seen users (PAL-B)",
        },
        "paper": {"full": PAPER["full"], "few_shot": PAPER["few_shot"]},
        "seconds": time.perf_counter() - start,
    }
    results["vs_paper"] = [
        {
            "figure": "full",
            "paper": PAPER["full"]["value"],
            "ours": rows[0]["seen_test_acc"],
            "model": rows[0]["model"],
            "metric": PAPER["full"]["metric"],
        },
        *vs_paper(results),
    ]
    write_results(args.out, results)
    print_rows(
        f"Persona full scale: K* = {args.k_star}, {data.seen.n_users:,} seen users x {args.queries} "
        f"questions ({len(data.seen):,} comparisons), {torch.get_num_threads()} thread",
        rows,
        PAPER["full"]["claim"],
    )
    shots_rows = [
        {"n": n, **{name: float(c["accuracy"][i]) for name, c in curves.items()}}
        for i, n in enumerate(curves[next(iter(curves))]["shots"])
    ]
    print_rows(
        "Unseen users: accuracy after fitting their weights on n answers",
        shots_rows,
        PAPER["few_shot"]["claim"],
    )
    return results


# ---------------------------------------------------------------------------------------------------------
def run_sweeps(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "threads": torch.get_num_threads(),
        "paper": PAPER,
    }
    n, q, seed = args.users_per_persona, args.queries, args.seed

    def seen_accuracy(k_star: int, k: int, d: int = 16, queries: int = q) -> float:
        _, train, test = prepare(k_star, n, queries, 1, 10, seed, args.cache)
        est = estimator(
            "pal_b",
            k,
            d,
            len(train),
            steps=args.steps,
            batch=args.batch,
            seed=seed,
            rows_per_context=args.rows_per_context,
        ).fit(train)
        return est.score(test)

    if "k" in args.which:
        grid = {ks: [seen_accuracy(ks, k) for k in args.ks] for ks in args.k_stars}
        results["k_grid"] = {"k_stars": args.k_stars, "ks": args.ks, "accuracy": grid}
        print_rows(
            f"Seen-user accuracy, PAL-B-Tiny, N = {n}/persona, n_p = {q} (rows K*, columns K)",
            [
                {"K*": ks, **{f"K={k}": a for k, a in zip(args.ks, accs, strict=True)}}
                for ks, accs in grid.items()
            ],
            PAPER["k"]["claim"],
        )
    one_at_a_time = (  # (--which key, results key, values, keyword of seen_accuracy, what it is)
        ("np", "n_p", args.n_ps, "queries", "comparisons per user"),
        ("d", "d", args.dims, "d", "latent dimension d"),
    )
    for key, name, values, keyword, label in one_at_a_time:
        if key not in args.which:
            continue
        accs = [seen_accuracy(args.k_star, args.k_star, **{keyword: v}) for v in values]
        results[name] = {name: values, "accuracy": accs}
        print_rows(
            f"Seen-user accuracy vs {label}, K = K* = {args.k_star}",
            [{name: v, "accuracy": a} for v, a in zip(values, accs, strict=True)],
            PAPER[name]["claim"],
        )
    if "fewshot" in args.which:
        data, train, test = prepare(
            args.k_star, n, q, args.unseen_users, max(args.shots) + 100, seed, args.cache
        )
        pool, held_out = take_per_user(data.unseen, max(args.shots), seed=seed)
        series = {}
        for k in args.fewshot_ks:
            est = estimator(
                "pal_b",
                k,
                16,
                len(train),
                steps=args.steps,
                batch=args.batch,
                seed=seed,
                rows_per_context=args.rows_per_context,
            ).fit(train)
            seen = est.score(test)
            for name, curve in (
                (f"K={k}", few_shot_curve(est, pool, held_out, args.shots, seed=seed)),
                (f"K={k}, {PAPER_FIT}", paper_curve(est, pool, held_out, args.shots, seed)),
            ):
                series[name] = {
                    "shots": curve["shots"].tolist(),
                    "mean": curve["accuracy"].tolist(),
                    "std": None,
                    "seen": seen,
                }
        results["few_shot"] = {"series": series, "reference": None}
        print_rows(
            f"Unseen users (K* = {args.k_star}): accuracy after fitting weights on n answers (100 held out)",
            [
                {"n": s, **{name: c["mean"][i] for name, c in series.items()}}
                for i, s in enumerate(args.shots)
            ],
            PAPER["few_shot"]["claim"],
        )
    results["vs_paper"] = vs_paper(results)
    results["seconds"] = time.perf_counter() - start
    results["peak_rss_gib"] = peak_rss_gib()
    write_results(args.out, results)
    plot_sweeps(results, args.out / "sweeps.png")
    console.print(
        f"wrote {args.out / 'results.json'} and {args.out / 'sweeps.png'} in {results['seconds']:.0f} s"
    )
    return results


def plot_sweeps(results: dict, path: Path) -> None:
    panels = [key for key in ("k_grid", "n_p", "d", "few_shot") if key in results]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        r = results[key]
        if key == "k_grid":
            curves = {f"K* = {ks}": (r["ks"], accs, [0.0] * len(accs)) for ks, accs in r["accuracy"].items()}
            accuracy_vs_k_axes(ax, curves, title="seen users vs K (Fig. D.5a)")
        elif key == "few_shot":
            few_shot_curves_axes(
                ax,
                {name: (c["shots"], c["mean"], [0.0] * len(c["mean"])) for name, c in r["series"].items()},
                title="unseen users (Fig. D.6d)",
            )
        else:
            xs = r["n_p"] if key == "n_p" else r["d"]
            ax.plot(xs, r["accuracy"], marker="o")
            ax.set_xscale("log", base=2 if key == "d" else 10)
            ax.set_xticks(xs, labels=[str(x) for x in xs])
            ax.minorticks_off()
            # a fixed scale: at the ceiling, a 1e-4 wiggle must not look like a trend
            ax.set_ylim(min(0.85, min(r["accuracy"]) - 0.01), 1.005)
            ax.set_xlabel("comparisons per user n_p" if key == "n_p" else "latent dimension d")
            ax.set_ylabel("seen-user test accuracy")
            ax.set_title("Fig. D.6b" if key == "n_p" else "Fig. D.6c")
            ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--cache", type=Path, default=Path("runs/cache"), help="embedding cache directory")
    common.add_argument("--k-star", type=int, default=4)
    full = sub.add_parser("full", parents=[common], help="the paper's full scale (40M comparisons)")
    full.add_argument("--users-per-persona", type=int, default=10_000)
    full.add_argument("--queries", type=int, default=1_000, help="n_p, questions per seen user")
    full.add_argument("--unseen-users", type=int, default=250, help="unseen users per persona")
    full.add_argument("--unseen-queries", type=int, default=1_000)
    full.add_argument("--steps", type=int, default=600, help="optimizer steps (rounded up to whole epochs)")
    full.add_argument("--batch", type=int, default=65536, help="comparisons per step (PAL-B)")
    # PAL-A's ideal points move slowly: at batch 65,536 (1,100 steps) it stayed at the majority answer (0.875)
    full.add_argument("--batch-pal-a", type=int, default=8192, help="comparisons per step (PAL-A)")
    full.add_argument("--shots", type=int, nargs="+", default=[0, 1, 10, 20, 50, 100, 200, 500])
    full.add_argument("--out", type=Path, default=Path("runs/bench/persona/full"))
    full.set_defaults(func=run_full)
    sweeps = sub.add_parser("sweeps", parents=[common], help="the paper's sweeps at reduced N")
    sweeps.add_argument("--users-per-persona", type=int, default=200, help="reduced N (paper: 10,000)")
    sweeps.add_argument("--queries", type=int, default=200, help="n_p for the K and d sweeps")
    sweeps.add_argument("--steps", type=int, default=300)
    sweeps.add_argument("--batch", type=int, default=8192, help="comparisons per step")
    sweeps.add_argument(
        "--rows-per-context",
        type=int,
        default=16,
        help="context-grouped batches (TrainConfig.rows_per_context); 0 for plain shuffling",
    )
    sweeps.add_argument(
        "--which", nargs="+", default=["k", "np", "d", "fewshot"], choices=["k", "np", "d", "fewshot"]
    )
    sweeps.add_argument("--k-stars", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    sweeps.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8])
    sweeps.add_argument("--n-ps", type=int, nargs="+", default=[75, 100, 200, 500, 1000])
    sweeps.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    sweeps.add_argument("--fewshot-ks", type=int, nargs="+", default=[1, 2, 4, 8])
    sweeps.add_argument("--unseen-users", type=int, default=50, help="unseen users per persona")
    sweeps.add_argument("--shots", type=int, nargs="+", default=[0, 1, 10, 20, 50, 100, 200, 500, 1000])
    sweeps.add_argument("--out", type=Path, default=Path("runs/bench/persona/sweeps"))
    sweeps.set_defaults(func=run_sweeps)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    if getattr(args, "rows_per_context", None) == 0:
        args.rows_per_context = 1
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
