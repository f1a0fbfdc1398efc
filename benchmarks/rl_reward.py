"""Latency of one ``PersonalReward`` call (a TRL reward function) for a batch of completions, in process vs
over HTTP (``pluralign serve``'s ``/get_reward`` in a subprocess on 127.0.0.1; a server in a thread of the
measuring process shares its GIL and adds ~40 ms per request).

    python benchmarks/rl_reward.py [--batch 64] [--prompts 8] [--repeats 30] [--minilm]

The model is a PAL-B K = 2 on synthetic data with 384-d precomputed vectors (the size of all-MiniLM-L6-v2
embeddings): "warm" calls score texts whose vectors are known (no encoder work: the overhead of each path).
``--minilm`` swaps in the default all-MiniLM-L6-v2 encoder (same width; the rewards are then meaningless but
cost what they cost) and scores new completions on every call ("cold": the encoder runs on the batch).
Prints the median and p90 milliseconds per call; torch uses 1 thread.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeats: int) -> tuple[float, float]:
    fn(0)  # warm-up (connections, first embedding)
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.percentile(times, 90))


@contextlib.contextmanager
def served(model_dir: Path, state: Path, encoder: str | None) -> Iterator[str]:
    """``pluralign serve`` (read-only, 1 torch thread) in a subprocess on a free loopback port."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "pluralign.cli", "serve", str(model_dir), "--state", str(state)]
    command += ["--read-only", "--port", str(port), *(["--encoder", encoder] if encoder else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/v1/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pluralign serve did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--minilm", action="store_true", help="the real encoder, on new texts every call")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from pluralign.encoders.sentence import default_model_path
    from pluralign.estimator import PALEstimator
    from pluralign.rl import PersonalReward
    from pluralign.serve.testing import make_demo_model

    directory = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    model_dir = make_demo_model(directory, dim=384, model_dim=32, n_users=32, n_contexts=64, n_train=20)
    est = PALEstimator.load(model_dir)
    encoder = str(default_model_path()) if args.minilm else None
    if encoder:
        est.set_params(encoder=encoder)
    group = args.batch // args.prompts
    users = [f"user-{i // group}" for i in range(args.batch)]

    def batch(call: int) -> tuple[list[str], list[str]]:
        prompts = [f"ctx-{i // group}" for i in range(args.batch)]
        if args.minilm:  # new completions every call: the encoder runs
            return prompts, [f"answer {call} {i}: a short reply of a few words" for i in range(args.batch)]
        return prompts, [f"item-{i}" for i in range(args.batch)]

    local = PersonalReward.from_estimator(est)
    rows = {}
    rows["in process"] = timed(lambda c: local(*batch(c), user_id=users), args.repeats)
    state = directory / "state.db"
    with served(model_dir, state, encoder) as url, PersonalReward.from_service(url) as remote:
        rows["HTTP /get_reward"] = timed(lambda c: remote(*batch(c + 10_000), user_id=users), args.repeats)
    mode = "cold, all-MiniLM-L6-v2" if args.minilm else "warm, precomputed vectors"
    print(f"PersonalReward call, {args.batch} completions ({args.prompts} prompts x {group}), {mode}:")
    for name, (median, p90) in rows.items():
        print(f"  {name:18s} median {median:7.1f} ms   p90 {p90:7.1f} ms")


if __name__ == "__main__":
    main()
