"""Real-data leaderboard (issue 15): every method on real people's votes, Persona and synthetic data.

    pluralign bench real-data [--seeds 3] [--datasets polis polis-each persona synthetic] [--quick]
    python benchmarks/real_data.py --help

Datasets: the seven Polis conversations of ../shared/data/polis (``polis``: pooled, users
``<conversation>/<participant>``; ``polis-each``: each conversation on its own), Persona (PAL App. D.4 at
reduced N: K* = 4 personas) and synthetic data (``pluralign.datasets.reference``: four planted groups of
users over 384-d vectors, BTL labels at a Bayes ceiling of 0.871).

Protocol, per dataset and seed s (every split seeded by s, ``pluralign.data.splits``):
- 20% of the users are held out as *unseen*; the others' comparisons are split 80/20 per user into
  training rows and *seen* held-out rows;
- every model trains on the training rows with the library's defaults (the step budget and its automatic
  10% validation share: what ``pluralign train`` does);
- seen: accuracy on the seen users' held-out rows;
- unseen: each unseen user's rows in one seeded order; the first 20 are their adaptation pool, the rest are
  scored (users with <= 20 rows are not scored); after n = 0 (zero-shot), 5, 10, 20 of the pool
  (``pluralign.evaluation.few_shot_curve``: nested sets across n).

Rows:
- ``majority``: each statement answered by its majority among the training rows (per prompt and unordered
  pair of responses; a tie or an unseen pair scores 0.5);
- ``groups (reference)``: the majority within the user's group: Polis's own opinion groups (``group-id`` of
  participants-votes.csv, computed by Polis from *all* votes, test votes included), or the planted persona /
  group of Persona and synthetic users. An oracle reference, not a method; users without a group (Polis
  does not cluster every participant) get the statement majority;
- ``btl``: one shared reward (Bradley-Terry); ``per-user``: every user's own linear reward; ``mf``: matrix
  factorisation with free user vectors; ``lore``: LoRe's low-rank linear basis; ``pal-a``, ``pal-b``: PAL.
  ``pal-b`` uses the K that ``select_k`` chooses on seed 0's training rows (half its step budget,
  ``--budget-share``); ``mf``, ``lore`` and ``pal-a`` use the same K (every low-rank method gets the same
  number of prototypes / rank).

Writes results.json (every number per seed), leaderboard.md (mean +- standard deviation over seeds) and
real_data.png (unseen users' accuracy against n). One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

import pluralign.estimator
from pluralign import __version__
from pluralign.atomic import atomic_write_json, atomic_write_text
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user, split_users, take_per_user
from pluralign.encoders import default_encoder, embed_data, open_cache
from pluralign.evaluation import few_shot_curve
from pluralign.report.plots import plt, save_figure
from pluralign.report.tables import rows_table
from pluralign.selection import select_k

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("polis", "polis-each", "persona", "synthetic")
SHOTS = (0, 5, 10, 20)
POOL = max(SHOTS)
BASELINES = ("majority", "groups (reference)")
#: method -> (estimator class name in pluralign.estimator, its K: None, "select" = select_k's choice,
#: "cv-accuracy" = the K of the best mean seen-user accuracy in select_k's cross-validation table)
METHODS: dict[str, tuple[str, str | None]] = {
    "btl": ("BTL", None),
    "per-user": ("PerUser", None),
    "mf": ("MatrixFactorization", "select"),
    "lore": ("LoRe", "select"),
    "pal-a": ("PALA", "select"),
    "pal-b": ("PALB", "select"),
    "pal-b-cv": ("PALB", "cv-accuracy"),
}
console = Console(width=200, stderr=True)
logger = logging.getLogger("real_data")


@dataclass
class Bench:
    """One dataset: embedded rows and a group label per entry of ``data.user_ids`` (-1: none)."""

    name: str
    data: PreferenceData
    groups: np.ndarray
    info: dict


# ========================================================================================================
# datasets
# ========================================================================================================
def _embedded(data: PreferenceData, cache: Path) -> PreferenceData:
    encoder = default_encoder()
    return embed_data(data, encoder, cache=open_cache(cache, encoder))


def _codes(labels: pd.Series) -> np.ndarray:
    """Integer codes of group labels, -1 where missing."""
    codes, _ = pd.factorize(labels)
    return np.where(labels.isna().to_numpy(), -1, codes).astype(np.int64)


def load_polis(args: argparse.Namespace) -> list[Bench]:
    from pluralign.datasets.polis import read_polis

    polis = read_polis(args.polis)
    data = _embedded(polis.to_preferences(), args.cache)
    users = polis.users.set_index("user_id")
    # a group is a conversation's group: conversation/group-id
    label = users["conversation"] + "/" + users["group_id"].astype("string")
    label = label.where(users["group_id"].notna())
    groups = _codes(label.reindex(data.user_ids))
    attribution = polis.attribution()
    benches = []
    if "polis" in args.datasets:
        benches.append(Bench("polis", data, groups, {"attribution": attribution, "rows": len(data)}))
    if "polis-each" in args.datasets:
        conversation = users["conversation"].reindex(data.user_ids).to_numpy()
        for name in sorted(set(conversation)):
            subset = data.subset(conversation[data.user] == name)
            benches.append(Bench(f"polis/{name}", subset, groups, {"rows": len(subset)}))
    return benches


def load_persona(args: argparse.Namespace) -> Bench:
    from pluralign.datasets.persona import build_persona, embed_persona

    ds = build_persona(
        k_star=4,
        users_per_persona=args.persona_users,
        queries_per_user=args.persona_queries,
        unseen_users_per_persona=0,
        seed=0,
    )
    ds = embed_persona(ds, cache_dir=args.cache)
    info = {"k_star": 4, "users_per_persona": args.persona_users, "queries_per_user": args.persona_queries}
    return Bench("persona", ds.seen, np.asarray(ds.seen_persona_of_user, dtype=np.int64), info)


def load_synthetic(args: argparse.Namespace) -> Bench:
    from pluralign.datasets.reference import make_reference

    ref = make_reference(
        users_per_group=args.synthetic_users, comparisons_per_user=args.synthetic_rows, seed=0
    )
    info = {"bayes_ceiling": ref.bayes_ceiling, "users_per_group": args.synthetic_users}
    return Bench("synthetic", ref.train, np.asarray(ref.groups, dtype=np.int64), info)


def load(args: argparse.Namespace) -> list[Bench]:
    benches: list[Bench] = []
    if {"polis", "polis-each"} & set(args.datasets):
        benches += load_polis(args)
    if "persona" in args.datasets:
        benches.append(load_persona(args))
    if "synthetic" in args.datasets:
        benches.append(load_synthetic(args))
    return benches


# ========================================================================================================
# baselines: majority per statement, and per (group, statement)
# ========================================================================================================
def _keys(data: PreferenceData, group: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: a key (group, context, unordered response pair) and the direction (+1: chosen is the lower
    item index of the pair)."""
    lo, hi = np.minimum(data.chosen, data.rejected), np.maximum(data.chosen, data.rejected)
    n_items = np.int64(len(data.items))
    key = (data.context.astype(np.int64) * n_items + lo) * n_items + hi
    if group is not None:
        key = key * np.int64(group.max() + 2) + (group + 1)
    return key, np.where(data.chosen == lo, 1, -1)


