"""Training with the library's default settings at every scale: defaults vs the best of a small tuning grid.

    pluralign bench defaults [--quick] [--skip-large] [--datasets examples polis ...] [--out DIR]
    python benchmarks/defaults.py --help

Issue 14's benchmark. Datasets (each: training rows and held-out rows of the same users):

- ``examples``: the 12-row, 4-user hand-written set ``examples/train.jsonl``, held out ``examples/val.jsonl``;
- ``persona``: what ``pluralign demo persona`` trains on (K* = 4, 250 users per persona x 200 statements,
  a 90/10 split within each user);
- ``polis``: the seven real Polis conversations of ``--polis`` (default ``../shared/data/polis``) pooled by
  ``pluralign.datasets.polis.read_polis`` (default options), 10% of each user's votes held out
  (``split_per_user``, seeded);
- ``reference``: DESIGN.md's official-reference synthetic data (``pluralign.datasets.reference``: 4 groups
  x 500 users, 384-d vectors, 200k training comparisons, 25 held-out per user, Bayes ceiling 0.871),
  given to the estimator as already-embedded ``PreferenceData``;
- ``persona-4m``: Persona with 5,000 users per persona x 200 training statements = 4M comparisons (+ 20
  held out per user); ``--skip-large`` (and ``--quick``) leave it out.

Texts are embedded once with the default encoder (all-MiniLM-L6-v2) through an embedding cache under
``--cache``; the estimators get embedded data, so wall times are training only. Every dataset's model has
K = 4 where the data's own setting names it (Persona: the demo's K; reference: DESIGN.md's K = 4) and the
library's default K otherwise (examples, Polis), as a new user would; K is the only argument the estimator
gets.

For each dataset and each of ``--threads`` (default 1 and 2 torch threads):
- defaults: ``PALB(n_prototypes=K).fit(train)``, no training argument at all, whatever the library's
  defaults are; reported: wall time of ``fit``, held-out accuracy, ``history_.comparisons_per_second``,
  steps, epochs and the other scalar ``history_`` fields.
Then, on one thread only, a grid: ``--grid-batches`` (``full`` = every training row; capped at the row count)
x ``--grid-lr-mults`` (multiplying ``lr_maps``, ``lr_prototypes`` and ``lr_users`` together), everything
else default (``--grid-epochs`` bounds each run, for defaults whose budget is too long for a grid); the best
held-out accuracy any setting reached and its setting, and the gap defaults - best. ``persona-4m`` runs the
defaults only (nine 4M-row fits would take most of an hour on one thread).

Targets (issue 14): defaults within 0.5 points of the best grid setting; <= 60 s on one thread for every
dataset of <= 500k comparisons; the reference data: >= 0.865 held-out accuracy with the defaults and
>= 500k comparisons/s at the best grid setting's batch size (one thread).

``--curve`` instead runs a fixed-step grid (explicit ``batch_size``, lr multiplier and epochs, no early
stopping, the held-out rows scored after every epoch) and reports held-out accuracy against optimizer
steps at ``--curve-steps``: the data for choosing the defaults.

Each (dataset, threads) measurement runs in its own subprocess (this script with ``--only``), so thread
settings and memory do not mix. Seeds are fixed (``--seed``): reruns give the same accuracies. Results:
tables and ``<out>/results.json`` (atomic).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences
from pluralign.data.splits import split_per_user, take_per_user
from pluralign.datasets.persona import build_persona, embed_persona
from pluralign.datasets.reference import make_reference
from pluralign.encoders import default_encoder, embed_data, open_cache
from pluralign.estimator import PALB
from pluralign.training import budget
from pluralign.version import __version__

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("examples", "persona", "polis", "reference", "persona-4m")
LARGE = ("persona-4m",)
LR_NAMES = ("lr_maps", "lr_prototypes", "lr_users")
#: issue 14's targets
GAP_POINTS = 0.5
WALL_SECONDS, WALL_MAX_ROWS = 60.0, 500_000
REFERENCE_ACCURACY, REFERENCE_SPEED = 0.865, 500_000


class Loaded(NamedTuple):
    train: PreferenceData
    test: PreferenceData
    k: int | None  # None: the library's default K
    info: dict


# ========================================================================================================
# datasets
# ========================================================================================================
def _embedded(data: PreferenceData, cache: Path) -> PreferenceData:
    encoder = default_encoder()
    return embed_data(data, encoder, cache=open_cache(cache, encoder))


def _persona(args: argparse.Namespace, users: int, queries: int, heldout: int | None) -> Loaded:
    """Persona K* = 4; ``heldout`` None: the demo's 90/10 split per user, else ``queries`` train rows per
    user and ``heldout`` held out."""
    total = queries if heldout is None else queries + heldout
    ds = build_persona(
        k_star=4, users_per_persona=users, queries_per_user=total, unseen_users_per_persona=0, seed=args.seed
    )
    ds = embed_persona(ds, cache_dir=args.cache)
    if heldout is None:
        train, test = split_per_user(ds.seen, (0.9, 0.1), seed=args.seed)
    else:
        train, test = take_per_user(ds.seen, queries, seed=args.seed)
    return Loaded(train, test, 4, {"users_per_persona": users, "queries_per_user": total})


def load(name: str, args: argparse.Namespace) -> Loaded:
    if name == "examples":
        train = _embedded(read_preferences(ROOT / "examples" / "train.jsonl"), args.cache)
        test = _embedded(read_preferences(ROOT / "examples" / "val.jsonl"), args.cache)
        return Loaded(train, test, None, {"source": "examples/train.jsonl, examples/val.jsonl"})
    if name == "persona":
        return _persona(args, args.persona_users, args.persona_queries, None)
    if name == "persona-4m":
        return _persona(args, args.large_users, args.large_queries, args.large_heldout)
    if name == "polis":
        from pluralign.datasets.polis import read_polis

        data = _embedded(read_polis(args.polis).to_preferences(), args.cache)
        train, test = split_per_user(data, (0.9, 0.1), seed=args.seed)
        return Loaded(train, test, None, {"source": str(args.polis), "conversations": "pooled"})
    if name == "reference":
        ref = make_reference(
            users_per_group=args.reference_users,
            comparisons_per_user=args.reference_comparisons,
            seed=args.seed,
        )
        info = {"bayes_ceiling": ref.bayes_ceiling, "bayes_realized": ref.bayes_realized, "noise": ref.noise}
        return Loaded(ref.train, ref.test, 4, {**info, "users_per_group": args.reference_users})
    raise ValueError(f"unknown dataset {name!r}")


# ========================================================================================================
# one subprocess: the defaults, the grid or the fixed-step curves of one dataset
# ========================================================================================================
def _history_fields(est: PALB) -> dict:
    """Every scalar field of ``history_`` (whatever the library records), plus steps and epochs."""
    history = est.history_
    out = {
        f.name: getattr(history, f.name)
        for f in dataclasses.fields(history)
        if isinstance(getattr(history, f.name), int | float | bool | str | type(None))
    }
    out["steps_run"] = history.steps
    out["epochs_run"] = history.steps / history.steps_per_epoch if history.steps_per_epoch else None
    out["train_accuracy"] = history.records[-1]["train_accuracy"] if history.records else None
    out["settings"] = history.settings
    return out


def _fit(loaded: Loaded, params: dict, val: PreferenceData | None = None) -> tuple[PALB, dict]:
    est = PALB(**({} if loaded.k is None else {"n_prototypes": loaded.k}), **params)
    start = time.perf_counter()
    est.fit(loaded.train, val)
    wall = time.perf_counter() - start
    run = {
        "params": params,
        "n_prototypes": est.n_prototypes,
        "batch_size": est.history_.settings.get("batch_size", est.batch_size),
        "wall_seconds": wall,
        "heldout_accuracy": est.score(loaded.test),
        **_history_fields(est),
    }
    return est, run


def grid_points(n: int, batches: list[str], mults: list[float]) -> list[tuple[int, float]]:
    sizes = sorted({n if b == "full" else min(int(b), n) for b in batches})
    return [(b, m) for b in sizes for m in mults]


def lr_params(mult: float, batch_size: int) -> dict:
    """The learning rates the library derives for ``batch_size`` (``training.budget``), times ``mult``."""
    return {name: budget.BASE_LR[name] * budget.lr_scale(batch_size, name) * mult for name in LR_NAMES}


def run_child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.child_threads)
    start = time.perf_counter()
    loaded = load(args.only, args)
    n = len(loaded.train)
    out = {
        "dataset": args.only,
        "threads": torch.get_num_threads(),
        "train_rows": n,
        "heldout_rows": len(loaded.test),
        "users": len(loaded.train.users_present()),
        "setup_seconds": time.perf_counter() - start,
        "info": loaded.info,
    }
    if args.mode in ("defaults", "defaults+grid"):
        _, out["defaults"] = _fit(loaded, {})  # first, in a fresh process
        progress(args, out["defaults"])
    if args.mode == "defaults+grid":  # then the grid, in the same (one-thread) process
        extra = {} if args.grid_epochs is None else {"epochs": args.grid_epochs}
        out["grid"] = []
        for b, m in grid_points(n, args.grid_batches, args.grid_lr_mults):
            out["grid"].append(
                _fit(loaded, {"batch_size": b, **lr_params(m, b), **extra})[1] | {"lr_mult": m}
            )
            progress(args, out["grid"][-1])
    if args.mode == "curve":  # curve: fixed steps, the held-out rows scored after every epoch
        out["curve"] = []
        for b, m in grid_points(n, args.grid_batches, args.grid_lr_mults):
            per_epoch = math.ceil(n / b)
            steps = min(max(args.curve_steps), max(args.curve_max_comparisons // b, per_epoch))
            params = {
                "batch_size": b,
                **lr_params(m, b),
                "epochs": math.ceil(steps / per_epoch),
                "patience": None,
            }
            est, run = _fit(loaded, params, loaded.test)
            seconds = np.cumsum([r["seconds"] for r in est.history_.records])
            points = [
                {"steps": r["step"], "seconds": float(seconds[i]), "heldout_accuracy": r["val_accuracy"]}
                for i, r in enumerate(est.history_.records)
            ]
            out["curve"].append({"batch_size": b, "lr_mult": m, "points": points, **run})
            progress(args, out["curve"][-1])
    return out


def progress(args: argparse.Namespace, run: dict) -> None:
    """Append a finished fit to ``<out>/progress.jsonl`` (a log to follow long runs; results.json is the
    result)."""
    record = {"dataset": args.only, "mode": args.mode, "threads": args.child_threads, **run}
    with open(args.out / "progress.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def spawn(dataset: str, mode: str, threads: int, argv: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    cmd += ["--only", dataset, "--mode", mode, "--child-threads", str(threads)]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {dataset} {mode} run failed (exit {done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ========================================================================================================
# the parent: one subprocess per dataset and thread count, tables, targets, results.json
# ========================================================================================================
def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def summarize(name: str, defaults: dict[int, dict], grid: dict) -> dict:
    """Defaults vs the best grid setting and the targets for one dataset."""
    one = defaults.get(1) or next(iter(defaults.values()))
    best = max(grid["grid"], key=lambda r: r["heldout_accuracy"]) if grid else None
    gap = None if best is None else one["defaults"]["heldout_accuracy"] - best["heldout_accuracy"]
    small = one["train_rows"] <= WALL_MAX_ROWS
    wall_ok = one["defaults"]["wall_seconds"] <= WALL_SECONDS if small and 1 in defaults else None
    out = {
        "dataset": name,
        "best": None
        if best is None
        else {k: best[k] for k in ("batch_size", "lr_mult", "heldout_accuracy")}
        | {"comparisons_per_second": best["comparisons_per_second"], "wall_seconds": best["wall_seconds"]},
        "gap": gap,
        "gap_target_met": None if gap is None else gap >= -GAP_POINTS / 100,
        "wall_target_met": wall_ok,
    }
    if name == "reference":
        out["reference_accuracy_target_met"] = one["defaults"]["heldout_accuracy"] >= REFERENCE_ACCURACY
        if best is not None:
            out["reference_speed_target_met"] = best["comparisons_per_second"] >= REFERENCE_SPEED
        out["bayes_ceiling"] = one["info"]["bayes_ceiling"]
    return out


def print_tables(console: Console, results: dict, summaries: dict) -> None:
    table = Table(
        title="PALB(n_prototypes=K).fit(train) with the library's defaults vs the best grid setting",
        caption=(
            f"acc = held-out accuracy; gap = defaults - best, target >= -{GAP_POINTS} points; wall target "
            f"<= {WALL_SECONDS:g} s on 1 thread for <= {WALL_MAX_ROWS:,} rows; reference: acc >= "
            f"{REFERENCE_ACCURACY} (defaults) and >= {REFERENCE_SPEED:,} cmp/s at the best batch size"
        ),
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    columns = ["dataset", "rows", "K", "thr", "batch", "steps", "epochs", "wall s", "cmp/s", "acc"]
    columns += ["best acc", "best at", "gap pts", "gap", "wall", "ref"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("dataset", "best at") else "right", no_wrap=True)
    for name, by_threads in results.items():
        s = summaries[name]
        for threads, r in sorted(by_threads["defaults"].items()):
            d = r["defaults"]
            best = s["best"]
            ref = ""
            if name == "reference":
                ref = f"ceiling {s['bayes_ceiling']:.3f}; acc {_mark(s['reference_accuracy_target_met'])}"
                if "reference_speed_target_met" in s:
                    ref += f", speed {_mark(s['reference_speed_target_met'])}"
            first = threads == min(by_threads["defaults"])
            table.add_row(
                name,
                f"{r['train_rows']:,}",
                str(d["n_prototypes"]),
                str(threads),
                f"{d['batch_size']:,}",
                str(d["steps_run"]),
                str(d["epochs_run"]),
                f"{d['wall_seconds']:.1f}",
                f"{d['comparisons_per_second']:,.0f}",
                f"{d['heldout_accuracy']:.4f}",
                f"{best['heldout_accuracy']:.4f}" if best and first else "",
                f"b={best['batch_size']:,} lr x{best['lr_mult']:g}" if best and first else "",
                f"{100 * s['gap']:+.2f}" if best and first else "",
                _mark(s["gap_target_met"]) if first else "",
                _mark(s["wall_target_met"]) if threads == 1 else "",
                ref if first else "",
            )
    console.print(table)


def curve_markdown(results: dict, checkpoints: list[int], commit: str) -> str:
    """The fixed-step grid as a markdown table: held-out accuracy at the first epoch end >= each step
    count."""
    lines = [
        f"Fixed-step grid (benchmarks/defaults.py --curve), 1 torch thread, commit {commit}. Explicit",
        "batch size, lr multiplier x (lr_maps, lr_prototypes, lr_users) defaults, epochs chosen for the",
        "step count, patience=None, the held-out rows scored after every epoch (steps = the first epoch",
        "end at or past the step count; seconds = training seconds to that point, validation excluded).",
        "Everything else default.",
        "",
        "| dataset | rows | batch | lr mult | steps | seconds | held-out acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for run in r["curve"]:
            shown = set()
            for c in checkpoints:
                p = next((p for p in run["points"] if p["steps"] >= c), None)
                if p is None or p["steps"] in shown:
                    continue
                shown.add(p["steps"])
                lines.append(
                    f"| {name} | {r['train_rows']:,} | {run['batch_size']:,} | {run['lr_mult']:g} | "
                    f"{p['steps']} | {p['seconds']:.1f} | {p['heldout_accuracy']:.4f} |"
                )
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return (
        done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        if done.returncode == 0
        else "unknown"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--skip-large", action="store_true", help="leave out persona-4m")
    parser.add_argument(
        "--quick", action="store_true", help="no persona-4m, a 2 x 2 grid, small Persona/reference sizes"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch threads of the defaults (the grid runs in the 1-thread process; without 1: no grid)",
    )
    parser.add_argument("--grid-batches", nargs="+", default=["1024", "4096", "16384"])
    parser.add_argument("--grid-lr-mults", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--grid-epochs", type=int, help="epochs of every grid run (default: the library's)")
    parser.add_argument("--no-grid", action="store_true", help="the defaults only")
    parser.add_argument("--curve", action="store_true", help="the fixed-step grid instead (module docstring)")
    parser.add_argument("--curve-steps", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument(
        "--curve-max-comparisons", type=int, default=3_000_000, help="cap on rows a curve run trains on"
    )
    parser.add_argument("--persona-users", type=int, default=250, help="Persona: users per persona")
    parser.add_argument("--persona-queries", type=int, default=200, help="Persona: statements per user")
    parser.add_argument("--large-users", type=int, default=5_000, help="persona-4m: users per persona")
    parser.add_argument("--large-queries", type=int, default=200, help="persona-4m: training rows per user")
    parser.add_argument("--large-heldout", type=int, default=20, help="persona-4m: held-out rows per user")
    parser.add_argument("--reference-users", type=int, default=500, help="reference: users per group")
    parser.add_argument("--reference-comparisons", type=int, default=100, help="reference: rows per user")
    parser.add_argument("--polis", type=Path, default=ROOT.parent / "shared" / "data" / "polis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/embedding_cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/defaults"))
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="defaults", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.skip_large = True
        if "--grid-batches" not in (argv or sys.argv):
            args.grid_batches = ["full", "256"]
        if "--grid-lr-mults" not in (argv or sys.argv):
            args.grid_lr_mults = [1.0, 4.0]
    if args.skip_large:
        args.datasets = [d for d in args.datasets if d not in LARGE]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(run_child(args)))
        return 0
    console = Console(width=160)
    args.out.mkdir(parents=True, exist_ok=True)
    forwarded = list(sys.argv[1:] if argv is None else argv)
    commit = git_commit()
    results: dict[str, dict] = {}
    for name in args.datasets:
        console.print(f"{name} ...")
        if args.curve:
            results[name] = spawn(name, "curve", 1, forwarded)
            continue
        results[name] = {"defaults": {}}
        grid = not args.no_grid and name not in LARGE  # a grid point on 4M rows is minutes: defaults only
        for t in args.threads:
            mode = "defaults+grid" if t == 1 and grid else "defaults"
            results[name]["defaults"][t] = spawn(name, mode, t, forwarded)
            if "grid" in results[name]["defaults"][t]:
                results[name]["grid"] = {"grid": results[name]["defaults"][t].pop("grid")}
    payload = {
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("only", "mode", "child_threads")},
            "out": str(args.out),
            "cache": str(args.cache),
            "polis": str(args.polis),
            "commit": commit,
            "pluralign": __version__,
            "library_defaults": {k: v for k, v in PALB().get_params().items() if not isinstance(v, Path)},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
    }
    if args.curve:
        text = curve_markdown(results, args.curve_steps, commit)
        (args.out / "curve.md").write_text(text)
        console.print(text)
        payload["curve"] = results
    else:
        summaries = {name: summarize(name, r["defaults"], r.get("grid")) for name, r in results.items()}
        print_tables(console, results, summaries)
        payload["results"] = results
        payload["summary"] = summaries
    atomic_write_json(args.out / "results.json", payload)
    console.print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
