"""Growing prototypes for a group the model never saw, against retraining from scratch, in one run.

    pluralign bench grow [--k-star 4] [--users 200] [--queries 200] [--no-synthetic]
    python benchmarks/grow.py --help

Persona (PAL App. D.4, reduced N): users hold one of K* personas. A PAL-B-Tiny model with K* - 1 prototypes is
trained on the users of K* - 1 persona groups (``--steps`` optimizer steps of 4,096 answers). Then new users
arrive: every user of the held-out group (or the first ``--new-users``) plus unseen users of the old groups.
Each arriving user's answers are split 90/10; ``grow`` sees the 90% (and the old groups' held-out answers as
the population to compare with), flags poorly explained users and adds one prototype trained on the flagged
users only. Reported, all on held-out answers:
- new group: accuracy before growing (few-shot weights over the old prototypes) and after;
- old groups (seen users): accuracy before / after, and whether every margin is bit-for-bit the same;
- detection: precision and recall of the flag against the true group;
- time of the grow step (detection + training) against the baseline, retraining PAL-B with K* prototypes
  from scratch on all groups' data for as many epochs, and that baseline's accuracies. Times are this
  process's CPU seconds (one thread; the machine may be shared), the fastest of ``--repeats`` alternating
  runs of each.
A synthetic variant (PAL-A, the paper's ideal points, partition setting, K* = 3) does the same with the
users of the third prototype arriving. One torch thread. Writes results.json and grow.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user
from pluralign.datasets.persona import build_persona, embed_persona
from pluralign.datasets.synthetic import make_synthetic
from pluralign.demo import PERSONA_PARAMS, SYNTHETIC_PARAMS
from pluralign.estimator import PALA, PALB, PALEstimator
from pluralign.report.plots import plt, save_figure
from pluralign.report.tables import rows_table

console = Console(width=120)


def _concat(parts: list[PreferenceData]) -> PreferenceData:
    """Rows of several subsets of one dataset (they share the user, item and context tables)."""
    first = parts[0]
    return dataclasses.replace(
        first,
        user=np.concatenate([p.user for p in parts]),
        context=np.concatenate([p.context for p in parts]),
        chosen=np.concatenate([p.chosen for p in parts]),
        rejected=np.concatenate([p.rejected for p in parts]),
        source_line=None,
    )


def _stack(first: PreferenceData, second: PreferenceData) -> PreferenceData:
    """The rows of two datasets over the same items and contexts in one user table (second's users after
    first's); subsets of ``first`` keep their user indices in it."""
    return dataclasses.replace(
        _concat([first, dataclasses.replace(second, user=second.user + first.n_users)]),
        user_ids=np.concatenate([first.user_ids, second.user_ids]),
    )


def _timed(fn):
    """``fn()``, its wall-clock seconds and this process's CPU seconds (one thread: robust to neighbours)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_case(
    name: str,
    make_estimator,
    k_star: int,
    old_train: PreferenceData,
    old_test: PreferenceData,
    new_fit: PreferenceData,
    new_test: PreferenceData,
    new_group: set[str],
    grow_epochs: int | None,
    repeats: int,
) -> dict:
    """Train on the old groups, grow for the arrivals, and retrain from scratch on everything."""
    est = make_estimator(k_star - 1)
    start = time.perf_counter()
    est.fit(old_train)
    train_seconds = time.perf_counter() - start
    is_new = np.isin(new_test.user_ids[new_test.user].astype(str), list(new_group))
    new_group_test, old_arrivals_test = new_test.subset(is_new), new_test.subset(~is_new)
    few_shot = est.copy()
    few_shot.adapt(new_fit)
    before = {
        "new_group": few_shot.score(new_group_test),
        "old_arrivals": few_shot.score(old_arrivals_test),
        "old_groups": est.score(old_test),
    }
    old_margins = est.margins(old_test)

    pristine = est
    est, grow_wall, grow_cpu = _timed(
        lambda: pristine.grow(new_fit, 1, reference=old_test, epochs=grow_epochs)
    )
    report = est.grow_report_
    flagged = set(report.flagged)
    after = {
        "new_group": est.score(new_group_test),
        "old_arrivals": est.score(old_arrivals_test),
        "old_groups": est.score(old_test),
    }
    identical = bool(np.array_equal(old_margins, est.margins(old_test)))

    everything = _concat([old_train, new_fit])
    baseline, retrain_wall, retrain_cpu = _timed(lambda: make_estimator(k_star).fit(everything))
    # the machine is shared: repeat both timings (alternating) and keep the fastest of each
    for _ in range(repeats - 1):
        _, wall, cpu = _timed(lambda: pristine.grow(new_fit, 1, reference=old_test, epochs=grow_epochs))
        grow_wall, grow_cpu = min(grow_wall, wall), min(grow_cpu, cpu)
        _, wall, cpu = _timed(lambda: make_estimator(k_star).fit(everything))
        retrain_wall, retrain_cpu = min(retrain_wall, wall), min(retrain_cpu, cpu)
    grow_seconds, retrain_seconds = grow_cpu, retrain_cpu
    retrained = {
        "new_group": baseline.score(new_group_test),
        "old_arrivals": baseline.score(old_arrivals_test),
        "old_groups": baseline.score(old_test),
    }
    true_positive = len(flagged & new_group)
    result = {
        "case": name,
        "k_before": k_star - 1,
        "k_after": report.n_prototypes_after,
        "train_seconds": train_seconds,
        "grow_seconds": grow_seconds,
        "grow_wall_seconds": grow_wall,
        "grow_detect_seconds": report.detect_seconds,
        "grow_train_seconds": report.grow_seconds,
        "retrain_seconds": retrain_seconds,
        "retrain_wall_seconds": retrain_wall,
        "timing": f"process CPU seconds (1 thread), fastest of {repeats} alternating runs each",
        "retrain_over_grow": retrain_seconds / grow_seconds,
        "before": before,
        "after": after,
        "retrained": retrained,
        "old_groups_margins_identical": identical,
        "old_groups_drop_points": 100 * (before["old_groups"] - after["old_groups"]),
        "arrivals": len(report.detection),
        "new_group_users": len(new_group),
        "flagged": len(flagged),
        "precision": true_positive / max(len(flagged), 1),
        "recall": true_positive / max(len(new_group), 1),
        "population_accuracy": report.population["accuracy"],
        "grow_steps": report.steps,
        "grow_rows": int(np.isin(new_fit.user_ids[new_fit.user].astype(str), list(flagged)).sum()),
        "retrain_rows": len(old_train) + len(new_fit),
    }
    console.print(
        f"{name}: new group {before['new_group']:.4f} -> {after['new_group']:.4f} (retrained "
        f"{retrained['new_group']:.4f}); old groups {before['old_groups']:.4f} -> {after['old_groups']:.4f}, "
        f"margins identical {identical}; grow {grow_seconds:.1f} s vs retrain {retrain_seconds:.1f} s"
    )
    return result


def persona_case(args: argparse.Namespace) -> dict:
    data = build_persona(
        k_star=args.k_star,
        users_per_persona=args.users,
        queries_per_user=args.queries,
        unseen_users_per_persona=args.unseen_users,
        unseen_queries_per_user=args.queries,
        seed=args.seed,
    )
    data = embed_persona(data, cache_dir=args.cache)
    held_out = args.k_star - 1
    full = _stack(data.seen, data.unseen)
    persona = np.concatenate([data.seen_persona_of_user, data.unseen_persona_of_user])[full.user]
    seen = full.user < data.seen.n_users
    old_train, old_test = split_per_user(
        full.subset(seen & (persona != held_out)), (0.9, 0.1), seed=args.seed
    )
    # arrivals: every user of the held-out group (seen split) and the old groups' unseen users
    new_group_rows = seen & (persona == held_out)
    if args.new_users is not None:  # only the first N users of the held-out group arrive
        first = np.flatnonzero(data.seen_persona_of_user == held_out)[: args.new_users]
        new_group_rows &= np.isin(full.user, first)
    arrivals = full.subset(new_group_rows | (~seen & (persona != held_out)))
    new_fit, new_test = split_per_user(arrivals, (0.9, 0.1), seed=args.seed)
    new_group = set(full.user_ids[np.unique(full.user[new_group_rows])].astype(str))
    n_train = len(old_train)

    def make(k: int) -> PALEstimator:
        epochs = max(1, round(args.steps * PERSONA_PARAMS["batch_size"] / n_train))
        params = {**PERSONA_PARAMS, "epochs": epochs, "rows_per_context": 16}
        return PALB(n_prototypes=k, seed=args.seed, **params)

    result = run_case(
        f"Persona K*={args.k_star} (PAL-B)",
        make,
        args.k_star,
        old_train,
        old_test,
        new_fit,
        new_test,
        new_group,
        args.grow_epochs,
        args.repeats,
    )
    result["personas"] = list(data.personas)
    result["held_out_persona"] = data.personas[held_out]
    return result


def synthetic_case(args: argparse.Namespace) -> dict:
    data = make_synthetic(
        model="pal_a",
        setting="partition",
        n_prototypes=3,
        n_users=90,
        n_train=100,
        n_test=50,
        n_unseen_users=45,
        n_unseen_per_user=100,
        seed=args.seed,
    )
    group = data.true_weights.argmax(1)
    full = _stack(data.train, data.unseen)
    # train's and test's users keep their indices in the stacked user table
    old_train = dataclasses.replace(data.train.subset(group[data.train.user] < 2), user_ids=full.user_ids)
    old_test = dataclasses.replace(data.test.subset(group[data.test.user] < 2), user_ids=full.user_ids)
    # the arrivals are the unseen users (all three groups); their answers split 90/10
    new_fit, new_test = split_per_user(
        full.subset(full.user >= data.train.n_users), (0.9, 0.1), seed=args.seed
    )
    new_group = set(data.unseen.user_ids[data.unseen_weights.argmax(1) == 2].astype(str))

    def make(k: int) -> PALEstimator:
        return PALA(
            n_prototypes=k, dim=16, seed=args.seed, **{**SYNTHETIC_PARAMS, "epochs": args.synthetic_epochs}
        )

    return run_case(
        "synthetic K*=3 (PAL-A, partition)",
        make,
        3,
        old_train,
        old_test,
        new_fit,
        new_test,
        new_group,
        args.synthetic_grow_epochs,
        args.repeats,
    )


def table_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        for label, key in (
            ("new group", "new_group"),
            ("old groups", "old_groups"),
            ("old-group arrivals", "old_arrivals"),
        ):
            rows.append(
                {
                    "case": r["case"],
                    "users": label,
                    "before (K-1)": r["before"][key],
                    "after grow (K)": r["after"][key],
                    "retrained (K)": r["retrained"][key],
                }
            )
    return rows


def plot(results: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        groups = ["new group", "old groups"]
        keys = ["new_group", "old_groups"]
        x = np.arange(len(groups))
        for i, (label, field) in enumerate(
            (("before", "before"), ("after grow", "after"), ("retrained", "retrained"))
        ):
            ax.bar(x + (i - 1) * 0.27, [r[field][k] for k in keys], 0.27, label=label)
        ax.set_xticks(x, groups)
        ax.set_ylim(0.5, 1.0)
        ax.set_ylabel("held-out accuracy")
        seconds = f"grow {r['grow_seconds']:.1f} CPU s vs retrain {r['retrain_seconds']:.1f} CPU s"
        ax.set_title(f"{r['case']}\n{seconds}")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k-star", type=int, default=4, help="persona groups; K* - 1 are trained on")
    parser.add_argument("--users", type=int, default=200, help="seen users per persona")
    parser.add_argument(
        "--new-users", type=int, default=None, help="arriving users of the held-out group (default: all)"
    )
    parser.add_argument("--unseen-users", type=int, default=50, help="arriving users per old persona")
    parser.add_argument("--queries", type=int, default=200, help="questions per user")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each full training")
    parser.add_argument("--grow-epochs", type=int, default=None, help="default: the model's epochs")
    parser.add_argument("--synthetic-epochs", type=int, default=SYNTHETIC_PARAMS["epochs"])
    parser.add_argument("--synthetic-grow-epochs", type=int, default=None, help="default: the model's")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs of grow and of retraining")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic PAL-A variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"), help="embedding cache")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/grow"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = [persona_case(args)]
    if not args.no_synthetic:
        results.append(synthetic_case(args))
    console.print(
        rows_table(
            table_rows(results), "Held-out accuracy: before growing, after, and retrained from scratch"
        )
    )
    speed = [
        {
            "case": r["case"],
            "grow CPU s (detect + train)": r["grow_seconds"],
            "retrain CPU s": r["retrain_seconds"],
            "retrain / grow": r["retrain_over_grow"],
            "flagged": f"{r['flagged']} / {r['arrivals']}",
            "precision": r["precision"],
            "recall": r["recall"],
            "old margins identical": r["old_groups_margins_identical"],
        }
        for r in results
    ]
    console.print(rows_table(speed, f"Grow step vs full retraining ({torch.get_num_threads()} thread)"))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(args.out / "results.json", payload)
    png = plot(results, args.out / "grow.png")
    print(f"wrote {args.out / 'results.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
