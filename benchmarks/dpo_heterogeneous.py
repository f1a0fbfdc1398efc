"""DPO, MixDPO and EM-DPO on a preference task with known user types, on SmolLM2-135M (CPU).

    pluralign bench dpo-heterogeneous [--model smollm2|tiny] [--users 24] [--task easy|hard] [--out DIR]
    python benchmarks/dpo_heterogeneous.py --help

Task. Users answer "What do you think of <topic>?" by ranking three responses written in three styles
(short, formal, enthusiastic). Each user has a latent type that fixes their ranking:
    A: short > formal > enthusiastic;  B: enthusiastic > formal > short;  C: formal > enthusiastic > short
Heterogeneous data mix A/B 70/30 (or A/B/C 50/30/20 with --types 3); the homogeneous control is all A.
Every user ranks a random subset of training topics; held-out topics are never trained on.

Reported in one run (same data, same base model, same step budget):
- per-type held-out preference accuracy (implicit reward log pi - log pi_ref orders the 3 responses of
  each held-out topic as the type does; all 3 pairs) and the macro average, for DPO, MixDPO (LogNormal and
  Gamma) and EM-DPO (each user's held-out pairs scored by the policy of their most probable type);
- EM-DPO type recovery (adjusted Rand index) from 3-rankings vs from one random pair per ranking;
- MMRA: worst-type regret of the min-max-regret mixture over EM-DPO's policies (mixture weights from
  EM-DPO's own implicit-reward values, no labels; raw and normalized per type) vs DPO's single policy,
  both measured with the true utilities (best response 1, middle 0.5, worst 0) when a policy picks among
  a held-out topic's responses with its own probabilities;
- MixDPO's learned spread of beta (cv = std / mean) on heterogeneous vs homogeneous data;
- step time MixDPO / DPO, measured as alternating forward+backward passes on the same batches.
Only the last two decoder blocks train (``train_last_blocks``); reference log-probs are computed once.

``--task hard`` is built to be able to fail: each topic's three responses are drawn from several phrasings
per style (not one template), the three types overlap (A: short > formal > enthusiastic, B: short >
enthusiastic > formal, C: formal > short > enthusiastic; A/B disagree on one pair of three, B/C on two),
mixed 50/30/20 so no symmetry fixes the MMRA optimum, rankings carry label noise (``--noise``: an adjacent
pair swapped), EM-DPO's number of types is chosen (``--select-types``) by the users' held-out ranking
likelihood, every method gets the same optimizer-step budget (``--step-budget``; steps are in the table),
and ``--seeds`` repeats everything with mean and spread. MMRA's worst-type regret is compared with the best
mixture of the same EM-DPO policies under the true utilities (grid search over the simplex).
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json

TOPICS = [
    "tea",
    "chess",
    "jazz",
    "hiking",
    "pizza",
    "winter",
    "poetry",
    "cycling",
    "coffee",
    "soccer",
    "opera",
    "camping",
    "sushi",
    "painting",
    "running",
    "baking",
    "gardening",
    "sailing",
    "skiing",
    "museums",
    "podcasts",
    "theater",
    "surfing",
    "knitting",
    "astronomy",
    "yoga",
    "tennis",
    "rowing",
    "photography",
    "cooking",
    "climbing",
    "fishing",
    "dancing",
    "karaoke",
    "origami",
    "pottery",
    "swimming",
    "trains",
    "volcanoes",
    "bicycles",
    "puzzles",
    "libraries",
    "mountains",
    "rivers",
    "forests",
    "deserts",
]
STYLES = ("short", "formal", "enthusiastic")
TYPES = {"A": (0, 1, 2), "B": (2, 1, 0), "C": (1, 2, 0)}  # style indices, best first
MIXES = {2: {"A": 0.7, "B": 0.3}, 3: {"A": 0.5, "B": 0.3, "C": 0.2}}
# the hard task: overlapping types (A/B agree on the best response, A/C on the worst), mixed 50/30/20
HARD_TYPES = {"A": (0, 1, 2), "B": (0, 2, 1), "C": (1, 0, 2)}
HARD_MIX = {"A": 0.5, "B": 0.3, "C": 0.2}
VARIANTS = (  # phrasings per style; each topic draws one per style
    (" {T} is good.", " I like {t}.", " {T}? Fine by me.", " Not bad, {t}."),
    (
        " In my considered view, {t} merits appreciation.",
        " One may reasonably regard {t} as a worthwhile pursuit.",
        " Upon reflection, {t} deserves a measured respect.",
        " It is fair to say that {t} has considerable merit.",
    ),
    (
        " Oh wow, {t} is totally awesome, love it!",
        " {T}!!! Best thing ever, so much fun!",
        " I am SO excited about {t}, amazing!",
        " Yes yes yes, {t} rocks, absolutely love it!",
    ),
)

log = logging.getLogger("dpo_heterogeneous")


def responses(topic: str) -> list[str]:
    return [
        f" {topic.capitalize()} is good.",
        f" In my considered view, {topic} merits appreciation.",
        f" Oh wow, {topic} is totally awesome, love it!",
    ]


def prompt(topic: str) -> str:
    return f"What do you think of {topic}?"


def varied_responses(topic: str, seed: int) -> list[str]:
    """The hard task's responses to a topic: one phrasing per style, drawn per topic (and seed)."""
    rng = np.random.default_rng([seed, TOPICS.index(topic)])
    return [v[rng.integers(len(v))].format(t=topic, T=topic.capitalize()) for v in VARIANTS]


