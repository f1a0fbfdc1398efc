"""Active onboarding (issue 7.2): how many answers does a new user need when the model picks the questions?

    pluralign bench active-onboarding [--seeds 3] [--datasets synthetic persona]
    python benchmarks/active_onboarding.py --help

Per dataset and seed: train once, then simulate many new (unseen) users. Each has a pool of candidate
comparisons whose answers are their real ones in the data, and held-out comparisons. Every strategy asks
each user one question per step from their pool (all users batched), the user answers as in the data,
and after n answers the user's weights are fitted with the estimator's own few-shot fit
(``fit_weights``, the same fit for every strategy) and scored on the held-out rows. Strategies:
info-gain and variance (pluralign.training.active, particle posterior), uncertainty (P(a) nearest 1/2 at
the current few-shot fit, what the service did) and random (the baseline: what few-shot curves assume).
The posterior's own predictive accuracy is reported too. "Answers needed" is the first n on the grid
where the users' mean held-out accuracy is within 1 point of the seen users'.

- synthetic: the paper's PAL-A data (Sec. 4.2; mixture, K* = 3, d = 16, 100 seen users), PAL-A K = 3.
- persona: Persona K* = 4 at reduced N (statements embedded with MiniLM, cached), PAL-B-Tiny K = 4.

Writes results.json and active_onboarding.png; one torch thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from tqdm import tqdm

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user, take_per_user
from pluralign.demo import PERSONA_PARAMS, SYNTHETIC_PARAMS
from pluralign.estimator import PALA, PALB, PALEstimator
from pluralign.report.plots import few_shot_curves_axes, plt, save_figure
from pluralign.report.tables import rows_table
from pluralign.training.active import (
    STRATEGIES,
    OnboardingPosterior,
    answer_tables,
    pair_features,
    prior_particles,
    select_questions,
)

logger = logging.getLogger("active_onboarding")
console = Console(width=120)
GRID = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100]
BASELINE = "random"


# --------------------------------------------------------------------------------------------------------
def canonical_pairs(est: PALEstimator, data: PreferenceData) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Distinct questions of ``data``: features [Q, r] with a = the lower item id, each row's question id
    and whether its user preferred a. (Persona: one question per statement, shared by all users.)"""
    low, high = np.minimum(data.chosen, data.rejected), np.maximum(data.chosen, data.rejected)
    keys = pd.MultiIndex.from_arrays([data.context, low, high])
    question, unique = pd.factorize(keys)
    context, a, b = (np.asarray(unique.get_level_values(i), dtype=np.int64) for i in range(3))
    pairs = PreferenceData(
        user=np.zeros(len(a), dtype=np.int64), context=context, chosen=a, rejected=b,
        user_ids=data.user_ids, contexts=data.contexts, items=data.items,
        item_vectors=data.item_vectors, context_vectors=data.context_vectors,
    )  # fmt: skip
    phi = pair_features(est.model_, est.to_batch(pairs, pairs.user), est.to_tables(pairs))
    return phi, question.astype(np.int64), data.chosen == low


def per_user_matrix(data: PreferenceData, values: np.ndarray, width: int) -> np.ndarray:
    """values of each user's rows as a [n_users, width] matrix (users have ``width`` rows each)."""
    order = np.argsort(data.user, kind="stable")
    counts = np.bincount(data.user, minlength=data.n_users)
    if not (counts == width).all():
        raise ValueError(f"every new user needs exactly {width} rows, got {counts.min()}..{counts.max()}")
    return values[order].reshape(data.n_users, width)


def simulate(
    est: PALEstimator,
    pool: PreferenceData,
    test: PreferenceData,
    strategy: str,
    *,
    grid: list[int],
    particles: int,
    lapse: float,
    seed: int,
) -> dict:
    """Ask every new user max(grid) questions from their pool; accuracy on ``test`` at each n of the grid."""
    n_users, width = pool.n_users, len(pool) // pool.n_users
    phi, question, a_won = canonical_pairs(est, pool)
    candidates = torch.from_numpy(per_user_matrix(pool, question, width))
    answers = torch.from_numpy(per_user_matrix(pool, a_won, width))
    rows = torch.from_numpy(per_user_matrix(pool, np.arange(len(pool)), width))
    test_phi, test_question, test_a_won = canonical_pairs(est, test)
    population = est.model_.weights()[: est.n_seen_users_].detach()
    prior = prior_particles(particles, est.model_.n_prototypes, population=population, seed=seed)
    posterior = OnboardingPosterior(est.model_, prior, n_users, lapse=lapse)
    tables = answer_tables(posterior, phi)
    generator = torch.Generator().manual_seed(seed)
    asked = torch.zeros(n_users, width, dtype=torch.bool)
    users = torch.arange(n_users)
    order = torch.empty(n_users, 0, dtype=torch.long)  # pool row of each answer, in asking order
    fit_acc, post_acc, point = {}, {}, None
    select_s = 0.0
    for n in tqdm(range(max(grid) + 1), desc=strategy, leave=False, disable=None):
        if n in grid:
            mean = posterior.predictive(torch.from_numpy(test.user), test_phi[test_question])
            post_acc[n] = float(((mean > 0.5).numpy() == test_a_won).mean())
            fit_acc[n], point = few_shot_accuracy(est, pool, test, order.flatten().numpy())
        if n == max(grid):
            break
        if strategy == "uncertainty" and point is None:
            _, point = few_shot_accuracy(est, pool, test, order.flatten().numpy())
        start = time.perf_counter()
        pick = select_questions(
            posterior, tables, candidates, strategy=strategy, asked=asked, point=point, generator=generator
        )
        select_s += time.perf_counter() - start
        asked[users, pick] = True
        posterior.observe(users, phi[candidates[users, pick]], answers[users, pick])
        order = torch.cat([order, rows[users, pick][:, None]], dim=1)
        point = None  # the few-shot fit is out of date
    return {
        "fit_accuracy": [fit_acc[n] for n in grid],
        "posterior_accuracy": [post_acc[n] for n in grid],
        "select_seconds_per_step": select_s / max(grid),
    }


