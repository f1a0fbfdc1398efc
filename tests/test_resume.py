"""Resumable training: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run;
damaged or mismatched checkpoints are refused with a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, load_file, save
from typer.testing import CliRunner

from pluralign import PALA, PALB
from pluralign.cli import app
from pluralign.datasets.synthetic import make_synthetic
from pluralign.errors import CheckpointError
from pluralign.training import resume as resume_module
from pluralign.training.resume import flatten_optimizer, unflatten_optimizer

runner = CliRunner()

#: one run's options: dropout (the global torch RNG), validation (early-stopping state) and several
#: epochs, so a checkpoint holds every kind of state; 16 steps an epoch, 960 steps in all
OPTIONS = ["--model", "pal-b", "--k", "2", "--dim", "8", "--epochs", "60", "--batch-size", "250"]
OPTIONS += ["--dropout", "0.1", "--patience", "50", "--seed", "5"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _newest_step(checkpoints: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in checkpoints.glob("state-*.json")]
    return max(steps, default=0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = invoke("synth", out, "--model", "pal_b", "--users", 40, "--train", 100, "--val", 25, "--seed", 2)
    assert result.exit_code == 0, result.output
    return out


def _data_args(synth: Path) -> list[str]:
    return [
        str(synth / "train.jsonl"),
        "--val",
        str(synth / "val.jsonl"),
        "--encoder",
        str(synth / "vectors.npz"),
    ]


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory) -> Path:
    """The uninterrupted run, without checkpoints (checkpointing must not change the arithmetic)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = invoke("train", *_data_args(synth), *OPTIONS, "--out", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(synth, reference, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the tests' thread count
    command = [sys.executable, "-m", "pluralign.cli", "train", *_data_args(synth), *OPTIONS]
    proc = subprocess.Popen(
        [*command, "--out", str(run), "--checkpoint-every", "25"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # kill once a checkpoint past epoch 4 exists: history and early-stopping state are not empty
        while _newest_step(run / "checkpoints") < 75 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _newest_step(run / "checkpoints")
    assert 75 <= killed_at < 960, killed_at
    assert not (run / "model").exists()
    assert json.loads((run / "train.json").read_text())["status"] == "running"

    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert _metrics(run) == _metrics(reference)  # every epoch's losses and accuracies, exactly
    got = load_file(run / "model" / "model.safetensors")
    want = load_file(reference / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert json.loads((run / "train.json").read_text())["status"] == "finished"
    result = invoke("train", "--resume", run)
    assert result.exit_code == 2 and "already finished" in result.output


@pytest.fixture(scope="module")
def small():
    return make_synthetic(
        model="pal_a", n_users=30, n_train=40, n_val=15, n_test=5, n_prototypes=2, seed=1,
        n_unseen_users=2, n_unseen_per_user=5,
    )  # fmt: skip


def _crash_after(monkeypatch, saves: int) -> None:
    """Make the fit loop die right after its ``saves``-th checkpoint (as a kill would)."""
    original = resume_module.Checkpointer.save
    count = [0]

    def save(self, state):
        path = original(self, state)
        count[0] += 1
        if count[0] == saves:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(resume_module.Checkpointer, "save", save)


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (PALA, {"dropout": 0.2}),
        (PALB, {"rows_per_context": 3, "loss": "hinge"}),
        # the step budget: warm-up + cosine schedule, evaluations every few steps mid-epoch
        (PALB, {"epochs": None, "max_steps": 30, "eval_every": 4, "min_steps": 10}),
    ],
)
def test_in_process_crash_and_resume_match(cls, extra, small, tmp_path, monkeypatch):
    params = {**dict(n_prototypes=2, dim=6, epochs=8, batch_size=128, patience=3, seed=3), **extra}
    reference = cls(**params).fit(small.train, small.val)
    metrics = tmp_path / "metrics.jsonl"
    params.update(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3, metrics_path=metrics)
    _crash_after(monkeypatch, saves=4)
    with pytest.raises(KeyboardInterrupt):
        cls(**params).fit(small.train, small.val)
    monkeypatch.undo()
    resumed = cls(**params).fit(small.train, small.val, resume=True)

    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in reference.history_.epochs]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed.history_.epochs] == strip
    assert [
        {k: v for k, v in json.loads(x).items() if k != "seconds"} for x in metrics.read_text().splitlines()
    ] == strip
    assert resumed.history_.best_step == reference.history_.best_step
    for name, value in reference.model_.state_dict().items():
        assert torch.equal(resumed.model_.state_dict()[name], value), name
    # only the newest two checkpoints are kept
    assert len(list((tmp_path / "ckpt").glob("state-*.json"))) == 2


def test_optimizer_state_round_trips_without_pickle():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.95), foreach=True)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    tensors, meta = flatten_optimizer(optimizer)
    tensors = load(save(tensors))  # through safetensors bytes and JSON text, as a checkpoint does
    assert set(tensors) == {f"optim.{i}.{k}" for i in range(2) for k in ("step", "exp_avg", "exp_avg_sq")}
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(model.state_dict())
    restored = torch.optim.AdamW(clone.parameters(), lr=1.0)
    restored.load_state_dict(unflatten_optimizer(tensors, json.loads(json.dumps(meta))))
    assert restored.param_groups[0]["betas"] == (0.8, 0.95) and restored.param_groups[0]["lr"] == 0.1
    x = torch.randn(4, 3)
    for opt, net in ((optimizer, model), (restored, clone)):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    assert torch.equal(model.weight, clone.weight) and torch.equal(model.bias, clone.bias)


