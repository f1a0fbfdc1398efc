"""From personalized rewards to personalized policies, on SmolLM2-135M (CPU): who gets served?

    pluralign bench personal-policy [--users 30] [--steps 12] [--out DIR]      (make bench-personal-policy)
    python benchmarks/personal_policy.py --help

Task (PAL's TL;DR length experiment, App. D.3, in miniature). Users answer open questions; a majority
(type "long", 70%) prefers the longer of two answers, a minority ("short", 30%) the shorter, each label
flipped with probability ``--noise`` (0.1). Length is counted in words: an objective ground truth.

1. Candidate answers: ``--candidates`` answers per training prompt sampled from the base SmolLM2.
2. Labels: every user compares ``--pairs`` random pairs of candidates (ties in length are skipped).
3. Reward models on those labels, with the all-MiniLM-L6-v2 embeddings: BTL (one reward) and PAL-B K = 2.
4. Policies, judged on held-out prompts by the ground-truth win rate against the base model's answers
   (each answer vs every base candidate to the same prompt; equal lengths count 1/2), per user type:
   * best-of-n of the base's candidates by the BTL reward, and by each user's PAL reward;
   * one pooled GRPO policy on the BTL reward vs the PAL prototype policies (``pluralign.rl
     .PrototypePolicies``: a user is served the adapter of their largest weight);
   * DPO, MixDPO (LogNormal) and EM-DPO (2 types; a user gets their most probable type) of ``pluralign.dpo``
     trained on the same labelled pairs, with the same optimizer-step budget as one GRPO policy;
   * unknown users: the MMRA mixture over the prototype policies (weights from the reward model's values
     alone) vs the pooled policy, by worst-type regret: a type's regret is the best win rate any policy of
     the table reaches for it minus the policy's.
Step times (seconds per optimizer step) are in the table; torch uses one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.atomic import atomic_write_json

TOPICS = [
    "learning to cook",
    "running a first marathon",
    "saving money",
    "learning guitar",
    "growing tomatoes",
    "writing a cover letter",
    "sleeping better",
    "learning Spanish",
    "starting a podcast",
    "keeping a cat",
    "painting a room",
    "travelling by train",
    "reading more books",
    "making friends in a new city",
    "baking bread",
    "fixing a bike",
    "studying for exams",
    "working from home",
    "planning a wedding",
    "choosing a laptop",
    "hiking safely",
    "brewing coffee",
    "public speaking",
    "starting to meditate",
]
# asking for brevity makes the base model end its answers (EOS) at varied lengths within --max-tokens
TEMPLATES = [
    "In a sentence or two: any advice on {}?",
    "Briefly, what should I know about {}?",
    "In a few words: how do I get started with {}?",
]
TYPES = ("long", "short")


def prompts_for(n: int, seed: int) -> list[str]:
    """``n`` distinct prompts: topic x template, shuffled by ``seed``."""
    every = [t.format(topic) for topic in TOPICS for t in TEMPLATES]
    order = np.random.default_rng(seed).permutation(len(every))
    return [every[i] for i in order[:n]]


def words(text: str) -> int:
    return len(text.split())


def win_rate(answers: list[list[str]], references: list[list[str]], kind: str) -> float:
    """Ground-truth win rate of answers[p] against references[p] (every pair), equal lengths 1/2."""
    wins = []
    for ans, refs in zip(answers, references, strict=True):
        a = np.array([words(t) for t in ans])[:, None]
        r = np.array([words(t) for t in refs])[None, :]
        better = a > r if kind == "long" else a < r
        wins.append((better + 0.5 * (a == r)).mean())
    return float(np.mean(wins))


def label_pairs(candidates: dict[str, list[str]], users: pd.DataFrame, pairs: int, noise: float, seed: int):
    """Each user's ``pairs`` labelled comparisons of random candidate pairs (ties in length skipped)."""
    rng = np.random.default_rng(seed)
    prompts = list(candidates)
    rows = []
    for user, kind in users.itertuples(index=False):
        made = 0
        while made < pairs:
            prompt = prompts[rng.integers(len(prompts))]
            i, j = rng.choice(len(candidates[prompt]), size=2, replace=False)
            a, b = candidates[prompt][i], candidates[prompt][j]
            if words(a) == words(b):
                continue
            prefer_a = (words(a) > words(b)) == (kind == "long")
            if rng.random() < noise:
                prefer_a = not prefer_a
            chosen, rejected = (a, b) if prefer_a else (b, a)
            rows.append({"user_id": user, "prompt": prompt, "chosen": chosen, "rejected": rejected})
            made += 1
    return pd.DataFrame(rows)


