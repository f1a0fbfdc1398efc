"""`pluralign serve` under load: throughput and latency of score and feedback over HTTP on 127.0.0.1.

    pluralign bench serve-load [--score-requests 3000] [--feedback-requests 300] [--clients 8] [--rate 200]
    python benchmarks/serve_load.py --help

One run, in order:
1. baseline:  in-process ``PALEstimator.reward`` for one user, one prompt and 8 responses (this process).
2. the server starts in a subprocess (`pluralign serve`, 1 uvicorn worker, torch 1 thread) on a free
   loopback port; every text the load uses is scored once (warm embedding memory).
3. mixed:     a fixed list of score requests (8 cached responses each) and feedback requests (1 comparison
   each, re-fitting the user from all their stored comparisons), shuffled, sent by --clients threads with
   keep-alive httpx clients as fast as answers come (closed loop), stopped at --max-seconds.
4. paced:     score requests at --rate per second on a fixed schedule (open loop); latency counts from the
   scheduled send time, so a server that falls behind is charged for the queueing (no coordinated omission).
Reports requests/s and p50/p99/max latency per endpoint and phase; JSON to --out/results.json.
The model (unless --model) is a PAL-B trained on synthetic data with 384-d precomputed vectors (the size of
all-MiniLM-L6-v2 embeddings), so the model's maps cost what they cost with the default encoder.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summarize(name: str, latencies: list[float], errors: int, seconds: float) -> dict:
    lat = np.asarray(latencies) * 1000.0
    return {
        "phase": name,
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": seconds,
        "req_per_s": len(latencies) / seconds if seconds > 0 else None,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
    }


def start_server(model: Path, state: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PLURALIGN_TOKEN": token}
    cmd = [
        sys.executable,
        "-c",
        "from pluralign.cli import app; app()",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state",
        str(state),
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).is_success:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start in 60 s; see {log}")


def run_closed(url: str, token: str, work: list[tuple[str, dict]], clients: int, max_seconds: float):
    """Send ``work`` from ``clients`` threads as fast as answers come; returns per-endpoint results."""
    lock = threading.Lock()
    counter = itertools.count()
    results: dict[str, list[float]] = {"score": [], "feedback": []}
    errors = {"score": 0, "feedback": 0}
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter)
                if i >= len(work):
                    return
                endpoint, body = work[i]
                start = time.perf_counter()
                try:
                    ok = http.post(f"/v1/{endpoint}", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        results[endpoint].append(elapsed)
                    else:
                        errors[endpoint] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, time.perf_counter() - start


def run_paced(url: str, bodies: list[dict], rate: float, clients: int):
    """Score requests on a fixed schedule (request i at t0 + i / rate); latency from the scheduled time."""
    lock = threading.Lock()
    counter = itertools.count()
    from_schedule: list[float] = []
    service: list[float] = []
    errors = 0
    t0 = time.perf_counter() + 0.2

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/v1/health")  # open the keep-alive connection before the clock
            while True:
                with lock:
                    i = next(counter)
                if i >= len(bodies):
                    return
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                try:
                    ok = http.post("/v1/score", json=bodies[i]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                done = time.perf_counter()
                with lock:
                    if ok:
                        from_schedule.append(done - due)
                        service.append(done - sent)
                    else:
                        errors += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return from_schedule, service, errors, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: build one)")
    parser.add_argument("--dim", type=int, default=384, help="vector size of the built model's texts")
    parser.add_argument("--k", type=int, default=4, help="prototypes of the built model")
    parser.add_argument("--responses", type=int, default=8, help="responses per score request")
    parser.add_argument("--score-requests", type=int, default=3000)
    parser.add_argument("--feedback-requests", type=int, default=300)
    parser.add_argument("--feedback-users", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8, help="client threads (keep-alive connections)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on the mixed phase")
    parser.add_argument("--rate", type=float, default=200.0, help="paced phase: score requests per second")
    parser.add_argument("--paced-requests", type=int, default=2000)
    parser.add_argument("--baseline-calls", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve_load"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=max(Console().width, 120))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    from pluralign.estimator import PALEstimator
    from pluralign.serve.testing import make_demo_model

    if args.model is None:
        with console.status("training the benchmark model"):
            model = make_demo_model(
                args.out / "model_data",
                dim=args.dim,
                model_dim=16,
                n_users=100,
                n_train=20,
                n_contexts=200,
                n_prototypes=args.k,
                epochs=2,
                seed=args.seed,
            )
    else:
        model = args.model
    est = PALEstimator.load(model)
    encoder = est.get_encoder()
    keys = [str(k) for k in getattr(encoder, "keys", [])]
    items = [k for k in keys if k.startswith("item-")][:400]
    prompts = [k for k in keys if k.startswith("ctx-")][:50]
    if not items or not prompts:
        raise SystemExit("--model must use the synthetic item-/ctx- texts (a model built by this script)")
    users = [*map(str, est.users_[:50]), *(f"new-{i}" for i in range(10))]

    def score_body() -> dict:
        return {
            "user_id": rng.choice(users),
            "prompt": rng.choice(prompts),
            "responses": rng.sample(items, args.responses),
        }

    def feedback_body(i: int) -> dict:
        a, b = rng.sample(items, 2)
        user = f"fb-{i % args.feedback_users}"
        return {"user_id": user, "comparisons": [{"prompt": rng.choice(prompts), "chosen": a, "rejected": b}]}

    # 1. in-process baseline
    calls = [score_body() for _ in range(args.baseline_calls)]
    for body in calls[:20]:
        est.reward(body["user_id"], body["prompt"], body["responses"])
    times = []
    for body in calls:
        start = time.perf_counter()
        est.reward(body["user_id"], body["prompt"], body["responses"])
        times.append(time.perf_counter() - start)
    baseline = summarize(f"in-process estimator.reward ({args.responses} resp.)", times, 0, sum(times))

    # 2. server
    token = secrets.token_hex(16)
    port = free_port()
    state = args.out / "state.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    proc = start_server(model, state, port, token, args.out / "server.log")
    url = f"http://127.0.0.1:{port}"
    rows = [baseline]
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(0, len(items), 64):  # warm: every text once
                for prompt in prompts:
                    body = {"user_id": "warm", "prompt": prompt, "responses": items[i : i + 64]}
                    http.post("/v1/score", json=body).raise_for_status()

        # 3. mixed closed loop
        work = [("score", score_body()) for _ in range(args.score_requests)]
        work += [("feedback", feedback_body(i)) for i in range(args.feedback_requests)]
        rng.shuffle(work)
        results, errors, seconds = run_closed(url, token, work, args.clients, args.max_seconds)
        total = sum(map(len, results.values()))
        for endpoint in ("score", "feedback"):
            row = summarize(f"mixed: {endpoint}", results[endpoint], errors[endpoint], seconds)
            rows.append(row)
        rows.append(
            {
                **summarize(
                    "mixed: all", [*results["score"], *results["feedback"]], sum(errors.values()), seconds
                ),
                "req_per_s": total / seconds,
            }
        )

        # 4. paced score
        bodies = [score_body() for _ in range(args.paced_requests)]
        from_schedule, service, paced_errors, paced_seconds = run_paced(url, bodies, args.rate, args.clients)
        rows.append(
            summarize(
                f"paced {args.rate:.0f}/s: score (from schedule)", from_schedule, paced_errors, paced_seconds
            )
        )
        rows.append(summarize(f"paced {args.rate:.0f}/s: score (from send)", service, 0, paced_seconds))
        with httpx.Client(base_url=url, timeout=30) as http:
            fitted = http.get("/v1/users/fb-0").json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    threads = (
        f"server: 1 uvicorn process (event loop + 1 embedding thread + fit/DB worker threads), torch 1 "
        f"thread; "
        f"clients: {args.clients} threads in this process; {os.cpu_count()} CPUs shared"
    )
    table = Table(
        title=f"pluralign serve load ({args.responses} responses per score request)", caption=threads
    )
    for col in ("phase", "requests", "errors", "seconds", "req/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="left" if col == "phase" else "right")

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for row in rows:
        table.add_row(
            row["phase"],
            str(row["requests"]),
            str(row["errors"]),
            fmt(row["seconds"], ".2f"),
            fmt(row["req_per_s"], ",.0f"),
            fmt(row["p50_ms"], ".3f"),
            fmt(row["p99_ms"], ".3f"),
            fmt(row["max_ms"], ".3f"),
        )
    console.print(table)
    payload = {
        "config": {**vars(args), "out": str(args.out), "model": str(model)},
        "threads": threads,
        "results": rows,
        "feedback_user_after_load": fitted,
    }
    atomic_write_json(args.out / "results.json", payload)
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