def noisy(order: tuple[int, ...], noise: float, rng: np.random.Generator) -> list[int]:
    """``order`` with one random adjacent pair swapped with probability ``noise`` (label noise)."""
    order = list(order)
    if noise > 0 and rng.random() < noise:
        i = int(rng.integers(len(order) - 1))
        order[i], order[i + 1] = order[i + 1], order[i]
    return order


def make_task(
    n_users: int,
    mix: dict[str, float],
    n_train_topics: int,
    per_user: int,
    n_test_topics: int,
    seed: int,
    *,
    hard: bool = False,
    noise: float = 0.0,
    heldout_per_user: int = 0,
) -> dict[str, Any]:
    """Users with planted types ranking training topics; held-out topics for evaluation.

    ``hard``: varied phrasings and the overlapping HARD_TYPES; ``noise``: label noise in every ranking;
    ``heldout_per_user``: each user also ranks that many held-out topics (to choose EM-DPO's number of types).
    """
    rng = np.random.default_rng(seed)
    topics = rng.permutation(TOPICS)
    if n_train_topics + n_test_topics > len(topics):
        raise ValueError(f"only {len(topics)} topics: lower --train-topics or --test-topics")
    train_topics, test_topics = (
        topics[:n_train_topics],
        topics[n_train_topics : n_train_topics + n_test_topics],
    )
    orders = HARD_TYPES if hard else TYPES
    pool = {str(t): varied_responses(str(t), seed) if hard else responses(str(t)) for t in topics}
    names = list(mix)
    counts = np.floor(np.array([mix[n] for n in names]) * n_users).astype(int)
    counts[0] += n_users - counts.sum()
    user_type = np.repeat(names, counts)
    rows, pair_rows, heldout = [], [], []
    for u, kind in enumerate(user_type):
        for topic in rng.choice(train_topics, size=per_user, replace=False):
            ranked = [pool[str(topic)][i] for i in noisy(orders[kind], noise, rng)]
            rows.append({"user_id": f"user{u:03d}", "prompt": prompt(topic), "responses": ranked})
            keep = np.sort(rng.choice(3, size=2, replace=False))
            pair_rows.append(
                {"user_id": f"user{u:03d}", "prompt": prompt(topic), "responses": [ranked[k] for k in keep]}
            )
        if heldout_per_user:
            for topic in rng.choice(test_topics, size=heldout_per_user, replace=False):
                heldout.append(
                    (f"user{u:03d}", list(test_topics).index(topic), noisy(orders[kind], noise, rng))
                )
    users = [f"user{u:03d}" for u in range(n_users)]
    return {
        "rankings": pd.DataFrame(rows),
        "pairs": pd.DataFrame(pair_rows),
        "user_type": dict(zip(users, user_type.tolist(), strict=True)),
        "test_topics": list(test_topics),
        "types": names,
        "orders": {k: orders[k] for k in names},
        "pool": pool,
        "heldout": heldout,
    }