def sample(model, tokenizer, prompts: list[str], n: int, settings, seed: int) -> list[list[str]]:
    from pluralign.dpo.formatting import use_chat_template
    from pluralign.dpo.generate import generate_texts

    chat = use_chat_template(tokenizer, "auto")
    return [
        [
            t.strip()
            for t in generate_texts(
                model,
                tokenizer,
                p,
                chat=chat,
                n=n,
                max_new_tokens=settings.max_tokens,
                do_sample=True,
                seed=seed + i,
            )
        ]
        for i, p in enumerate(prompts)
    ]


def run(settings: argparse.Namespace, *, lm: Any = None, encoder: Any = None) -> dict[str, Any]:
    """The whole benchmark; ``lm`` = (model factory, tokenizer) and ``encoder`` replace SmolLM2 and MiniLM
    (the test runs it at toy size)."""
    from pluralign.dpo.generate import load_run, select_policy
    from pluralign.dpo.mmra import min_max_regret
    from pluralign.dpo.run import DPORunConfig, load_causal_lm, train_dpo_family
    from pluralign.estimator import BTL, PALB
    from pluralign.rl.policies import PrototypePolicies, PrototypePolicyConfig

    log = logging.getLogger("personal_policy")
    timings: dict[str, float] = {}
    new_model = (lambda: load_causal_lm(settings.dpo_model)) if lm is None else lm

    def clock(name, start):
        timings[name] = time.perf_counter() - start

    model, tokenizer = new_model()
    prompts = prompts_for(settings.train_prompts + settings.test_prompts, settings.seed)
    train_prompts, test_prompts = prompts[: settings.train_prompts], prompts[settings.train_prompts :]
    start = time.perf_counter()
    pool = sample(model, tokenizer, train_prompts, settings.candidates, settings, settings.seed)
    base_test = sample(model, tokenizer, test_prompts, settings.candidates, settings, settings.seed + 10_000)
    clock("sample candidates", start)
    n_short = round(settings.users * settings.minority)
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in range(settings.users)],
            "kind": ["short"] * n_short + ["long"] * (settings.users - n_short),
        }
    )
    kind_of = dict(users.itertuples(index=False))
    pairs = label_pairs(
        dict(zip(train_prompts, pool, strict=True)), users, settings.pairs, settings.noise, settings.seed
    )
    log.info("%d labelled pairs from %d users", len(pairs), len(users))

    # --- reward models ---------------------------------------------------------------------------------
    start = time.perf_counter()
    extra = {} if encoder is None else {"encoder": encoder}
    btl = BTL(seed=settings.seed, **extra).fit(pairs)
    pal = PALB(n_prototypes=2, seed=settings.seed, **extra).fit(pairs)
    clock("reward models", start)
    # label accuracy per type on held-out candidate pairs of the test prompts
    test_pairs = label_pairs(
        dict(zip(test_prompts, base_test, strict=True)), users, 10, 0.0, settings.seed + 1
    )
    reward_acc = {}
    for name, est in (("BTL", btl), ("PAL-B K=2", pal)):
        margins = est.reward(
            list(test_pairs.user_id), list(test_pairs.prompt), list(test_pairs.chosen)
        ) - est.reward(list(test_pairs.user_id), list(test_pairs.prompt), list(test_pairs.rejected))
        kinds = test_pairs.user_id.map(kind_of)
        reward_acc[name] = {
            k: float(((margins > 0) + 0.5 * (margins == 0))[kinds == k].mean()) for k in TYPES
        }

    rows: list[dict[str, Any]] = []

    def add(method: str, per_type: dict[str, float], steps: int | None = None, step_s: float | None = None):
        rows.append(
            {"method": method, **{f"win {k}": per_type[k] for k in TYPES}, "steps": steps, "s/step": step_s}
        )
        if settings.partial is not None:  # what is done so far survives a stopped run
            atomic_write_json(
                settings.partial, {"rows": rows, "reward_accuracy": reward_acc, "seconds": timings}
            )

    add("base model", {k: win_rate(base_test, base_test, k) for k in TYPES})
    # --- best-of-n -------------------------------------------------------------------------------------
    flat_prompts = [p for p, c in zip(test_prompts, base_test, strict=True) for _ in c]
    flat = [t for c in base_test for t in c]
    n = settings.candidates

    def best_of(est, user) -> list[list[str]]:
        r = est.reward(user, flat_prompts, flat).reshape(len(test_prompts), n)
        return [[c[int(np.argmax(rr))]] for c, rr in zip(base_test, r, strict=True)]

    for name, est in ((f"best-of-{n}, BTL reward", btl), (f"best-of-{n}, the user's PAL reward", pal)):
        per = {
            k: float(
                np.mean([win_rate(best_of(est, u), base_test, k) for u in users.user_id[users.kind == k]])
            )
            for k in TYPES
        }
        add(name, per)

    # --- GRPO: pooled (BTL) and prototype policies ------------------------------------------------------
    config = PrototypePolicyConfig(
        max_steps=settings.steps,
        prompts_per_step=settings.prompts_per_step,
        num_generations=settings.generations,
        max_completion_length=settings.max_tokens,
        learning_rate=settings.lr,
        eval_samples=2,
        seed=settings.seed,
    )
    answers: dict[str, list[list[str]]] = {}

    def policy_answers(pp: PrototypePolicies, k: int) -> list[list[str]]:
        flat_answers = pp.sample(test_prompts, k, n=settings.eval_samples, seed=settings.seed + 20_000)
        return [
            flat_answers[i * settings.eval_samples : (i + 1) * settings.eval_samples]
            for i in range(len(test_prompts))
        ]

    start = time.perf_counter()
    pooled = PrototypePolicies(btl, config=config).fit(
        train_prompts, model=new_model()[0], tokenizer=tokenizer
    )
    clock("GRPO pooled", start)
    answers["pooled"] = policy_answers(pooled, 0)
    grpo_step = pooled.history_[0]["seconds_per_step"]
    add(
        "GRPO on the BTL reward (one policy)",
        {k: win_rate(answers["pooled"], base_test, k) for k in TYPES},
        settings.steps,
        grpo_step,
    )
    start = time.perf_counter()
    protos = PrototypePolicies(pal, config=config).fit(
        train_prompts, model=new_model()[0], tokenizer=tokenizer
    )
    clock("GRPO prototypes", start)
    proto_answers = [policy_answers(protos, k) for k in range(2)]
    routes = {u: protos.route(u).prototype for u in users.user_id}
    per = {}
    for k in TYPES:
        served = [routes[u] for u in users.user_id[users.kind == k]]
        per[k] = float(np.mean([win_rate(proto_answers[s], base_test, k) for s in served]))
    proto_step = float(np.mean([h["seconds_per_step"] for h in protos.history_]))
    add("PAL prototype policies (user's largest weight)", per, settings.steps, proto_step)
    proto_wins = {k: [win_rate(a, base_test, k) for a in proto_answers] for k in TYPES}

    # --- the DPO family on the same pairs --------------------------------------------------------------
    if settings.dpo:
        with tempfile.TemporaryDirectory(prefix="personal-policy-") as scratch:
            data = Path(scratch) / "pairs.jsonl"
            # the pairs the step budget can use (steps x batch), a seeded subset: TRL precomputes reference
            # log-probs of every training pair, and all 720 would cost ~10 min per method on one core
            budget = settings.steps * settings.prompts_per_step * settings.generations
            subset = pairs.sample(n=min(budget, len(pairs)), random_state=settings.seed)
            data.write_text("".join(json.dumps(r) + "\n" for r in subset.to_dict("records")))
            for method in ("dpo", "mixdpo-lognormal", "em-dpo"):
                run_config = DPORunConfig(
                    method=method,
                    model=settings.dpo_model,
                    max_steps=settings.steps if method != "em-dpo" else max(1, settings.steps // 4),
                    batch_size=settings.prompts_per_step * settings.generations,
                    holdout=0.0,
                    seed=settings.seed,
                    learning_rate=settings.dpo_lr,
                    logging_steps=max(1, settings.steps),
                )
                start = time.perf_counter()
                summary = train_dpo_family(data, Path(scratch) / method, run_config)
                clock(method, start)
                opened = load_run(Path(scratch) / method)
                per = {}
                # EM-DPO: max_steps per M-step, one M-step per type and iteration
                steps = (
                    summary.get("steps")
                    or run_config.max_steps * run_config.em_iterations * run_config.n_types
                )
                by_policy: dict[int, list[list[str]]] = {}  # each distinct policy answers once
                for k in TYPES:
                    wins = []
                    for u in users.user_id[users.kind == k]:
                        model_u, _ = (
                            select_policy(opened, user=u) if opened.em is not None else select_policy(opened)
                        )
                        if id(model_u) not in by_policy:
                            by_policy[id(model_u)] = sample(
                                model_u,
                                opened.tokenizer,
                                test_prompts,
                                settings.eval_samples,
                                settings,
                                settings.seed + 20_000,
                            )
                        wins.append(win_rate(by_policy[id(model_u)], base_test, k))
                    per[k] = float(np.mean(wins))
                add(method, per, steps, timings[method] / max(1, steps or 1))

    # --- unknown users: MMRA over the prototype policies vs the pooled policy ---------------------------
    best = {k: max([r[f"win {k}"] for r in rows]) for k in TYPES}
    mix = protos.mmra_.weights
    mmra_win = {k: float(np.dot(mix, proto_wins[k])) for k in TYPES}
    pooled_win = {k: win_rate(answers["pooled"], base_test, k) for k in TYPES}
    regret = {
        "MMRA over prototype policies": {k: best[k] - mmra_win[k] for k in TYPES},
        "pooled GRPO policy": {k: best[k] - pooled_win[k] for k in TYPES},
    }
    oracle = min_max_regret(np.array([proto_wins[k] for k in TYPES]), normalize=False)
    return {
        "settings": {**vars(settings), "torch_threads": torch.get_num_threads()},
        "pairs": len(pairs),
        "reward_accuracy": reward_acc,
        "rows": rows,
        "mmra": {
            "weights": mix.tolist(),
            "values": protos.values_.tolist(),
            "win": mmra_win,
            "regret": regret,
            "worst_type_regret": {name: max(v.values()) for name, v in regret.items()},
            "oracle_mixture_worst_regret_over_prototypes": oracle.max_regret,
        },
        "routes": {str(k): int(sum(1 for u, s in routes.items() if s == k)) for k in range(2)},
        "seconds": timings,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title="ground-truth win rate vs the base model's answers, per user type")
    for col in ("method", "win long (70%)", "win short (30%)", "steps", "s/step"):
        table.add_column(col)
    for r in result["rows"]:
        step = "" if r["s/step"] is None else f"{r['s/step']:.2f}"
        table.add_row(
            r["method"], f"{r['win long']:.3f}", f"{r['win short']:.3f}", str(r["steps"] or ""), step
        )
    console.print(table)
    m = result["mmra"]
    console.print(f"reward accuracy on held-out pairs: {result['reward_accuracy']}")
    console.print(f"unknown users, worst-type regret: {m['worst_type_regret']} (MMRA weights {m['weights']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--minority", type=float, default=0.3, help="share of 'short' users")
    parser.add_argument("--pairs", type=int, default=24, help="labelled pairs per user")
    parser.add_argument("--noise", type=float, default=0.1, help="label noise")
    parser.add_argument("--train-prompts", type=int, default=12)
    parser.add_argument("--test-prompts", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=8, help="base answers per prompt (best-of-n's n)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per policy (DPO/MixDPO: the same)")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="GRPO LoRA learning rate")
    parser.add_argument("--dpo-lr", type=float, default=1e-4)
    parser.add_argument("--eval-samples", type=int, default=2, help="answers per test prompt and policy")
    parser.add_argument("--value-prompts", type=int, default=4, help="training prompts the MMRA values use")
    parser.add_argument("--no-dpo", dest="dpo", action="store_false", help="skip the DPO family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/personal_policy"))
    settings = parser.parse_args(argv)
    settings.dpo_model = "smollm2"
    settings.partial = settings.out / "partial.json"
    settings.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    result = run(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    result["settings"]["out"] = str(settings.out)
    atomic_write_json(settings.out / "personal_policy.json", result)
    print_table(result)
    print(f"wrote {settings.out / 'personal_policy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