def _net_votes(train: PreferenceData, test: PreferenceData, group: np.ndarray | None) -> np.ndarray:
    """Per test row: the training rows' net vote on its key (0 when unseen)."""
    train_key, train_dir = _keys(train, None if group is None else group[train.user])
    test_key, _ = _keys(test, None if group is None else group[test.user])
    keys, inverse = np.unique(train_key, return_inverse=True)
    net = np.bincount(inverse, weights=train_dir, minlength=len(keys))
    pos = np.clip(np.searchsorted(keys, test_key), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == test_key) if len(keys) else np.zeros(len(test_key), dtype=bool)
    return np.where(found, net[pos] if len(keys) else 0.0, 0.0)


def majority_accuracy(train: PreferenceData, test: PreferenceData, groups: np.ndarray | None = None) -> float:
    """Accuracy of the majority vote per statement (``groups``: per group and statement, falling back to
    the statement's majority where the group has no vote or no label)."""
    _, direction = _keys(test, None)
    net = _net_votes(train, test, None)
    if groups is not None:
        group_net = _net_votes(train, test, groups)
        labelled = groups[test.user] >= 0
        net = np.where(labelled & (group_net != 0), group_net, net)
    score = np.where(net == 0, 0.5, (np.sign(net) == direction).astype(np.float64))
    return float(score.mean())


