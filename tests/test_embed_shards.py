"""Embedding a corpus in shards (`pluralign embed --shard i/n`), with one shard killed and rerun, gives the
same cache as one run. Tolerance for the vectors: MiniLM pads each batch to its longest text, and shards
batch texts differently, so the same text's vector can differ in the last float32 bits (atol 1e-5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.encoders import open_cache
from pluralign.encoders.embed import parse_shard, text_shards
from pluralign.encoders.sentence import SentenceTransformerEncoder
from pluralign.errors import PluralignError

runner = CliRunner()


def test_text_shards_partition_by_text_not_position():
    texts = [f"text number {i}" for i in range(1000)]
    shards = text_shards(texts, "enc", 3)
    assert set(np.unique(shards)) == {0, 1, 2} and min(np.bincount(shards)) > 250
    # the same text lands in the same shard whatever else is in the list, and in any order
    np.testing.assert_array_equal(text_shards(texts[::-1], "enc", 3), shards[::-1])
    np.testing.assert_array_equal(text_shards(texts[500:], "enc", 3), shards[500:])
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(PluralignError, match="--shard"):
            parse_shard(bad)


def _embed(*args):
    result = runner.invoke(app, ["embed", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


@pytest.mark.slow
def test_shards_and_a_killed_shard_rebuild_the_one_run_cache(tmp_path):
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "mountain",
        "quiet",
        "loud",
        "early",
        "late",
        "green",
        "blue",
    ]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 6)) + f" {i}" for i in range(400)]
    frame = pd.DataFrame(
        {"user_id": "u", "prompt": "", "chosen": texts[:200], "rejected": texts[200:]}
    )  # 400 distinct responses and the empty prompt
    data = tmp_path / "data.jsonl"
    frame.to_json(data, orient="records", lines=True)

    whole = _embed(data, "--cache", tmp_path / "one")
    assert whole["encoded"] == 401

    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pluralign.cli", "embed", str(data), "--cache", str(sharded)]
    proc = subprocess.Popen(
        [*command, "--shard", "1/2", "--flush-every", "16", "--batch-size", "8"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(sharded.glob("*/shard-*.keys.npy"))) >= 2:  # some chunks are stored
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the shard finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()

    rerun = _embed(data, "--cache", sharded, "--shard", "1/2")
    assert 0 < rerun["from_cache"] < rerun["texts"]  # the killed run's stored chunks are kept
    other = _embed(data, "--cache", sharded, "--shard", "0/2")
    assert rerun["texts"] + other["texts"] == 401 and other["from_cache"] == 0

    encoder = SentenceTransformerEncoder(None)
    unique = sorted({*texts, ""})
    one, hit_one = open_cache(tmp_path / "one", encoder).get_many(unique)
    two, hit_two = open_cache(sharded, encoder).get_many(unique)
    assert hit_one.all() and hit_two.all()
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    assert _embed(data, "--cache", sharded)["encoded"] == 0  # nothing is missing