def few_shot_accuracy(
    est: PALEstimator, pool: PreferenceData, test: PreferenceData, rows: np.ndarray
) -> tuple[float, torch.Tensor]:
    """Held-out accuracy after fitting the new users on pool ``rows``, and their fitted weights."""
    if len(rows) == 0:
        weights = est.zero_shot_weights_.double().expand(pool.n_users, -1).clone()
        return est.score(test), weights
    adapted = est.copy()
    frame = adapted.adapt(pool.subset(np.sort(rows)))
    weights = torch.tensor(frame.loc[list(pool.user_ids.astype(str)), frame.columns[:-1]].to_numpy())
    return adapted.score(test), weights


def answers_needed(grid: list[int], curve: list[float], target: float) -> int | None:
    reached = [n for n, acc in zip(grid, curve, strict=True) if acc >= target]
    return reached[0] if reached else None


# --------------------------------------------------------------------------------------------------------
def synthetic_setup(args: argparse.Namespace, seed: int) -> tuple[PALEstimator, PreferenceData, ...]:
    from pluralign.datasets.synthetic import make_synthetic

    data = make_synthetic(
        model="pal_a", setting="mixture", dim=16, n_prototypes=3, n_users=100, n_train=100, n_test=50,
        n_unseen_users=args.synthetic_users, n_unseen_per_user=args.pool, seed=seed,
    )  # fmt: skip
    params = {**SYNTHETIC_PARAMS, "epochs": args.synthetic_epochs}
    est = PALA(n_prototypes=3, dim=16, seed=seed, **params).fit(data.train)
    return est, data.test, data.unseen, data.unseen_test, "PAL-A K=3"


def persona_setup(args: argparse.Namespace, seed: int) -> tuple[PALEstimator, PreferenceData, ...]:
    from pluralign.datasets.persona import build_persona, embed_persona

    data = embed_persona(
        build_persona(
            k_star=4, users_per_persona=args.persona_users_per_persona, queries_per_user=args.persona_queries,
            unseen_users_per_persona=args.persona_new_users_per_persona,
            unseen_queries_per_user=args.pool + args.persona_test, seed=seed,
        ),
        cache_dir=args.cache,
    )  # fmt: skip
    train, test = split_per_user(data.seen, (0.9, 0.1), seed=seed)
    est = PALB(n_prototypes=4, seed=seed, **PERSONA_PARAMS).fit(train)
    pool, held_out = take_per_user(data.unseen, args.pool, seed=seed)
    return est, test, pool, held_out, "PAL-B K=4"


SETUPS = {"synthetic": synthetic_setup, "persona": persona_setup}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    grid = [n for n in GRID if n <= args.max_answers]
    if grid[-1] != args.max_answers:
        grid.append(args.max_answers)
    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "grid": grid,
        "runs": [],
    }
    start = time.perf_counter()
    for name in args.datasets:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            est, seen_test, pool, held_out, model = SETUPS[name](args, seed)
            seen = est.score(seen_test)
            target = seen - 0.01
            run_row = {
                "dataset": name,
                "seed": seed,
                "model": model,
                "seen_accuracy": seen,
                "new_users": pool.n_users,
                "pool": args.pool,
                "test_per_user": len(held_out) // pool.n_users,
                "train_seconds": est.history_.seconds,
                "strategies": {},
            }
            for strategy in args.strategies:
                out = simulate(
                    est,
                    pool,
                    held_out,
                    strategy,
                    grid=grid,
                    particles=args.particles,
                    lapse=args.lapse,
                    seed=seed,
                )
                out["answers_needed"] = answers_needed(grid, out["fit_accuracy"], target)
                out["answers_needed_posterior"] = answers_needed(grid, out["posterior_accuracy"], target)
                run_row["strategies"][strategy] = out
            run_row["seconds"] = time.perf_counter() - t0
            results["runs"].append(run_row)
            needed = {s: o["answers_needed"] for s, o in run_row["strategies"].items()}
            console.print(
                f"{name} seed {seed} ({model}, seen {seen:.4f}, {pool.n_users} new users, "
                f"{run_row['seconds']:.0f} s): answers to reach seen - 1 pt {needed}"
            )
    results["seconds"] = time.perf_counter() - start
    results["summary"] = summarize(results, args)
    return results