# --- models -------------------------------------------------------------------------------------------
def load_base(kind: str, blocks: int) -> tuple[Any, Any]:
    from pluralign.dpo.models import load_smollm2, tiny_causal_lm, train_last_blocks, word_tokenizer

    if kind == "smollm2":
        model, tokenizer = load_smollm2()
    else:
        phrasings = [v.format(t=t, T=t.capitalize()) for t in TOPICS for style in VARIANTS for v in style]
        texts = [prompt(t) + " ".join(responses(t)) for t in TOPICS] + phrasings
        tokenizer = word_tokenizer(texts)
        model = tiny_causal_lm(len(tokenizer), hidden_size=64, layers=2)
        blocks = min(blocks, 2)
    return train_last_blocks(model, blocks), tokenizer


def dpo_args(
    cls: Any, out: Path, name: str, settings: argparse.Namespace, max_steps: int = -1, **extra: Any
) -> Any:
    return cls(
        output_dir=str(out / "runs" / name),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_steps=max_steps,
        bf16=False,  # TRL's default even on CPU; accelerate would leave the models in bf16 autocast
        learning_rate=settings.lr,
        beta=settings.beta,
        report_to=[],
        use_cpu=True,
        seed=settings.seed,
        disable_tqdm=False,
        logging_steps=5,
        save_strategy="no",
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        **extra,
    )


# --- evaluation ---------------------------------------------------------------------------------------
def topic_logps(model: Any, tokenizer: Any, topics: list[str], pool: dict[str, list[str]]) -> np.ndarray:
    """log pi(y | x) of the 3 styles for each topic (responses from ``pool``): [topics, 3]."""
    from pluralign.dpo.data import rankings_from_records, tokenize_rankings
    from pluralign.dpo.logps import completion_logps

    frame = rankings_from_records(
        [{"user_id": "eval", "prompt": prompt(t), "responses": pool[t]} for t in topics]
    )
    prompt_ids, response_ids = tokenize_rankings(tokenizer, frame)
    flat_prompts = [p for p, rs in zip(prompt_ids, response_ids, strict=True) for _ in rs]
    flat = [r for rs in response_ids for r in rs]
    logps = completion_logps(model, flat_prompts, flat, pad_token_id=tokenizer.pad_token_id, batch_size=24)
    return logps.numpy().reshape(len(topics), 3)


def type_accuracy(implicit: np.ndarray, order: tuple[int, ...]) -> float:
    """Share of the 3 pairs per topic that the implicit reward orders as a type with ``order`` does."""
    pairs = [(order[0], order[1]), (order[0], order[2]), (order[1], order[2])]
    return float(np.mean([(implicit[:, a] > implicit[:, b]).mean() for a, b in pairs]))


def utility(order: tuple[int, ...]) -> np.ndarray:
    """True utility of each style for a type: best 1, middle 0.5, worst 0."""
    u = np.empty(3)
    u[list(order)] = [1.0, 0.5, 0.0]
    return u


def policy_values(logps: np.ndarray, orders: list[tuple[int, ...]]) -> np.ndarray:
    """Expected true utility per type when the policy picks among each topic's responses: [types]."""
    choice = np.exp(logps - logps.max(1, keepdims=True))
    choice /= choice.sum(1, keepdims=True)
    return np.array([(choice @ utility(o)).mean() for o in orders])


def oracle_mixture_regret(values: np.ndarray, steps: int = 60) -> float:
    """Smallest worst-type regret (1 - value) of any mixture of the policies: grid over the simplex."""
    n = values.shape[1]
    grid = np.array([c for c in itertools.product(range(steps + 1), repeat=n) if sum(c) == steps]) / steps
    return float((1.0 - grid @ values.T).max(axis=1).min())