# ========================================================================================================
# one dataset, one seed
# ========================================================================================================
def splits(data: PreferenceData, seed: int) -> dict[str, PreferenceData]:
    seen, unseen = split_users(data, 0.2, seed=seed)
    train, test = split_per_user(seen, (0.8, 0.2), seed=seed)
    pool, unseen_test = take_per_user(unseen, POOL, seed=seed)
    return {"train": train, "test": test, "pool": pool, "unseen_test": unseen_test}


def method_k(rule: str | None, k: dict) -> int | None:
    """The K a method's rule takes from ``choose_k``'s result."""
    if rule is None:
        return None
    if rule == "cv-accuracy" and "seen_accuracy" in k:
        return int(np.argmax(k["seen_accuracy"])) + 1
    return k["k"]


def run_seed(bench: Bench, seed: int, k: dict, args: argparse.Namespace) -> dict:
    s = splits(bench.data, seed)
    out: dict = {
        "seed": seed,
        "rows": {name: len(part) for name, part in s.items()},
        "unseen_users_scored": len(np.unique(s["unseen_test"].user)),
        "methods": {},
    }
    for name, groups in (("majority", None), ("groups (reference)", bench.groups)):
        out["methods"][name] = {
            "seen": majority_accuracy(s["train"], s["test"], groups),
            "unseen": {str(n): majority_accuracy(s["train"], s["unseen_test"], groups) for n in SHOTS},
        }
    for name in args.methods:
        cls_name, rule = METHODS[name]
        n_prototypes = method_k(rule, k)
        params = {"seed": seed, "max_steps": args.max_steps}
        params.update({} if n_prototypes is None else {"n_prototypes": n_prototypes})
        est = getattr(pluralign.estimator, cls_name)(**params)
        start = time.perf_counter()
        est.fit(s["train"])
        seconds = time.perf_counter() - start
        curve = few_shot_curve(est, s["pool"], s["unseen_test"], SHOTS, seed=seed)
        out["methods"][name] = {
            "seen": est.score(s["test"]),
            "unseen": {str(int(n)): float(a) for n, a in zip(curve["shots"], curve["accuracy"], strict=True)},
            "seconds": seconds,
            "steps": est.history_.steps,
            "k": n_prototypes,
            "warnings": list(est.fit_warnings_),
        }
        logger.info(
            "%s seed %d %s: seen %.4f (%.1f s)", bench.name, seed, name, out["methods"][name]["seen"], seconds
        )
    return out


def choose_k(bench: Bench, args: argparse.Namespace) -> dict:
    """select_k's K for PAL-B on seed 0's training rows."""
    if args.k is not None:
        return {"k": args.k, "source": "--k"}
    if args.k_from is not None:  # a results.json, or the partial.json of a run still going
        previous = json.loads(args.k_from.read_text())["results"]
        if bench.name in previous:
            return {**previous[bench.name]["k"], "from": str(args.k_from)}
        logger.info("%s: not in %s, running select_k (same seed, same K)", bench.name, args.k_from)
    train = splits(bench.data, 0)["train"]
    start = time.perf_counter()
    sel = select_k(
        train,
        k_values=range(1, args.max_k + 1),
        budget_share=args.budget_share,
        seed=0,
        max_steps=args.max_steps,
    )
    return {
        "k": int(sel.chosen_k),
        "source": "select_k",
        "seconds": time.perf_counter() - start,
        "new_few_shot_accuracy": sel.mean("new_few_shot_accuracy").tolist(),
        "seen_accuracy": sel.mean("seen_accuracy").tolist(),
    }


