"""Choosing K (issue 7.1): how often does `select_k` pick the true K* over seeds, against the naive rule?

    pluralign bench select-k [--seeds 2] [--quick] [--out runs/bench/select_k]
    python benchmarks/select_k.py --help

Datasets with a known K*: the paper's synthetic data (PAL-A, K* = 3, settings mixture and partition;
d = 16, 100 users x 100 comparisons, linear f, 100 epochs) and Persona (PAL-B-Tiny on MiniLM embeddings;
K* in {2, 3, 4, 6}; reduced N: 50 users per persona x 200 questions, about 200 steps of 8,192), once with
2-layer MLP maps f and g_k (as the Persona benchmarks train) and once with linear maps, to see whether
fewer than K* prototypes explaining every persona (K* >= 4) is the deep maps' doing. For every
dataset and seed, `pluralign.selection.select_k` cross-validates K = 1..6 (synthetic: 1..5) over 3 folds
(20% held-out users with 10 answers to adapt on (synthetic: 20), 20% held-out comparisons of the others).
From the *same* cross-validation table every rule chooses a K:

- ours (the default of select_k): one paired SE + 1% margin, on seen log loss and new-user few-shot accuracy
- the same rule on seen log loss alone, and on new-user few-shot accuracy alone
- naive baseline: argmax of mean held-out accuracy of seen users
- the classic one-SE rule on held-out accuracy (no practical margin)

Prints the hit rates (chosen K = K*, and |K - K*| <= 1), the chosen Ks, the mean CV table per dataset,
writes results.json and select_k.png. One torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pluralign.atomic import atomic_write_json
from pluralign.datasets.persona import build_persona, embed_persona
from pluralign.datasets.synthetic import make_synthetic
from pluralign.demo import SYNTHETIC_PARAMS
from pluralign.report.plots import plt, save_figure
from pluralign.report.tables import rows_table
from pluralign.selection import KSelection, apply_rule, select_k

console = Console(width=140)

RULES = {
    "ours (combined)": {"criterion": "combined"},
    "seen log loss": {"criterion": "seen_log_loss"},
    "few-shot accuracy": {"criterion": "new_few_shot_accuracy"},
    "one-SE on accuracy": {"criterion": "seen_accuracy", "rel_tol": 0.0},
}
BASELINE = "argmax accuracy (naive)"


def choices(sel: KSelection) -> dict[str, int]:
    """The K each rule chooses from one cross-validation table."""
    out = {
        name: apply_rule(sel.scores, sel.k_values, **{"rel_tol": 0.01, **rule})[0]
        for name, rule in RULES.items()
    }
    out[BASELINE] = sel.k_values[int(np.argmax(sel.mean("seen_accuracy")))]
    return out


def synthetic_runs(args: argparse.Namespace) -> list[tuple[str, int, int, dict]]:
    """(dataset name, K*, seed, select_k arguments) for the synthetic settings."""
    runs = []
    params = {**SYNTHETIC_PARAMS, "epochs": args.synthetic_epochs, "dim": 16}
    for setting in ("mixture", "partition"):
        for seed in range(args.synthetic_seeds):
            data = make_synthetic(
                model="pal_a",
                setting=setting,
                dim=16,
                n_prototypes=3,
                n_users=args.synthetic_users,
                n_train=100,
                n_test=0,
                seed=seed,
            ).train
            kw = {"k_values": args.synthetic_ks, "model": "pal-a", "shots": 20, **params}
            runs.append((f"synthetic {setting}", 3, seed, {"data": data, **kw}))
    return runs


#: PAL-B maps f and g_k: 2-layer MLPs (as in the demo and the Persona benchmarks) or linear
#: hidden width only for the MLP maps: a linear map has none (and refuses one rather than ignoring it)
PERSONA_MAPS = {
    "mlp": {"f_layers": 2, "g_layers": 2, "hidden": 128},
    "linear": {"f_layers": 1, "g_layers": 1},
}


def persona_runs(args: argparse.Namespace) -> list[tuple[str, int, int, dict]]:
    runs = []
    for k_star, seed in itertools.product(args.k_stars, range(args.seeds)):
        data = embed_persona(
            build_persona(
                k_star=k_star,
                users_per_persona=args.users_per_persona,
                queries_per_user=args.queries,
                unseen_users_per_persona=0,
                unseen_queries_per_user=1,
                seed=seed,
            ),
            cache_dir=args.cache,
        ).seen
        n_train = 0.8 * 0.8 * len(data)  # held-out users and comparisons are 20% each
        for maps in args.persona_maps:  # the same data for every variant of the maps
            params = {
                "dim": 16,
                "batch_size": args.batch,
                "epochs": max(1, math.ceil(args.steps * args.batch / n_train)),
                "lr_maps": 3e-3,
                "lr_prototypes": 3e-3,
                "lr_users": 3e-2,
                "patience": None,
                "rows_per_context": 16,
                **PERSONA_MAPS[maps],
            }
            kw = {"k_values": args.ks, "model": "pal-b", "shots": 10, **params}
            runs.append((f"Persona K*={k_star} ({maps} maps)", k_star, seed, {"data": data, **kw}))
    return runs


def summarize(records: list[dict]) -> tuple[list[dict], list[dict]]:
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    hit_rows, cv_rows = [], []
    for name in datasets:
        rs = [r for r in records if r["dataset"] == name]
        k_star = rs[0]["k_star"]
        row: dict = {"dataset": name, "K*": k_star, "runs": len(rs)}
        for rule in [*RULES, BASELINE]:
            chosen = [r["chosen"][rule] for r in rs]
            row[f"{rule}: =K*"] = f"{sum(c == k_star for c in chosen)}/{len(rs)}"
            row[f"{rule}: ±1"] = f"{sum(abs(c - k_star) <= 1 for c in chosen)}/{len(rs)}"
            row[f"{rule}: Ks"] = " ".join(map(str, chosen))
        hit_rows.append(row)
        ks = rs[0]["k_values"]
        for i, k in enumerate(ks):
            cv = {"dataset": name, "K": f"{k}" + (" (K*)" if k == k_star else "")}
            for metric in ("seen_accuracy", "seen_log_loss", "new_few_shot_accuracy"):
                values = [r["mean"][metric][i] for r in rs]
                cv[metric] = float(np.mean(values))
            cv["ours chose"] = sum(r["chosen"]["ours (combined)"] == k for r in rs)
            cv["naive chose"] = sum(r["chosen"][BASELINE] == k for r in rs)
            cv_rows.append(cv)
    return hit_rows, cv_rows


def plot(records: list[dict], path: Path) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name in datasets:
        rs = [r for r in records if r["dataset"] == name]
        ks = rs[0]["k_values"]
        for ax, metric in zip(axes, ("seen_log_loss", "new_few_shot_accuracy"), strict=True):
            mean = np.mean([r["mean"][metric] for r in rs], axis=0)
            (line,) = ax.plot(ks, mean, marker="o", label=name)
            i = ks.index(rs[0]["k_star"]) if rs[0]["k_star"] in ks else None
            if i is not None:
                ax.plot([ks[i]], [mean[i]], marker="*", markersize=14, color=line.get_color())
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seen users: held-out log loss (nats)")
    axes[1].set_ylabel("held-out users: accuracy after 10-20 answers")
    for ax in axes:
        ax.set_xlabel("number of prototypes K (star: K*)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=2, help="Persona seeds per K*")
    parser.add_argument("--synthetic-seeds", type=int, default=3, help="synthetic seeds per setting")
    parser.add_argument("--k-stars", type=int, nargs="+", default=[2, 3, 4, 6], help="Persona K*")
    parser.add_argument(
        "--persona-maps",
        nargs="+",
        default=["mlp", "linear"],
        choices=list(PERSONA_MAPS),
        help="PAL-B f and g_k",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6], help="K values (Persona)")
    parser.add_argument("--synthetic-ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--users-per-persona", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200, help="questions per Persona user")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per Persona fit")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--synthetic-users", type=int, default=100)
    parser.add_argument("--synthetic-epochs", type=int, default=100)
    parser.add_argument(
        "--which", nargs="+", default=["synthetic", "persona"], choices=["synthetic", "persona"]
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"), help="embedding cache directory")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (seconds)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/select_k"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.synthetic_seeds, args.k_stars, args.persona_maps = 1, 1, [2], ["linear"]
        args.ks, args.synthetic_ks = [1, 2, 3], [1, 2, 3]
        args.users_per_persona, args.queries, args.steps, args.batch = 10, 40, 10, 1024
        args.synthetic_users, args.synthetic_epochs = 20, 5
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = (synthetic_runs(args) if "synthetic" in args.which else []) + (
        persona_runs(args) if "persona" in args.which else []
    )
    records = []
    for name, k_star, seed, kw in runs:
        sel = select_k(folds=args.folds, seed=seed, **kw)
        chosen = choices(sel)
        records.append(
            {
                "dataset": name,
                "k_star": k_star,
                "seed": seed,
                "k_values": sel.k_values,
                "chosen": chosen,
                "mean": {m: sel.mean(m).tolist() for m in sel.scores},
                "selection": sel.to_dict(),
            }
        )
        console.print(
            f"{name} seed {seed}: ours K={chosen['ours (combined)']}, naive K={chosen[BASELINE]} "
            f"({sel.seconds:.0f} s)"
        )
    hit_rows, cv_rows = summarize(records)
    seconds = time.perf_counter() - start
    results = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "rules": {**{k: v for k, v in RULES.items()}, BASELINE: "argmax of mean seen_accuracy"},
        "hits": hit_rows,
        "cv_table": cv_rows,
        "runs": records,
        "seconds": seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    plot(records, args.out / "select_k.png")
    short = [
        {
            "dataset": r["dataset"],
            "runs": r["runs"],
            **{
                rule: f"{r[f'{rule}: =K*']} (±1: {r[f'{rule}: ±1']}; chose {r[f'{rule}: Ks']})"
                for rule in ("ours (combined)", BASELINE)
            },
        }
        for r in hit_rows
    ]
    console.print(rows_table(short, "chosen K = K* over seeds (within ±1; the chosen Ks), same CV tables"))
    console.print(
        rows_table(
            [{"dataset": r["dataset"], **{rule: r[f"{rule}: =K*"] for rule in RULES}} for r in hit_rows],
            "other rules on the same CV tables: chosen K = K*",
        )
    )
    console.print(
        rows_table(cv_rows, f"cross-validation means per K ({args.folds} folds, averaged over seeds)")
    )
    console.print(
        f"wrote {args.out / 'results.json'} and {args.out / 'select_k.png'} in {seconds:.0f} s "
        f"({torch.get_num_threads()} torch thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
