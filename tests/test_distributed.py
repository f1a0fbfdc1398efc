"""Data parallel training on 2 CPU processes (torchrun, gloo) against the single-process result.

Tolerance: both runs use the same global batches, and the 2-process gradient is the sum of the two shards'
gradients, so the two trajectories differ only by float32 summation order (about 1e-7 relative per step);
over the 80 steps here weights agree to 1e-5 and every epoch's metrics to 1e-5 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pluralign.cli import app

runner = CliRunner()
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from pluralign.models.base import Batch, Tables
    from pluralign.models.pal_b import PALBModel
    from pluralign.training.distributed import init_from_env
    from pluralign.training.losses import logistic_loss

    torch.set_num_threads(1)
    ddp = init_from_env()
    g = torch.Generator().manual_seed(0)
    n, users, items, contexts = 301, 40, 50, 7  # an odd batch: the shards differ in size
    batch = Batch(*(torch.randint(0, m, (n,), generator=g) for m in (users, contexts, items, items)))
    tables = Tables(torch.randn(items, 12, generator=g), torch.randn(contexts, 10, generator=g))
    torch.manual_seed(1)
    model = PALBModel(users, 3, 12, 10, 8)
    ddp.broadcast_parameters(model)
    params = list(model.parameters())
    shard = batch.take(ddp.shard(torch.arange(n)))
    extras = torch.tensor([float(len(shard))])
    (logistic_loss(model.margins(shard, tables)).sum() / n).backward()
    rows = ddp.all_reduce_gradients(params, extras=extras)
    if ddp.rank == 0:
        ddp_grads = [p.grad.clone() for p in params]
        model.zero_grad()
        logistic_loss(model.margins(batch, tables)).mean().backward()
        diff = max(float((a - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-12))
                   for a, p in zip(ddp_grads, params))
        json.dump({"max_rel_diff": diff, "rows": float(rows[0]), "world": ddp.world_size},
                  open(sys.argv[1], "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_process_gradient_equals_the_global_batch_gradient(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    proc = subprocess.run(
        [*LAUNCH, str(script), str(out)], env=ENV, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["rows"] == 301  # the shards cover the global batch once
    assert result["max_rel_diff"] < 1e-5  # same gradient up to float summation order


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_nproc_2_training_matches_one_process(tmp_path):
    synth = tmp_path / "synth"
    result = runner.invoke(app, ["synth", str(synth), "--model", "pal_b", "--users", "40", "--val", "20"])
    assert result.exit_code == 0, result.output
    data = [
        str(synth / "train.jsonl"),
        "--val",
        str(synth / "val.jsonl"),
        "--encoder",
        str(synth / "vectors.npz"),
    ]
    options = ["--k", "2", "--epochs", "5", "--batch-size", "256", "--rows-per-context", "2", "--seed", "1"]
    single, double = tmp_path / "single", tmp_path / "double"
    result = runner.invoke(app, ["train", *data, *options, "--out", str(single)])
    assert result.exit_code == 0, result.output
    command = [sys.executable, "-m", "pluralign.cli", "train", *data, *options, "--out", str(double)]
    proc = subprocess.run(
        [*command, "--nproc", "2", "--checkpoint-every", "16", "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)  # rank 0 alone prints (and writes)
    assert row["processes"] == 2
    assert len(list((double / "checkpoints").glob("state-*.json"))) == 2
    assert json.loads((double / "train.json").read_text())["world_size"] == 2

    got, want = _metrics(double), _metrics(single)
    assert len(got) == len(want) == 5
    for a, b in zip(got, want, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    got, want = load_file(double / "model/model.safetensors"), load_file(single / "model/model.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