# ========================================================================================================
# summaries
# ========================================================================================================
def summarize(seeds: list[dict]) -> dict[str, dict]:
    """method -> {"seen": (mean, sd), "unseen": {n: (mean, sd)}} over seeds."""

    def stat(values: list[float]) -> list[float]:
        v = np.asarray(values, dtype=np.float64)
        return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]

    out = {}
    for method in seeds[0]["methods"]:
        runs = [s["methods"][method] for s in seeds]
        out[method] = {
            "seen": stat([r["seen"] for r in runs]),
            "unseen": {str(n): stat([r["unseen"][str(n)] for r in runs]) for n in SHOTS},
        }
        if "seconds" in runs[0]:
            out[method]["seconds"] = stat([r["seconds"] for r in runs])
            out[method]["k"] = runs[0]["k"]
    return out


def pool_conversations(results: dict) -> dict[str, dict]:
    """The mean over Polis conversations of each seed's numbers (the per-conversation summary row set)."""
    names = [n for n in results if n.startswith("polis/")]
    if not names:
        return {}
    n_seeds = len(results[names[0]]["seeds"])
    seeds = []
    for i in range(n_seeds):
        methods = {}
        for method in results[names[0]]["seeds"][i]["methods"]:
            runs = [results[n]["seeds"][i]["methods"][method] for n in names]
            methods[method] = {
                "seen": float(np.mean([r["seen"] for r in runs])),
                "unseen": {str(n): float(np.mean([r["unseen"][str(n)] for r in runs])) for n in SHOTS},
            }
        seeds.append({"methods": methods})
    return {"seeds": seeds, "summary": summarize(seeds), "conversations": names}


def _cell(stat: list[float]) -> str:
    return f"{stat[0]:.4f} ± {stat[1]:.4f}"


def table_rows(summary: dict[str, dict]) -> list[dict]:
    rows = []
    for method, s in summary.items():
        name = f"{method} (K={s['k']})" if s.get("k") else method
        row = {"method": name, "seen": _cell(s["seen"])}
        row.update({f"unseen n={n}": _cell(s["unseen"][str(n)]) for n in SHOTS})
        row["fit s"] = f"{s['seconds'][0]:.1f}" if "seconds" in s else ""
        rows.append(row)
    return rows


def _md_table(rows: list[dict]) -> list[str]:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows), ""]


def conversation_rows(results: dict, metric: str) -> list[dict]:
    """One row per Polis conversation: each method's mean ``metric`` ("seen" or "unseen n=10") and K."""
    rows = []
    for name, res in results.items():
        if not name.startswith("polis/"):
            continue
        row = {"conversation": name.removeprefix("polis/"), "K": res["k"]["k"]}
        for method, stats in res["summary"].items():
            value = stats["seen"] if metric == "seen" else stats["unseen"][metric.split("=")[1]]
            row[method] = f"{value[0]:.4f}"
        rows.append(row)
    return rows


def markdown(results: dict, config: dict, conversations: dict | None = None) -> str:
    lines = [
        f"Real-data leaderboard: `pluralign bench real-data` at {config['commit']}, seeds "
        f"{config['seeds']}, {config['threads']} torch thread(s). Mean ± standard deviation over seeds.",
        "",
    ]
    for name, res in results.items():
        k = res.get("k", {}).get("k")
        info = res.get("info", {})
        lines += [f"### {name}" + (f" (K = {k} by select-k)" if k else ""), ""]
        if "rows" in info:
            lines += [f"{info['rows']:,} comparisons.", ""]
        lines += _md_table(table_rows(res["summary"]))
    for metric in ("seen", "unseen n=10") if conversations else ():
        rows = conversation_rows(conversations, metric)
        if rows:
            lines += [f"### each Polis conversation: {metric} (mean over seeds)", "", *_md_table(rows)]
    return "\n".join(lines)


def shown_results(payload: dict) -> dict[str, dict]:
    """The tables shown: each dataset but the single conversations, plus their mean."""
    shown = {n: r for n, r in payload["results"].items() if not n.startswith("polis/")}
    if payload.get("polis_conversations_mean"):
        shown["polis (mean of conversations)"] = payload["polis_conversations_mean"]
    return shown


def leaderboard_markdown(payload: dict) -> str:
    """leaderboard.md (and docs/real_data.md's tables) from a results.json payload."""
    return markdown(shown_results(payload), payload["config"], payload["results"])