def heldout_log_likelihood(em: Any, tokenizer: Any, task: dict, ref_test: np.ndarray, beta: float) -> float:
    """Mean over users of log sum_t gamma[u, t] P_t(the user's held-out rankings), Plackett-Luce."""
    from pluralign.dpo.em import plackett_luce_log_likelihood

    rewards = [
        beta * (topic_logps(em.policy(t), tokenizer, task["test_topics"], task["pool"]) - ref_test)
        for t in range(em.n_types)
    ]
    users = sorted({u for u, _, _ in task["heldout"]})
    index = {u: i for i, u in enumerate(users)}
    per_user = np.zeros((len(users), em.n_types))
    for user, topic, order in task["heldout"]:
        ranked = torch.tensor(np.array([r[topic, order] for r in rewards]), dtype=torch.float64)  # [T, 3]
        ll = plackett_luce_log_likelihood(ranked.unsqueeze(1), torch.tensor([3])).squeeze(1)
        per_user[index[user]] += ll.numpy()
    posterior = em.posteriors_.loc[users].to_numpy()
    joint = per_user + np.log(np.clip(posterior, 1e-300, None))
    top = joint.max(axis=1, keepdims=True)
    return float((top.squeeze(1) + np.log(np.exp(joint - top).sum(axis=1))).mean())


