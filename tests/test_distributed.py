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


LARGE_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import pandas as pd
    import torch
    from safetensors.torch import save_file
    from pluralign.estimator import PALBLarge
    from pluralign.training.distributed import init_from_env, shutdown

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    words = np.array("red blue green cat dog tree sun moon fast slow big small".split())
    texts = [" ".join(rng.choice(words, 4)) for _ in range(30)]
    pairs = rng.choice(len(texts), size=(96, 2), replace=True)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    frame = pd.DataFrame({
        "user_id": [f"u{i % 6}" for i in range(len(pairs))],
        "prompt": [["say hi", "say bye"][i % 2] for i in range(len(pairs))],
        "chosen": [texts[a] for a, _ in pairs],
        "rejected": [texts[b] for _, b in pairs],
    })
    def train(out):
        est = PALBLarge(n_prototypes=2, dim=4, encoder=sys.argv[1], epochs=2, batch_size=16,
                        grad_accum_steps=2, precision="fp32", max_length=8, encoder_lr=1e-3, seed=0)
        est.fit(frame)
        tensors = {f"head.{k}": v for k, v in est.model_.state_dict().items()}
        tensors |= {f"tower.{k}": v for k, v in est.encoder_.tower.state_dict().items()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, out)
        open(out + ".loss", "w").write(repr(est.history_.epochs[-1]["train_loss"]))

    ddp = init_from_env()
    assert ddp.world_size == 2
    train(sys.argv[2] + f".rank{ddp.rank}")
    shutdown()
    if ddp.rank == 0:  # the reference: the same fit in this process alone (one launch, not two)
        train(sys.argv[2] + ".single")
    """
)


@pytest.mark.slow
def test_large_two_processes_match_one(tmp_path):
    """PAL-Large: the text encoder and the heads follow the single-process run on 2 gloo processes."""
    import shutil

    from transformers import BertConfig, BertModel

    from pluralign.encoders.sentence import default_model_path

    tower = tmp_path / "tiny-bert"
    config = BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # dropout masks would differ per rank
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tower)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, tower / name)
    script = tmp_path / "large_worker.py"
    script.write_text(LARGE_WORKER)
    out = tmp_path / "weights"
    proc = subprocess.run(
        [*LAUNCH, str(script), str(tower), str(out)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = load_file(f"{out}.single")
    assert any(k.startswith("tower.") for k in want)
    for rank in (0, 1):  # both ranks hold the same model
        got = load_file(f"{out}.rank{rank}")
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        loss = float(Path(f"{out}.rank{rank}.loss").read_text())
        assert loss == pytest.approx(float(Path(f"{out}.single.loss").read_text()), rel=1e-5)