def plot(results: dict, path: Path) -> None:
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method, s in results[name]["summary"].items():
            mean = [s["unseen"][str(n)][0] for n in SHOTS]
            sd = [s["unseen"][str(n)][1] for n in SHOTS]
            style = "--" if method in BASELINES else "-"
            ax.errorbar(SHOTS, mean, yerr=sd, label=method, linestyle=style, marker="o", capsize=2, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("votes of the unseen user (n)")
        ax.set_xticks(SHOTS)
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ========================================================================================================
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (splits and model seeds)")
    parser.add_argument("--k", type=int, help="K of every low-rank method (default: select_k's)")
    parser.add_argument("--k-from", type=Path, help="a previous results.json: reuse its K per dataset")
    parser.add_argument("--max-k", type=int, default=5, help="select_k tries K = 1..max-k")
    parser.add_argument("--max-steps", type=int, help="cap on every fit's steps (default: the budget's)")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="merge the methods of these results.json files (same seeds and data) instead of running",
    )
    parser.add_argument("--budget-share", type=float, default=0.5, help="select_k's share of the step budget")
    parser.add_argument("--persona-users", type=int, default=100, help="Persona: users per persona")
    parser.add_argument("--persona-queries", type=int, default=100, help="Persona: statements per user")
    parser.add_argument("--synthetic-users", type=int, default=100, help="synthetic: users per group")
    parser.add_argument("--synthetic-rows", type=int, default=100, help="synthetic: comparisons per user")
    parser.add_argument("--polis", type=Path, default=ROOT.parent / "shared" / "data" / "polis")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, K = 2, small Persona / synthetic")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/embedding_cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/real_data"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.k, args.max_steps = 1, args.k or 2, args.max_steps or 40
        args.persona_users, args.persona_queries = 10, 40
        args.synthetic_users, args.synthetic_rows = 10, 60
    return args


def run(args: argparse.Namespace) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for bench in load(args):
        console.print(
            f"{bench.name}: {len(bench.data):,} comparisons, {len(bench.data.users_present()):,} users"
        )
        k = choose_k(bench, args)
        seeds = [run_seed(bench, seed, k, args) for seed in range(args.seeds)]
        results[bench.name] = {"info": bench.info, "k": k, "seeds": seeds, "summary": summarize(seeds)}
        console.print(rows_table(table_rows(results[bench.name]["summary"]), title=bench.name))
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "partial.json", {"results": results})  # a crash loses one dataset
    return results


def combine(paths: list[Path]) -> tuple[dict[str, dict], dict]:
    """The results of several runs on the same data and seeds, their methods side by side."""
    payloads = [json.loads(p.read_text()) for p in paths]
    results = payloads[0]["results"]
    for path, payload in zip(paths[1:], payloads[1:], strict=True):
        for name, res in payload["results"].items():
            if name not in results:
                results[name] = res
                continue
            mine = results[name]
            if res["k"]["k"] != mine["k"]["k"] or len(res["seeds"]) != len(mine["seeds"]):
                raise SystemExit(f"error: {path}: {name} has another K or number of seeds than {paths[0]}")
            for a, b in zip(mine["seeds"], res["seeds"], strict=True):
                if a["rows"] != b["rows"]:
                    raise SystemExit(f"error: {path}: {name} seed {a['seed']} split differs from {paths[0]}")
                a["methods"].update(b["methods"])
            mine["summary"] = summarize(mine["seeds"])
    config = {**payloads[0]["config"], "combined": [str(p) for p in paths]}
    config["commit"] = ", ".join(dict.fromkeys(p["config"]["commit"] for p in payloads))
    config["seconds"] = sum(p["config"].get("seconds", 0.0) for p in payloads)
    return results, config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.combine:
        results, config = combine(args.combine)
    else:
        config = {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "commit": git_commit(),
            "pluralign": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "shots": list(SHOTS),
        }
        results = run(args)
        config["seconds"] = time.perf_counter() - start
    pooled = pool_conversations(results)
    if pooled:
        console.print(rows_table(table_rows(pooled["summary"]), title="polis: mean over conversations"))
    payload = {"config": config, "results": results, "polis_conversations_mean": pooled}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", payload)
    atomic_write_text(args.out / "leaderboard.md", leaderboard_markdown(payload))
    plot(shown_results(payload), args.out / "real_data.png")
    console.print(f"wrote {args.out}/results.json, leaderboard.md, real_data.png ({config['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
