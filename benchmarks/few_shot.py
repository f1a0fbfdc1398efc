"""Few-shot fit of new users' weights (PAL-B, logistic): our exact batched solver against the usual ways.

    pluralign bench few-shot [--users 1000] [--rows 50] [--k 4]
    python benchmarks/few_shot.py --help

Every method minimizes, per user u, mean_j log(1 + exp(-A_j . w_u)) + ridge/2 ||w_u - w0||^2 over the
simplex (A_j are the per-prototype margins of PAL-B, linear in w). Compared in one run, on one thread:
- exact:     pluralign.training.simplex.fit_simplex_weights, all users batched, certified gap <= 1e-9
- adam:      softmax-parametrized logits, batched Adam (lr 0.05), as the paper fits new users (App. D.1)
- slsqp:     scipy.optimize.minimize(method="SLSQP") user by user, a common "exact" baseline
Reports seconds, speed-up of exact over each, and each method's worst excess objective over exact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.optimize import minimize

from pluralign.atomic import atomic_write_json
from pluralign.training.simplex import fit_simplex_weights


def objective(
    A: torch.Tensor, group: torch.Tensor, w: torch.Tensor, n_users: int, ridge: float
) -> torch.Tensor:
    m = (A * w[group]).sum(-1)
    loss = torch.logaddexp(torch.zeros_like(m), -m)
    counts = torch.bincount(group, minlength=n_users).double()
    per_user = torch.zeros(n_users, dtype=torch.float64).index_add_(0, group, loss) / counts
    w0 = torch.full_like(w, 1.0 / w.shape[1])
    return per_user + 0.5 * ridge * (w - w0).square().sum(-1)


def adam(A, group, n_users, k, ridge, steps):
    logits = torch.zeros(n_users, k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        obj = objective(A, group, torch.softmax(logits, -1), n_users, ridge).sum()
        opt.zero_grad()
        obj.backward()
        opt.step()
    return torch.softmax(logits.detach(), -1)


def slsqp(A, group, n_users, k, ridge):
    a, g = A.numpy(), group.numpy()
    order = np.argsort(g, kind="stable")
    bounds = np.searchsorted(g[order], np.arange(n_users + 1))
    out = np.empty((n_users, k))
    for u in range(n_users):  # the per-user loop is the point of this baseline
        rows = a[order[bounds[u] : bounds[u + 1]]]

        def f(w, rows=rows):
            m = rows @ w
            return np.logaddexp(0, -m).mean() + 0.5 * ridge * np.sum((w - 1 / k) ** 2)

        res = minimize(
            f,
            np.full(k, 1 / k),
            method="SLSQP",
            bounds=[(0, 1)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-12},
        )
        out[u] = res.x
    return torch.from_numpy(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=50, help="comparisons per new user")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--ridge", type=float, default=0.02)
    parser.add_argument("--adam-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/few_shot"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    # PAL-B-like margins: scale (<= 100) times differences of cosines, so entries of order 1-10
    A = 5.0 * torch.randn(args.users * args.rows, args.k, generator=gen, dtype=torch.float64)
    group = torch.arange(args.users).repeat_interleave(args.rows)
    fit_simplex_weights(A[: 2 * args.rows], group[: 2 * args.rows], 2)  # warm-up outside the clock

    results = {}
    for name, run in {
        "exact (pluralign)": lambda: fit_simplex_weights(A, group, args.users, ridge=args.ridge).weights,
        f"adam x{args.adam_steps} (batched)": lambda: adam(
            A, group, args.users, args.k, args.ridge, args.adam_steps
        ),
        "slsqp (per user)": lambda: slsqp(A, group, args.users, args.k, args.ridge),
    }.items():
        start = time.perf_counter()
        w = run()
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "objective": objective(A, group, w, args.users, args.ridge)}
    best = results["exact (pluralign)"]
    table = Table(
        title=f"Few-shot fit: {args.users} new users x {args.rows} comparisons, K={args.k}, 1 thread"
    )
    for col in ("method", "seconds", "exact is x faster", "worst excess objective", "mean excess"):
        table.add_column(col, justify="left" if col == "method" else "right")
    rows = []
    for name, r in results.items():
        excess = (r["objective"] - best["objective"]).numpy()
        row = {
            "method": name,
            "seconds": r["seconds"],
            "speedup_of_exact": r["seconds"] / best["seconds"],
            "worst_excess_objective": float(excess.max()),
            "mean_excess_objective": float(excess.mean()),
        }
        rows.append(row)
        table.add_row(
            name,
            f"{row['seconds']:.3f}",
            f"{row['speedup_of_exact']:.1f}",
            f"{row['worst_excess_objective']:.2e}",
            f"{row['mean_excess_objective']:.2e}",
        )
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"config": {**vars(args), "out": str(args.out), "threads": 1}, "results": rows}
    atomic_write_json(args.out / "results.json", payload)
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
