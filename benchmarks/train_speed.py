"""Training throughput and peak memory: our index-based trainer against a naive per-comparison pipeline.

    pluralign bench train-speed [--epochs 16] [--batch-size 16384] [--scale-row] [--profile]
    python benchmarks/train_speed.py --help

Data: Persona (PAL App. D.4) with K* = 4 personas, ``--users-per-persona`` x 4 users, each asked
``--queries`` + ``--heldout-queries`` distinct statements (drawn without replacement, in random order);
the first ``--queries`` rows of every user train, the rest are the held-out set (same users, unseen
statements). Contexts are the statements' questions and items "Yes"/"No", embedded once with the default
MiniLM encoder (384-d) through ``embed_texts`` and an embedding cache under ``--out``; the cold encode and
the cache-hit path are timed (the cache is emptied first unless ``--keep-cache``).

Both methods train the same PAL-B model (K prototypes, d, 2-layer f and g; same seed, so the same initial
weights) with the same optimizer (``make_optimizer``: AdamW, a learning rate per group), the same logistic
loss, batch size and number of optimizer steps: ``--epochs`` passes over the training rows, each of
ceil(n / batch) steps with the same partial last batch (``drop_last=False``), so steps = epochs x
ceil(n / batch) for both.
- naive: a ``torch.utils.data.Dataset`` whose ``__getitem__`` gathers one comparison's vectors (user,
  context, chosen, rejected) from the embedding tables, a ``DataLoader(batch_size, shuffle=True)`` with the
  default collate, and ``naive_margins``: f and g on every row of the batch (no unique-row dedup).
- ours: ``pluralign.training.trainer.fit`` on index arrays (no validation, no early stopping); the model
  evaluates f and g once per unique item/context the batch touches, then gathers.
- ours, context-grouped r: the same ``fit`` with ``TrainConfig.rows_per_context = r`` (``--rows-per-context``,
  one row per r): each batch is runs of r rows sharing a context, so g runs on about B / r contexts per step.
- ours, full Persona (``--scale-row``): ``fit`` for ``--scale-epochs`` epoch(s) of the paper's scale
  (10,000 users per persona x 1,000 queries = 40M comparisons) at ``--scale-batch-size``.

The target: a variant of ours (plain or context-grouped; the full-scale row trains other data) at least
``TARGET_SPEEDUP`` x naive's comparisons/s *and* within ``--accuracy-tolerance`` of naive's held-out accuracy
(same model, steps and seed, so only the row order differs). ``target_met`` names the fastest variant
meeting both (``target_variant``); a faster variant that loses accuracy does not count.

Each method runs in its own subprocess (this script with ``--only``), which prints one JSON line with its
timings, peak RSS (``VmHWM``, see ``peak_rss_mib``) and held-out accuracy, so the memory peaks do not mix.
Everything runs on one thread. Results: a table and ``<out>/results.json``; ``--profile`` also writes a
torch.profiler table of one epoch of ``fit`` to ``<out>/profile_ours.txt``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from pluralign.atomic import atomic_write_json
from pluralign.datasets.persona import ITEMS, PERSONAS_BY_K, build_persona, load_statements
from pluralign.encoders import SentenceTransformerEncoder, embed_texts, open_cache
from pluralign.models.base import Batch, Tables
from pluralign.models.mlp import MLPConfig
from pluralign.models.pal_b import PALBModel
from pluralign.training.losses import accuracy, get_loss
from pluralign.training.trainer import TrainConfig, fit, make_optimizer, predict_margins

THREADS = 1
#: the speed-up over the naive pipeline a variant of ours must reach, at equal held-out accuracy
TARGET_SPEEDUP = 20.0
CACHE = "embedding_cache"
METHODS = {"naive": "naive", "ours": "ours", "scale": "ours 40M"}


def method_name(method: str) -> str:
    """Display name; ``grouped-<r>`` is ours with context-grouped batches of runs of r rows."""
    if method.startswith("grouped-"):
        return f"ours, context-grouped r={method.removeprefix('grouped-')}"
    return METHODS[method]


# ========================================================================================================
# the naive pipeline
# ========================================================================================================
class ComparisonDataset(Dataset):
    """One comparison per item, its vectors gathered from the embedding tables in ``__getitem__``."""

    def __init__(self, batch: Batch, tables: Tables) -> None:
        self.user, self.context = batch.user.numpy(), batch.context.numpy()
        self.chosen, self.rejected = batch.chosen.numpy(), batch.rejected.numpy()
        self.items, self.contexts = tables.items, tables.contexts

    def __len__(self) -> int:
        return len(self.user)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            int(self.user[i]),
            self.contexts[self.context[i]],
            self.items[self.chosen[i]],
            self.items[self.rejected[i]],
        )


def naive_margins(
    model: PALBModel,
    users: torch.Tensor,
    ctx_vecs: torch.Tensor,
    chosen_vecs: torch.Tensor,
    rejected_vecs: torch.Tensor,
) -> torch.Tensor:
    """PAL-B margins with f and g evaluated on every row (the model's own maps, no dedup)."""
    weights = torch.softmax(model.user_logits[users], dim=-1)  # [B, K]
    g = model.prototype_directions(ctx_vecs)  # [B, K, d]
    diff = model.item_directions(chosen_vecs) - model.item_directions(rejected_vecs)  # [B, d]
    return model.scale * (torch.einsum("bkd,bd->bk", g, diff) * weights).sum(-1)


def train_naive(model: PALBModel, batch: Batch, tables: Tables, config: TrainConfig) -> dict:
    loader = DataLoader(
        ComparisonDataset(batch, tables),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    loss_fn = get_loss(config.loss)
    optimizer = make_optimizer(model, config)
    steps = seen = 0
    data_seconds = 0.0
    model.train()
    start = time.perf_counter()
    for _ in range(config.epochs):
        rows = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                users, ctx, chosen, rejected = next(rows)
            except StopIteration:
                break
            data_seconds += time.perf_counter() - t
            margin = naive_margins(model, users, ctx, chosen, rejected)
            loss = loss_fn(margin).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            seen += len(users)
    seconds = time.perf_counter() - start
    model.eval()
    return {"steps": steps, "comparisons": seen, "seconds": seconds, "data_seconds": data_seconds}


@torch.no_grad()
def naive_predict(model: PALBModel, batch: Batch, tables: Tables, batch_size: int) -> torch.Tensor:
    model.eval()
    loader = DataLoader(ComparisonDataset(batch, tables), batch_size=batch_size, shuffle=False)
    return torch.cat([naive_margins(model, *rows) for rows in loader])


# ========================================================================================================
# data, model and one method per subprocess
# ========================================================================================================
def load_data(args: argparse.Namespace, users_per_persona: int, queries: int) -> tuple[Batch, Batch, Tables]:
    """Train and held-out index batches (same users, disjoint statements) and the embedding tables."""
    q = queries + args.heldout_queries
    seen = build_persona(
        k_star=args.k_star,
        users_per_persona=users_per_persona,
        queries_per_user=q,
        unseen_users_per_persona=0,
        seed=args.seed,
    ).seen
    # Rows are grouped by user, q per user, each user's statements distinct and in random order.
    heldout = np.arange(len(seen)) % q >= queries
    encoder = SentenceTransformerEncoder()
    cache = open_cache(args.out / CACHE, encoder)  # every text is a cache hit: the model is never loaded
    tables = Tables(
        torch.from_numpy(embed_texts(list(seen.items), encoder, cache=cache)),
        torch.from_numpy(embed_texts(list(seen.contexts), encoder, cache=cache)),
    )
    names = ("user", "context", "chosen", "rejected")
    train = Batch(*(torch.from_numpy(getattr(seen, a)[~heldout]) for a in names))
    test = Batch(*(torch.from_numpy(getattr(seen, a)[heldout]) for a in names))
    return train, test, tables


def build_model(args: argparse.Namespace, n_users: int, tables: Tables) -> PALBModel:
    torch.manual_seed(args.seed)
    maps = MLPConfig(n_layers=args.layers)
    return PALBModel(
        n_users,
        args.k,
        tables.items.shape[1],
        tables.contexts.shape[1],
        dim=args.dim,
        f_config=maps,
        g_config=maps,
    )


def _status_mib(field: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in MiB (None where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak RSS of this process image. ``VmHWM`` belongs to the address space made at exec; ``ru_maxrss``
    is the fallback, but on Linux it keeps the parent's peak across fork + exec (here: the encoder)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float | None:
    return _status_mib("VmRSS")


def reset_peak_rss() -> bool:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0), so that the training peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_child(args: argparse.Namespace) -> dict:
    """Train one method (``args.only``) and return its measurements."""
    torch.set_num_threads(THREADS)
    scale = args.only == "scale"
    users = args.scale_users_per_persona if scale else args.users_per_persona
    queries = args.scale_queries if scale else args.queries
    start = time.perf_counter()
    train, test, tables = load_data(args, users, queries)
    gc.collect()
    setup_seconds = time.perf_counter() - start
    n_users = int(train.user.max()) + 1
    model = build_model(args, n_users, tables)
    batch_size = args.scale_batch_size if scale else args.batch_size
    epochs = 1 if args.only == "profile" else args.scale_epochs if scale else args.epochs
    grouped = args.only.startswith("grouped-")
    config = TrainConfig(
        lr_maps=args.lr,
        lr_prototypes=args.lr,
        lr_users=10 * args.lr,
        epochs=epochs,
        batch_size=batch_size,
        patience=None,
        progress=False,
        seed=args.seed,
        rows_per_context=int(args.only.removeprefix("grouped-")) if grouped else 1,
    )
    if args.only == "profile":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            history = fit(model, (train, tables), None, config)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        path = args.out / "profile_ours.txt"
        path.write_text(f"torch.profiler, one epoch of fit, batch {batch_size}, 1 thread\n\n{table}\n")
        return {"method": "profile", "path": str(path), "seconds": history.seconds}

    setup_peak, rss_before = peak_rss_mib(), current_rss_mib()
    reset = reset_peak_rss()
    if args.only == "naive":
        out = train_naive(model, train, tables, config)
    else:
        t = time.perf_counter()
        history = fit(model, (train, tables), None, config)
        out = {
            "steps": history.steps,
            "comparisons": sum(r["rows"] for r in history.records),
            "seconds": time.perf_counter() - t,
        }
    train_peak = peak_rss_mib() if reset else None
    if args.only == "naive":
        margins = naive_predict(model, test, tables, args.batch_size)
        # The naive scorer must agree with the model's own (deduplicated) margins.
        check = test.take(slice(0, 4096))
        diff = (margins[: len(check)] - predict_margins(model, check, tables)).abs().max()
        out["max_abs_diff_vs_model_margins"] = float(diff)
    else:
        margins = predict_margins(model, test, tables)
    chosen_no = test.chosen.double().mean().item()
    return {
        "method": args.only,
        **out,
        "batch_size": batch_size,
        "epochs": epochs,
        "comparisons_per_second": out["comparisons"] / out["seconds"],
        "train_rows": len(train),
        "users": n_users,
        "contexts": len(tables.contexts),
        "heldout_rows": len(test),
        "heldout_accuracy": float(accuracy(margins)),
        "heldout_majority_baseline": max(chosen_no, 1 - chosen_no),
        "setup_seconds": setup_seconds,
        "rss_before_training_mib": rss_before,
        "peak_rss_setup_mib": setup_peak,
        "peak_rss_training_mib": train_peak,
        "peak_rss_mib": max(setup_peak, peak_rss_mib()),
        "threads": torch.get_num_threads(),
    }


# ========================================================================================================
# the parent: encode once, run each method in its own process, report
# ========================================================================================================
def encode_texts(args: argparse.Namespace) -> dict:
    """Embed every context and item once into the cache; time the cold encode and a cache-hit call."""
    pool = load_statements(PERSONAS_BY_K[args.k_star])
    texts = [*pool.questions.tolist(), *ITEMS]
    cache_dir = args.out / CACHE
    if not args.keep_cache and cache_dir.exists():
        shutil.rmtree(cache_dir)
    encoder = SentenceTransformerEncoder()
    start = time.perf_counter()
    encoder.encode(["warm-up"])  # loads the model, outside the encode clock
    load_seconds = time.perf_counter() - start
    cache = open_cache(cache_dir, encoder)
    already = int(cache.get_many(texts)[1].sum())
    start = time.perf_counter()
    first = embed_texts(texts, encoder, cache=cache)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    # A fresh open (reads the keys from disk), as a new process would.
    again = embed_texts(texts, encoder, cache=open_cache(cache_dir, encoder))
    hit_seconds = time.perf_counter() - start
    if not np.array_equal(first, again):
        raise RuntimeError("cache-hit vectors differ from the encoded ones")
    cold = already == 0
    return {
        "encoder": encoder.id,
        "dim": int(first.shape[1]),
        "texts": len(texts),
        "model_load_seconds": load_seconds,
        "cold": cold,
        "texts_cached_before": already,
        "cold_encode_seconds": first_seconds if cold else None,
        "cold_encode_texts_per_second": len(texts) / first_seconds if cold else None,
        "cache_hit_seconds": hit_seconds,
        "cache_hit_texts_per_second": len(texts) / hit_seconds,
    }


def _count(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k" if n >= 1000 else str(n)


def spawn(method: str, argv: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", method]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {method} run failed (exit {done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k-star", type=int, default=4, help="personas (PAL Table 7)")
    parser.add_argument("--users-per-persona", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100, help="training comparisons per user")
    parser.add_argument("--heldout-queries", type=int, default=25, help="held-out comparisons per user")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=16, help="passes over the training rows (both methods)")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate of f, g (users: 10x)")
    parser.add_argument("--k", type=int, default=4, help="PAL-B prototypes")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="layers of f and g")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.005,
        help="a speed-up counts toward the target only within this held-out accuracy of naive's",
    )
    parser.add_argument(
        "--rows-per-context",
        type=int,
        nargs="+",
        default=[16, 32],
        help="run lengths r of the context-grouped rows (TrainConfig.rows_per_context), one row each",
    )
    parser.add_argument("--scale-row", action="store_true", help="add ours at the paper's full Persona scale")
    parser.add_argument("--scale-users-per-persona", type=int, default=10_000)
    parser.add_argument("--scale-queries", type=int, default=1_000)
    parser.add_argument("--scale-batch-size", type=int, default=65_536)
    parser.add_argument("--scale-epochs", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also profile one epoch of fit")
    parser.add_argument(
        "--keep-cache", action="store_true", help="reuse the embedding cache (no cold encode)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train_speed"))
    parser.add_argument("--only", help=argparse.SUPPRESS)  # naive, ours, grouped-<r>, scale or profile
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    if args.only:
        print(json.dumps(run_child(args)))
        return 0

    console = Console(width=130)
    args.out.mkdir(parents=True, exist_ok=True)
    forwarded = list(sys.argv[1:] if argv is None else argv)
    encoding = encode_texts(args)
    if encoding["cold"]:
        console.print(
            f"encoder {encoding['encoder']}: {encoding['texts']} texts, cold "
            f"{encoding['cold_encode_texts_per_second']:.0f} texts/s "
            f"(model load {encoding['model_load_seconds']:.1f} s), cache hit "
            f"{encoding['cache_hit_texts_per_second']:.0f} texts/s"
        )
    else:
        console.print(
            f"encoder {encoding['encoder']}: cache already warm ({encoding['texts_cached_before']} texts), "
            f"cache hit {encoding['cache_hit_texts_per_second']:.0f} texts/s; no cold encode measured"
        )
    grouped_methods = [f"grouped-{r}" for r in args.rows_per_context]
    methods = ["naive", "ours", *grouped_methods] + (["scale"] if args.scale_row else [])
    runs: dict[str, dict] = {}
    for method in methods:
        console.print(f"running {method_name(method)} ...")
        start = time.perf_counter()
        runs[method] = spawn(method, forwarded)
        runs[method]["wall_seconds"] = time.perf_counter() - start
    profile = spawn("profile", forwarded) if args.profile else None

    naive_cps = runs["naive"]["comparisons_per_second"]
    naive, ours = runs["naive"], runs["ours"]
    speedup = ours["comparisons_per_second"] / naive_cps
    grouped_speedups = {m: runs[m]["comparisons_per_second"] / naive_cps for m in grouped_methods}
    table = Table(
        title=(
            f"Training throughput: PAL-B K={args.k} d={args.dim} {args.layers}-layer f/g, Persona "
            f"K*={args.k_star}, {THREADS} thread"
        ),
        caption=(
            f"rows = training comparisons; acc on held-out statements of the same users (majority "
            f"baseline {ours['heldout_majority_baseline']:.3f}); peak = VmHWM of the run's own process, "
            "train = peak during training only; x naive of the full-scale row: other data and batch"
        ),
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    columns = ("method", "rows", "batch", "steps", "s", "cmp/s", "x naive", "peak MiB")
    for col in (*columns, "train MiB", "acc"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    rows = []
    for method, r in runs.items():
        row = {"name": method_name(method), **r, "speedup_vs_naive": r["comparisons_per_second"] / naive_cps}
        rows.append(row)
        train_peak = r["peak_rss_training_mib"]
        table.add_row(
            row["name"],
            _count(r["train_rows"]),
            f"{r['batch_size']:,}",
            f"{r['steps']}",
            f"{r['seconds']:.1f}",
            f"{r['comparisons_per_second']:,.0f}",
            f"{row['speedup_vs_naive']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            "n/a" if train_peak is None else f"{train_peak:.0f}",
            f"{r['heldout_accuracy']:.4f}",
        )
    console.print(table)
    variants = {}
    for m in ["ours", *grouped_methods]:
        gap = runs[m]["heldout_accuracy"] - naive["heldout_accuracy"]
        x = runs[m]["comparisons_per_second"] / naive_cps
        variants[method_name(m)] = {
            "speedup_vs_naive": x,
            "heldout_accuracy": runs[m]["heldout_accuracy"],
            "heldout_accuracy_gap": gap,
            "equal_accuracy": abs(gap) <= args.accuracy_tolerance,
            "meets_target": x >= TARGET_SPEEDUP and abs(gap) <= args.accuracy_tolerance,
        }
    meeting = [name for name, v in variants.items() if v["meets_target"]]
    target_variant = max(meeting, key=lambda name: variants[name]["speedup_vs_naive"]) if meeting else None
    console.print(
        f"speed-up over naive (target >= {TARGET_SPEEDUP:g}x at held-out accuracy within "
        f"{args.accuracy_tolerance:g} of naive's {naive['heldout_accuracy']:.4f}): "
        + ", ".join(
            f"{name} {v['speedup_vs_naive']:.1f}x (acc {v['heldout_accuracy']:.4f}, "
            f"{'equal' if v['equal_accuracy'] else 'NOT equal'})"
            for name, v in variants.items()
        )
        + f"; target {'met by ' + target_variant if target_variant else 'not met'}; naive spent "
        f"{naive['data_seconds']:.1f} of {naive['seconds']:.1f} s in the DataLoader; naive scorer vs "
        f"model margins max |diff| {naive['max_abs_diff_vs_model_margins']:.1e}"
    )
    if profile:
        console.print(f"profile of one epoch of fit: {profile['path']}")
    payload = {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "only"},
            "out": str(args.out),
            "threads": THREADS,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "encoder": encoding,
        "results": rows,
        "speedup_ours_over_naive": speedup,
        "speedup_grouped_over_naive": grouped_speedups,
        "heldout_accuracy_gap": ours["heldout_accuracy"] - naive["heldout_accuracy"],
        "heldout_accuracy_gap_grouped": {
            m: runs[m]["heldout_accuracy"] - naive["heldout_accuracy"] for m in grouped_methods
        },
        "target_speedup": TARGET_SPEEDUP,
        "accuracy_tolerance": args.accuracy_tolerance,
        "variants": variants,
        "target_met": target_variant is not None,
        "target_variant": target_variant,
        "profile": profile,
    }
    atomic_write_json(args.out / "results.json", payload)
    console.print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