def summarize(results: dict, args: argparse.Namespace) -> dict:
    summary = {}
    for name in args.datasets:
        runs = [r for r in results["runs"] if r["dataset"] == name]
        s = {"seen_accuracy": float(np.mean([r["seen_accuracy"] for r in runs])), "strategies": {}}
        for strategy in args.strategies:
            outs = [r["strategies"][strategy] for r in runs]
            fit = np.array([o["fit_accuracy"] for o in outs])
            post = np.array([o["posterior_accuracy"] for o in outs])
            needed = [o["answers_needed"] for o in outs]
            s["strategies"][strategy] = {
                "fit_mean": fit.mean(0).tolist(),
                "fit_std": fit.std(0).tolist(),
                "posterior_mean": post.mean(0).tolist(),
                "answers_needed": needed,
                "answers_needed_posterior": [o["answers_needed_posterior"] for o in outs],
                "select_ms_per_step": 1e3 * float(np.mean([o["select_seconds_per_step"] for o in outs])),
            }
        base = s["strategies"].get(BASELINE)
        for st in s["strategies"].values():
            if base is None:
                continue
            ratios = [
                None if a is None or b is None else b / a
                for a, b in zip(st["answers_needed"], base["answers_needed"], strict=True)
            ]
            st["fewer_answers_than_random"] = ratios
        summary[name] = s
    return summary


def print_tables(results: dict, args: argparse.Namespace) -> None:
    grid = results["grid"]
    beyond = f">{grid[-1]}"
    for name, s in results["summary"].items():
        run0 = next(r for r in results["runs"] if r["dataset"] == name)
        rows = []
        for strategy, st in s["strategies"].items():
            needed = [beyond if n is None else n for n in st["answers_needed"]]
            ratio = [r for r in st.get("fewer_answers_than_random", []) if r is not None]
            rows.append({
                "strategy": strategy + (" (baseline)" if strategy == BASELINE else ""),
                "answers needed (per seed)": ", ".join(map(str, needed)),
                "x fewer than random": f"{np.mean(ratio):.2f}" if ratio else "-",
                "posterior-predictive: needed": ", ".join(
                    beyond if n is None else str(n) for n in st["answers_needed_posterior"]
                ),
                "select ms/step": st["select_ms_per_step"],
            })  # fmt: skip
        console.print(rows_table(
            rows,
            title=f"{name}: {run0['model']}, {run0['new_users']} new users x {args.seeds} seeds, pool "
            f"{run0['pool']} questions each; answers until held-out accuracy >= seen "
            f"({s['seen_accuracy']:.4f}) - 1 point",
        ))  # fmt: skip
        shown = [n for n in grid if n in (0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60, 100)]
        curve_rows = [
            {"strategy": strategy, **{f"n={n}": st["fit_mean"][grid.index(n)] for n in shown}}
            for strategy, st in s["strategies"].items()
        ]
        console.print(rows_table(curve_rows, title=f"{name}: mean held-out accuracy after n answers"))


def plot(results: dict, path: Path) -> None:
    names = list(results["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    grid = results["grid"]
    for ax, name in zip(axes[0], names, strict=True):
        s = results["summary"][name]
        run0 = next(r for r in results["runs"] if r["dataset"] == name)
        few_shot_curves_axes(
            ax,
            {st_name: (grid, st["fit_mean"], st["fit_std"]) for st_name, st in s["strategies"].items()},
            reference=s["seen_accuracy"] - 0.01,
            reference_label="seen users - 1 point",
            title=f"{name} ({run0['model']}): new users",
        )
        ax.set_xlabel("answers of the new user (questions chosen by the strategy)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(SETUPS), default=["synthetic", "persona"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (data, training, prior draws)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--pool", type=int, default=150, help="candidate questions per new user")
    parser.add_argument("--max-answers", type=int, default=60)
    parser.add_argument("--particles", type=int, default=512)
    parser.add_argument("--lapse", type=float, default=0.05)
    parser.add_argument("--synthetic-users", type=int, default=300, help="new users per seed")
    parser.add_argument("--synthetic-epochs", type=int, default=SYNTHETIC_PARAMS["epochs"])
    parser.add_argument("--persona-users-per-persona", type=int, default=250, help="seen users per persona")
    parser.add_argument("--persona-queries", type=int, default=200, help="questions per seen user")
    parser.add_argument("--persona-new-users-per-persona", type=int, default=250)
    parser.add_argument("--persona-test", type=int, default=100, help="held-out questions per new user")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"), help="embedding cache (Persona)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/active_onboarding"))
    args = parser.parse_args(argv)
    if args.max_answers > args.pool:
        parser.error(f"--max-answers ({args.max_answers}) cannot exceed --pool ({args.pool})")
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    print_tables(results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    plot(results, args.out / "active_onboarding.png")
    console.print(
        f"wrote {args.out / 'results.json'} and {args.out / 'active_onboarding.png'} in "
        f"{results['seconds']:.0f} s ({results['threads']} torch thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
