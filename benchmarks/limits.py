"""Memory limits: bytes per comparison of the data and of training, in RAM and memory-mapped.

    pluralign bench limits [--sizes 1 4 16] [--batch-size 65536]
    python benchmarks/limits.py --help

Data: Persona-shaped synthetic comparisons with vectors, written once per size with
``pluralign.data.arrays.save_arrays``: ``--sizes`` million rows, 1,000 rows per user, 4,000 contexts and 2
items ("Yes"/"No"), 384-d float32 vectors (as MiniLM), random labels (memory does not depend on them).

Every measurement runs in its own process (this script with ``--only``) so peaks do not mix:
- baseline: torch and pluralign imported, a PAL-B model built; nothing loaded (the same-run reference).
- ram-<M>: ``load_arrays(mmap=False)`` reads the arrays into memory, then ``PALB.fit`` trains one epoch.
- mmap-<M>: ``load_arrays(mmap=True)`` maps them; the same fit.
Measured from /proc/self/status: RSS after loading, peak RSS during the whole run (VmHWM), and peak
*anonymous* RSS (RssAnon, sampled every 10 ms by a thread): memory the process must own. File-backed pages
of mapped arrays (RssFile) count in RSS but are page cache the kernel can drop and reread, so with mmap
only the anonymous part has to fit in RAM. "per million" = the slope of a least-squares line over the
sizes, in MiB per million comparisons. One torch thread. Results: a table and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json

THREADS = 1
ROWS_PER_USER = 1_000
CONTEXTS = 4_000
ITEMS = 2
DIM = 384


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process in MiB (empty without procfs)."""
    wanted, out = ("VmRSS", "VmHWM", "RssAnon", "RssFile"), {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in wanted:
                    out[key] = int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return out


class AnonPeak:
    """The peak of RssAnon, sampled by a background thread (the kernel keeps no such high-water mark)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.peak = proc_status().get("RssAnon", 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, proc_status().get("RssAnon", 0.0))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status().get("RssAnon", 0.0))
        return self.peak


def make_data(directory: Path, rows: int, seed: int) -> None:
    """Persona-shaped comparisons with vectors, saved as .npy arrays (skipped when already there)."""
    from pluralign.data.arrays import save_arrays
    from pluralign.data.comparisons import PreferenceData

    if (directory / "tables.json").exists():
        return
    rng = np.random.default_rng(seed)
    users = -(-rows // ROWS_PER_USER)
    chosen = rng.integers(0, ITEMS, rows)
    data = PreferenceData(
        user=np.arange(rows, dtype=np.int64) // ROWS_PER_USER,
        context=rng.integers(0, CONTEXTS, rows),
        chosen=chosen,
        rejected=1 - chosen,
        user_ids=np.array([f"user-{u}" for u in range(users)], dtype=object),
        contexts=np.array([f"statement {c}" for c in range(CONTEXTS)], dtype=object),
        items=np.array(["Yes", "No"], dtype=object),
        item_vectors=rng.standard_normal((ITEMS, DIM), dtype=np.float32),
        context_vectors=rng.standard_normal((CONTEXTS, DIM), dtype=np.float32),
    )
    save_arrays(data, directory)


def run_child(args: argparse.Namespace) -> dict:
    from pluralign import PALB
    from pluralign.data.arrays import load_arrays

    torch.set_num_threads(THREADS)
    est = PALB(n_prototypes=4, dim=16, epochs=1, batch_size=args.batch_size, patience=None, seed=0)
    if args.only == "baseline":
        est.build_model(1, DIM, DIM)
        status = proc_status()
        return {"method": "baseline", "rss_mib": status.get("VmRSS"), "peak_rss_mib": status.get("VmHWM")}
    mode, millions = args.only.split("-")
    sampler = AnonPeak()
    start = time.perf_counter()
    data = load_arrays(args.out / f"data-{millions}M", mmap=mode == "mmap")
    load_seconds = time.perf_counter() - start
    loaded = proc_status()
    est.fit(data)
    status = proc_status()
    return {
        "method": mode,
        "millions": float(millions),
        "rows": len(data),
        "users": int(data.n_users),
        "load_seconds": load_seconds,
        "rss_after_load_mib": loaded.get("VmRSS"),
        "anon_after_load_mib": loaded.get("RssAnon"),
        "peak_rss_mib": status.get("VmHWM"),
        "peak_anon_mib": sampler.stop(),
        "file_rss_end_mib": status.get("RssFile"),
        "train_seconds": est.history_.seconds,
        "comparisons_per_second": est.history_.comparisons_per_second,
        "threads": torch.get_num_threads(),
    }


def spawn(method: str, argv: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", method]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {method} run failed (exit {done.returncode}): {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than two sizes)."""
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="millions of comparisons")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-data", action="store_true", help="keep the generated .npy data")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/limits"))
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    if args.only:
        print(json.dumps(run_child(args)))
        return 0

    console = Console(width=130)
    args.out.mkdir(parents=True, exist_ok=True)
    forwarded = list(sys.argv[1:] if argv is None else argv)
    baseline = spawn("baseline", forwarded)
    runs: list[dict] = []
    for millions in args.sizes:
        tag = f"{millions:g}"
        start = time.perf_counter()
        make_data(args.out / f"data-{tag}M", round(millions * 1e6), args.seed)
        console.print(f"{tag}M comparisons written in {time.perf_counter() - start:.1f} s")
        for mode in ("ram", "mmap"):
            console.print(f"  training {mode} ...")
            runs.append(spawn(f"{mode}-{tag}", forwarded))
        if not args.keep_data:
            for path in (args.out / f"data-{tag}M").iterdir():
                path.unlink()
            (args.out / f"data-{tag}M").rmdir()

    base = baseline["rss_mib"]
    table = Table(
        title=f"Memory by size: PAL-B K=4 d=16, batch {args.batch_size:,}, one epoch, {THREADS} thread",
        caption=f"baseline (imports + model, no data): {base:.0f} MiB RSS; anon = memory the process owns "
        "(mapped file pages are evictable page cache)",
        box=box.SIMPLE_HEAD,
    )
    columns = ("rows", "tables", "RSS after load", "anon after load", "peak RSS", "peak anon")
    for col in (*columns, "peak - baseline", "cmp/s"):
        table.add_column(col, justify="right")
    for r in runs:
        r["peak_over_baseline_mib"] = r["peak_rss_mib"] - base
        r["anon_over_baseline_mib"] = r["peak_anon_mib"] - base
        table.add_row(
            f"{r['millions']:g}M",
            r["method"],
            f"{r['rss_after_load_mib']:,.0f} MiB",
            f"{r['anon_after_load_mib']:,.0f} MiB",
            f"{r['peak_rss_mib']:,.0f} MiB",
            f"{r['peak_anon_mib']:,.0f} MiB",
            f"{r['peak_over_baseline_mib']:,.0f} MiB",
            f"{r['comparisons_per_second']:,.0f}",
        )
    console.print(table)
    summary = {}
    for mode in ("ram", "mmap"):
        mine = [r for r in runs if r["method"] == mode]
        xs = [r["millions"] for r in mine]
        summary[mode] = {
            "peak_rss_mib_per_million": slope(xs, [r["peak_rss_mib"] for r in mine]),
            "peak_anon_mib_per_million": slope(xs, [r["peak_anon_mib"] for r in mine]),
            "rss_after_load_mib_per_million": slope(xs, [r["rss_after_load_mib"] for r in mine]),
            "anon_after_load_mib_per_million": slope(xs, [r["anon_after_load_mib"] for r in mine]),
        }
        if summary[mode]["peak_rss_mib_per_million"] is not None:
            console.print(
                f"{mode}: {summary[mode]['peak_rss_mib_per_million']:.1f} MiB peak RSS and "
                f"{summary[mode]['peak_anon_mib_per_million']:.1f} MiB peak anonymous memory per million "
                f"comparisons (after loading: {summary[mode]['rss_after_load_mib_per_million']:.1f} MiB RSS, "
                f"{summary[mode]['anon_after_load_mib_per_million']:.1f} MiB anonymous)"
            )
    result = {
        "benchmark": "limits",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "only"},
        "baseline": baseline,
        "runs": runs,
        "per_million": summary,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": THREADS},
    }
    atomic_write_json(args.out / "results.json", result)
    console.print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