# --- methods ------------------------------------------------------------------------------------------
def train_single(
    name: str, base: Any, tokenizer: Any, pairs: Any, out: Path, settings: argparse.Namespace, **mix: Any
) -> tuple[Any, dict[str, Any]]:
    """DPO (no ``mix``) or MixDPO on pre-scored full-breaking pairs; returns the trainer and its record."""
    from trl import DPOConfig

    from pluralign.dpo.trainers import MixDPOConfig, MixDPOTrainer, PluralDPOTrainer

    steps = settings.step_budget or -1
    if mix:
        extra = {"beta_spread": settings.beta_spread, "beta_learning_rate": settings.beta_lr, **mix}
        args = dpo_args(MixDPOConfig, out, name, settings, max_steps=steps, **extra)
        cls = MixDPOTrainer
    else:
        args, cls = dpo_args(DPOConfig, out, name, settings, max_steps=steps), PluralDPOTrainer
    model = copy.deepcopy(base)
    # the pairs carry the reference log-probs; the untouched base is named as the reference, never run
    trainer = cls(model=model, ref_model=base, args=args, train_dataset=pairs, processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train()
    record = {
        "method": name,
        "train_seconds": time.perf_counter() - start,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
    }
    if mix:
        record["beta"] = trainer.beta_stats()
    return trainer, record


def evaluate_single(trainer: Any, tokenizer: Any, ref_test: np.ndarray, task: dict, record: dict) -> dict:
    logps = topic_logps(trainer.model, tokenizer, task["test_topics"], task["pool"])
    implicit = logps - ref_test
    orders = task["orders"]
    record["accuracy"] = {k: type_accuracy(implicit, o) for k, o in orders.items()}
    record["macro_accuracy"] = float(np.mean(list(record["accuracy"].values())))
    record["values"] = policy_values(logps, list(orders.values())).tolist()
    return record


def run_em(
    name: str,
    base: Any,
    tokenizer: Any,
    data: pd.DataFrame,
    task: dict,
    ref_test: np.ndarray,
    out: Path,
    settings,
    n_types: int | None = None,
) -> tuple[dict, Any]:
    from sklearn.metrics import adjusted_rand_score
    from trl import DPOConfig

    from pluralign.dpo.em import EMDPOTrainer

    n_types = n_types or len(task["types"])
    # the step budget is shared by all M-steps: the pooled initial fit (T > 1) and T per EM iteration
    m_steps = (1 if n_types > 1 else 0) + n_types * settings.em_iterations
    steps = max(1, settings.step_budget // m_steps) if settings.step_budget else -1
    em = EMDPOTrainer(
        copy.deepcopy(base),
        args=dpo_args(DPOConfig, out, name, settings, max_steps=steps),
        train_dataset=data,
        processing_class=tokenizer,
        n_types=n_types,
        n_iterations=settings.em_iterations,
        seed=settings.seed,
        chat_template="off",  # raw prompts, as the rest of this benchmark scores them
    )
    start = time.perf_counter()
    em.train()
    seconds = time.perf_counter() - start
    assigned = em.assignments()
    truth = [task["user_type"][u] for u in assigned.index]
    record: dict[str, Any] = {
        "method": name,
        "train_seconds": seconds,
        "steps": em.optimizer_steps_,
        "n_types": n_types,
        "ari": float(adjusted_rand_score(truth, assigned.to_numpy())),
        "eta": em.eta_.tolist(),
        "history": em.history_,
    }
    # each user's held-out pairs scored by the policy of their most probable type
    pool = task["pool"]
    per_policy = [topic_logps(em.policy(t), tokenizer, task["test_topics"], pool) for t in range(em.n_types)]
    orders = task["orders"]
    record["accuracy"] = {}
    for kind, order in orders.items():
        users = assigned[[t == kind for t in truth]]
        accs = [type_accuracy(per_policy[t] - ref_test, order) for t in users.to_numpy()]
        record["accuracy"][kind] = float(np.mean(accs))
    record["macro_accuracy"] = float(np.mean(list(record["accuracy"].values())))
    if task["heldout"]:
        record["heldout_log_likelihood"] = heldout_log_likelihood(
            em, tokenizer, task, ref_test, settings.beta
        )
    # MMRA: weights from EM's own implicit-reward values (no labels), regret with the true utilities
    values = np.stack([policy_values(lp, list(orders.values())) for lp in per_policy], axis=1)  # [T, S]
    record["oracle_mixture_regret"] = oracle_mixture_regret(values)
    for key, normalize in (("mmra", False), ("mmra_normalized", True)):
        mmra, _ = em.mmra(normalize=normalize)
        record[f"{key}_weights"] = mmra.weights.tolist()
        record[f"{key}_values"] = (values @ mmra.weights).tolist()
    record["policy_values"] = values.tolist()
    return record, em


# --- step time ----------------------------------------------------------------------------------------
def step_times(trainers: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median forward+backward seconds per method, alternating methods on the same batches."""
    batches = []
    any_trainer = next(iter(trainers.values()))
    loader = iter(any_trainer.get_train_dataloader())
    for _ in range(rounds):
        try:
            batches.append(any_trainer._prepare_inputs(next(loader)))
        except StopIteration:
            loader = iter(any_trainer.get_train_dataloader())
            batches.append(any_trainer._prepare_inputs(next(loader)))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for batch in batches:
        for name, trainer in trainers.items():
            trainer.model.train()
            start = time.perf_counter()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            times[name].append(time.perf_counter() - start)
            trainer.model.zero_grad(set_to_none=True)
    return {name: statistics.median(ts[1:] if len(ts) > 2 else ts) for name, ts in times.items()}


# --- main ---------------------------------------------------------------------------------------------
def run(settings: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Every seed of ``--seeds`` (default: ``--seed``); results.json holds the first seed's full results
    and, for several seeds, the per-seed records and their mean and spread (``across_seeds``)."""
    base, tokenizer = load_base(settings.model, settings.blocks)
    seeds = settings.seeds or [settings.seed]
    per_seed = []
    for seed in seeds:
        console.print(f"[bold]seed {seed}[/]")
        per_seed.append(run_seed(settings, console, seed, base, tokenizer))
        # each finished seed is kept at once: a long run stopped later loses only the seed in progress
        atomic_write_json(settings.out / f"seed_{seed}.json", per_seed[-1])
    return combine(per_seed, settings.out)


def combine(per_seed: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """results.json (the first seed's full results; for several seeds, the per-seed records and their mean
    and spread) and the plot, from one record per seed (``--combine`` merges runs of single seeds)."""
    results = dict(per_seed[0])
    if len(per_seed) > 1:
        results["seeds"] = [int(r["settings"]["seed"]) for r in per_seed]
        results["per_seed"] = [{"methods": r["methods"], "regret": r["regret"]} for r in per_seed]
        results["across_seeds"] = summarize(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    plot(results, list(results["kinds"]), out / "dpo_heterogeneous.png")
    return results


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each method's accuracies, ARI and steps, and each regret."""

    def stats(values: list[float]) -> list[float]:
        return [float(np.mean(values)), float(np.std(values))]

    methods = {}
    for i, m in enumerate(per_seed[0]["methods"]):
        records = [r["methods"][i] for r in per_seed]
        entry = {"macro_accuracy": stats([r["macro_accuracy"] for r in records])}
        entry["accuracy"] = {k: stats([r["accuracy"][k] for r in records]) for k in m["accuracy"]}
        entry["steps"] = stats([r["steps"] for r in records])
        if "ari" in m:
            entry["ari"] = stats([r["ari"] for r in records])
            entry["n_types"] = [r["n_types"] for r in records]
        methods[m["method"]] = entry
    regret = {k: stats([r["regret"][k] for r in per_seed]) for k in per_seed[0]["regret"]}
    return {"methods": methods, "regret": regret}


def run_seed(
    settings: argparse.Namespace, console: Console, seed: int, base: Any, tokenizer: Any
) -> dict[str, Any]:
    torch.manual_seed(seed)
    settings = argparse.Namespace(**{**vars(settings), "seed": seed})
    out = settings.out
    hard = settings.task == "hard"
    mix = HARD_MIX if hard else MIXES[settings.types]
    shape = (settings.train_topics, settings.per_user, settings.test_topics, seed)
    options = {"hard": hard, "noise": settings.noise}
    task = make_task(
        settings.users, mix, *shape, **options, heldout_per_user=settings.heldout_per_user * hard
    )
    homogeneous = make_task(settings.users, {"A": 1.0}, *shape, **options)
    console.print(
        f"{settings.users} users ({', '.join(f'{k} {v:.0%}' for k, v in mix.items())}), "
        f"{len(task['rankings'])} training rankings of 3, {len(task['test_topics'])} held-out topics, "
        f"label noise {settings.noise}; model {settings.model}, {torch.get_num_threads()} torch thread(s)"
    )
    pool = task["pool"]
    ref_test = topic_logps(base, tokenizer, task["test_topics"], pool)
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(settings).items()}, "methods": []}
    results["settings"]["torch_threads"] = torch.get_num_threads()
    results["kinds"] = task["types"]
    results["reference_values"] = policy_values(ref_test, list(task["orders"].values())).tolist()

    singles = {
        "DPO": {},
        "MixDPO-LogNormal": {"beta_distribution": "lognormal"},
        "MixDPO-Gamma": {"beta_distribution": "gamma"},
    }
    from pluralign.dpo.data import pairs_dataset

    pairs = {
        "heterogeneous": pairs_dataset(task["rankings"], tokenizer, base),
        "homogeneous": pairs_dataset(homogeneous["rankings"], tokenizer, base),
    }
    if hard and not settings.step_budget:
        # every method gets DPO's one-pass budget (EM-DPO shares it across its M-steps)
        settings.step_budget = int(
            np.ceil(len(pairs["heterogeneous"]) / settings.batch_size * settings.epochs)
        )
    trained = {}
    for name, extra in singles.items():
        console.print(f"[bold]{name}[/] (heterogeneous)")
        trainer, record = train_single(name, base, tokenizer, pairs["heterogeneous"], out, settings, **extra)
        results["methods"].append(evaluate_single(trainer, tokenizer, ref_test, task, record))
        trained[name] = trainer

    console.print("[bold]step time[/]: alternating forward+backward on the same batches")
    times = step_times(trained, settings.timing_rounds)
    results["step_seconds"] = times
    results["step_ratio"] = {name: times[name] / times["DPO"] for name in times}
    dpo_record = results["methods"][0]
    del trained
    gc.collect()

    results["homogeneous"] = []
    for name in ("MixDPO-LogNormal", "MixDPO-Gamma"):
        console.print(f"[bold]{name}[/] (homogeneous control)")
        trainer, record = train_single(
            f"{name}-homogeneous", base, tokenizer, pairs["homogeneous"], out, settings, **singles[name]
        )
        results["homogeneous"].append(record)
        del trainer
        gc.collect()

    chosen = None
    if hard:
        # choose EM-DPO's number of types by the users' held-out ranking likelihood (rankings data)
        candidates = {}
        for n_types in settings.select_types:
            console.print(f"[bold]EM-DPO[/] on rankings, {n_types} type(s) (choosing the number of types)")
            record, em = run_em(
                f"EM-DPO (rankings, T={n_types})",
                base,
                tokenizer,
                task["rankings"],
                task,
                ref_test,
                out,
                settings,
                n_types=n_types,
            )
            candidates[n_types] = record
            del em
            gc.collect()
        chosen = max(candidates, key=lambda n: candidates[n]["heldout_log_likelihood"])
        record = {**candidates[chosen], "method": "EM-DPO (rankings)"}
        record["type_selection"] = {str(n): r["heldout_log_likelihood"] for n, r in candidates.items()}
        results["methods"].append(record)
    for data_name in ("pairs",) if hard else ("rankings", "pairs"):
        console.print(f"[bold]EM-DPO[/] on {data_name}")
        record, em = run_em(
            f"EM-DPO ({data_name})", base, tokenizer, task[data_name], task, ref_test, out, settings, chosen
        )
        results["methods"].append(record)
        del em
        gc.collect()

    em_rank = results["methods"][3]
    dpo_values = np.array(dpo_record["values"])

    def worst_regret(type_values) -> float:
        return float((1.0 - np.asarray(type_values)).max())

    results["regret"] = {
        "DPO worst-type regret": worst_regret(dpo_values),
        "MMRA worst-type regret": worst_regret(em_rank["mmra_values"]),
        "MMRA (normalized) worst-type regret": worst_regret(em_rank["mmra_normalized_values"]),
        "reference worst-type regret": worst_regret(results["reference_values"]),
    }
    if hard:
        results["regret"]["best mixture of EM-DPO's policies (true utilities) worst-type regret"] = em_rank[
            "oracle_mixture_regret"
        ]
    return results


def plot(results: dict, kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pluralign.report.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    methods = results["methods"]
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        axes[0].bar(
            np.arange(len(methods)) + i * width,
            [m["accuracy"][kind] for m in methods],
            width,
            label=f"type {kind}",
        )
    axes[0].set_xticks(np.arange(len(methods)) + width * (len(kinds) - 1) / 2)
    axes[0].set_xticklabels([m["method"] for m in methods], rotation=20, ha="right", fontsize=8)
    axes[0].set_ylabel("held-out preference accuracy")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    axes[0].set_title("Per-type accuracy")
    hetero = {m["method"]: m["beta"]["cv"] for m in methods if "beta" in m}
    homo = {m["method"].removesuffix("-homogeneous"): m["beta"]["cv"] for m in results["homogeneous"]}
    names = list(hetero)
    axes[1].bar(np.arange(len(names)) - 0.2, [hetero[n] for n in names], 0.4, label="heterogeneous")
    axes[1].bar(np.arange(len(names)) + 0.2, [homo[n] for n in names], 0.4, label="homogeneous")
    axes[1].set_xticks(np.arange(len(names)))
    axes[1].set_xticklabels(names, fontsize=8)
    axes[1].set_ylabel("learned cv of beta (std / mean)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("MixDPO: spread of beta")
    regret = results["regret"]
    axes[2].bar(range(len(regret)), list(regret.values()), color=["C3", "C2", "C2", "C7"])
    axes[2].set_xticks(range(len(regret)))
    axes[2].set_xticklabels([k.replace(" worst-type regret", "") for k in regret], fontsize=8)
    axes[2].set_ylabel("worst-type regret (true utility)")
    axes[2].set_title("Serving users of unknown type")
    save_figure(fig, path)


def print_tables(results: dict, kinds: list[str], console: Console) -> None:
    table = Table(title="Held-out preference accuracy by user type (implicit reward)")
    for col in ("method", *(f"type {k}" for k in kinds), "macro", "ARI", "types", "steps", "train s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m in results["methods"]:
        table.add_row(
            m["method"],
            *(f"{m['accuracy'][k]:.3f}" for k in kinds),
            f"{m['macro_accuracy']:.3f}",
            f"{m['ari']:.2f}" if "ari" in m else "",
            str(m.get("n_types", "")),
            str(m["steps"]),
            f"{m['train_seconds']:.0f}",
        )
    console.print(table)
    for m in results["methods"]:
        if "type_selection" in m:
            picks = ", ".join(f"T={n}: {ll:.3f}" for n, ll in m["type_selection"].items())
            console.print(f"EM-DPO number of types by held-out log-likelihood per user: {picks}")
    if "across_seeds" in results:
        summary = results["across_seeds"]
        table = Table(title=f"Mean ± std over seeds {results['seeds']}")
        for col in ("method", *(f"type {k}" for k in kinds), "macro", "ARI", "types chosen", "steps"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for name, m in summary["methods"].items():
            table.add_row(
                name,
                *(f"{m['accuracy'][k][0]:.3f} ± {m['accuracy'][k][1]:.3f}" for k in kinds),
                f"{m['macro_accuracy'][0]:.3f} ± {m['macro_accuracy'][1]:.3f}",
                f"{m['ari'][0]:.2f} ± {m['ari'][1]:.2f}" if "ari" in m else "",
                ", ".join(map(str, m.get("n_types", []))),
                f"{m['steps'][0]:.0f}",
            )
        console.print(table)
        table = Table(title="Worst-type regret over seeds (true utility)")
        table.add_column("quantity")
        table.add_column("mean ± std", justify="right")
        for key, (mean, std) in summary["regret"].items():
            table.add_row(key, f"{mean:.3f} ± {std:.3f}")
        console.print(table)
    table = Table(title="MixDPO learned beta: heterogeneous vs homogeneous data")
    for col in ("method", "data", "mean", "std", "cv"):
        table.add_column(col, justify="left" if col in ("method", "data") else "right")
    for m in results["methods"]:
        if "beta" in m:
            table.add_row(
                m["method"], "heterogeneous", *(f"{m['beta'][k]:.4g}" for k in ("mean", "std", "cv"))
            )
    for m in results["homogeneous"]:
        table.add_row(
            m["method"].removesuffix("-homogeneous"),
            "homogeneous",
            *(f"{m['beta'][k]:.4g}" for k in ("mean", "std", "cv")),
        )
    console.print(table)
    table = Table(title="Serving unknown users (worst-type regret, true utility) and step time")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in results["regret"].items():
        table.add_row(key, f"{value:.3f}")
    for name, ratio in results["step_ratio"].items():
        table.add_row(f"step time {name} / DPO", f"{ratio:.3f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument(
        "--task", choices=["easy", "hard"], default="easy", help="hard: the task that can fail (docstring)"
    )
    parser.add_argument("--noise", type=float, default=None, help="label noise (default: 0.1 hard, 0 easy)")
    parser.add_argument(
        "--select-types", default="1,2,3", help="hard: EM-DPO numbers of types to choose from (comma list)"
    )
    parser.add_argument("--heldout-per-user", type=int, default=2, help="hard: held-out rankings per user")
    parser.add_argument(
        "--step-budget",
        type=int,
        default=0,
        help="optimizer steps per method (EM-DPO: over all M-steps); 0: epochs (hard: DPO's one-epoch count)",
    )
    parser.add_argument("--seeds", default=None, help="comma list of seeds, e.g. 0,1,2 (default: --seed)")
    parser.add_argument("--types", type=int, choices=sorted(MIXES), default=2)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--train-topics", type=int, default=30)
    parser.add_argument("--per-user", type=int, default=6, help="training topics each user ranks")
    parser.add_argument("--test-topics", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per training run (and per M-step)")
    parser.add_argument("--em-iterations", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta; MixDPO's initial mean of beta")
    parser.add_argument("--beta-spread", type=float, default=0.5, help="MixDPO's initial cv of beta")
    parser.add_argument(
        "--beta-lr", type=float, default=0.05, help="MixDPO's learning rate for beta's parameters"
    )
    parser.add_argument("--blocks", type=int, default=2, help="trainable last decoder blocks")
    parser.add_argument("--timing-rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/dpo_heterogeneous"))
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="SEED_JSON",
        help="merge seed_<s>.json files of earlier runs (one seed each) into --out, without training",
    )
    settings = parser.parse_args(argv)
    if settings.noise is None:
        settings.noise = 0.1 if settings.task == "hard" else 0.0
    if not 0 <= settings.noise < 1:
        parser.error(f"--noise must be in [0, 1), got {settings.noise}")
    settings.select_types = [int(t) for t in settings.select_types.split(",")]
    if any(t < 1 for t in settings.select_types):
        parser.error("--select-types: positive integers")
    settings.seeds = [int(x) for x in settings.seeds.split(",")] if settings.seeds else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    console = Console()
    if settings.combine:
        records = [json.loads(Path(f).read_text()) for f in settings.combine]
        if (
            len(
                {
                    json.dumps(
                        {k: v for k, v in r["settings"].items() if k not in ("seed", "seeds", "out")},
                        sort_keys=True,
                    )
                    for r in records
                }
            )
            > 1
        ):
            parser.error("--combine: the runs differ in settings other than the seed")
        results = combine(records, settings.out)
    else:
        results = run(settings, console)
    print_tables(results, list(results["kinds"]), console)
    console.print(f"wrote {settings.out / 'results.json'} and {settings.out / 'dpo_heterogeneous.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