@pytest.fixture
def interrupted(small, tmp_path, monkeypatch):
    """A checkpoint directory left by a crashed PAL-B fit, and the parameters of that fit."""
    params = dict(n_prototypes=2, dim=6, epochs=5, batch_size=128, checkpoint_dir=tmp_path / "ckpt")
    params["checkpoint_every"] = 2
    _crash_after(monkeypatch, saves=3)
    with pytest.raises(KeyboardInterrupt):
        PALB(**params).fit(small.train, small.val)
    monkeypatch.undo()
    return params


def test_damaged_checkpoint_is_refused_naming_the_file(interrupted, small):
    directory = Path(interrupted["checkpoint_dir"])
    newest = sorted(directory.glob("state-*.safetensors"))[-1]
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    newest.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=rf"{newest.name}: checksum mismatch.*resume from state-"):
        PALB(**interrupted).fit(small.train, small.val, resume=True)
    newest.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable training checkpoint"):
        PALB(**interrupted).fit(small.train, small.val, resume=True)
    # following the hint (deleting the newest pair) resumes from the older one
    newest.unlink()
    newest.with_suffix(".json").unlink()
    PALB(**interrupted).fit(small.train, small.val, resume=True)


def test_other_settings_data_or_model_are_refused(interrupted, small):
    with pytest.raises(CheckpointError, match=r"other training settings \(lr_users: [0-9.e-]+ -> 0.1\)"):
        PALB(**{**interrupted, "lr_users": 0.1}).fit(small.train, small.val, resume=True)
    with pytest.raises(CheckpointError, match="other training/validation data"):
        PALB(**interrupted).fit(small.train.subset(np.arange(1, len(small.train))), small.val, resume=True)
    with pytest.raises(CheckpointError, match="does not match the model"):
        PALB(**{**interrupted, "dim": 7}).fit(small.train, small.val, resume=True)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        PALB(**{**interrupted, "checkpoint_dir": "/nonexistent/dir"}).fit(small.train, resume=True)
    # more epochs is allowed: the arithmetic of the first ones does not change
    PALB(**{**interrupted, "epochs": 6}).fit(small.train, small.val, resume=True)


def test_cli_resume_errors(synth, tmp_path):
    result = invoke("train", "--resume", tmp_path / "nothing")
    assert result.exit_code == 2 and "no train.json" in result.output
    run = tmp_path / "plain"
    assert invoke("train", *_data_args(synth), "--epochs", "1", "--out", run).exit_code == 0
    result = invoke("train", "--resume", run)
    assert result.exit_code == 2 and "already finished" in result.output
    result = invoke("train", *_data_args(synth), "--resume", run)
    assert result.exit_code == 2 and "give no TRAIN file" in result.output
    result = invoke("train", "--epochs", "1")
    assert result.exit_code == 2 and "--out RUN_DIR" in result.output
