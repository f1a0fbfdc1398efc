"""Resumable training: the whole state of the fit loop, checkpointed atomically into a directory.

The fit loop (training/trainer.py) knows nothing of files: ``Checkpointer`` is one of its callbacks. It
restores a run in ``on_train_begin`` (``config.resume``) and saves after the steps that are due.

A checkpoint is two files named by the global step, ``state-<step>.safetensors`` (every trained module,
i.e. the model and, for PAL-Large, the text encoder; the best-epoch weights; optimizer tensors; RNG states;
the running epoch sums) and ``state-<step>.json`` (position in the data, history, early-stopping counters,
optimizer and loss-scaler hyperparameters, the training config, a fingerprint of the data and the sha256
of the tensor file). Each is written to a temp file, fsynced and renamed; the JSON goes last and is the
commit record, so a kill at any moment leaves the previous checkpoint intact. The last two are kept. No
pickle: torch optimizer state dicts are flattened into named tensors plus JSON.

The data position is (epoch, steps done in it) plus the shuffling generator's state at the start of that
epoch: the epoch's order is regenerated on resume instead of stored (320 MB at 40M rows). Together with the
global torch RNG (dropout) and the optimizer moments (the lazy user table's per-row step counts included),
a resumed run repeats the uninterrupted run's arithmetic exactly, so on CPU with the same thread count it
ends bit-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pluralign.atomic import TMP_PREFIX, atomic_write, atomic_write_json
from pluralign.errors import CheckpointError
from pluralign.training.config import Callback, History, Run, TrainConfig, TrainState

logger = logging.getLogger(__name__)

FORMAT = "pluralign-train-state"
#: 2: modules by name (model., encoder.), the lazy user optimizer's per-row state, the loss scaler
#: 3: the step budget (evaluations every N steps, the learning-rate schedule, rows since the last record)
VERSION = 3
KEEP = 2
_NAME = re.compile(r"^state-(\d{10})\.json$")
#: TrainConfig fields that do not change the arithmetic of training (may differ on resume)
NON_TRAJECTORY = {"epochs", "progress", "metrics_path", "checkpoint_dir", "checkpoint_every"}
NON_TRAJECTORY |= {"checkpoint_seconds", "resume", "derived"}


def trajectory_config(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint. The number of steps is one of them only
    on a decaying schedule (at a constant learning rate a run may be resumed with more epochs)."""
    skip = NON_TRAJECTORY | ({"max_steps"} if config.lr_schedule == "constant" else set())
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


# --- optimizer state without pickle -------------------------------------------------------------------
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as named tensors (``optim.<param>.<key>``) and JSON-able metadata."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten_optimizer``: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    # JSON turned tuples (AdamW's betas) into lists; "params" is the one list that must stay a list
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# --- save / load ---------------------------------------------------------------------------------------
def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().contiguous().cpu() for k, v in tensors.items()}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return tensors


def save_train_state(directory: str | Path, run: Run) -> Path:
    """Write a checkpoint of ``run`` (atomically, JSON last) and drop all but the newest ``KEEP``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = run.state
    optim_tensors, optim_meta = flatten_optimizer(run.optimizer)
    tensors = {
        **{k: v for name, m in run.modules.items() for k, v in _prefixed(f"{name}.", m.state_dict()).items()},
        **{
            k: v
            for name, best in (state.best_state or {}).items()
            for k, v in _prefixed(f"best.{name}.", best).items()
        },
        **{k: v.detach().cpu().clone() for k, v in optim_tensors.items()},
        **_rng_tensors(),
        "rng.generator": state.generator_state,
        "epoch.loss_sum": state.loss_sum.detach().cpu().clone(),
        "epoch.correct": state.correct.detach().cpu().clone(),
    }
    blob = save_tensors(tensors)
    stem = f"state-{state.global_step:010d}"
    atomic_write(directory / f"{stem}.safetensors", lambda handle: handle.write(blob))
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": f"{stem}.safetensors",
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "epoch": state.epoch,
        "step": state.step,
        "global_step": state.global_step,
        "elapsed": run.seconds(),
        "stale": state.stale,
        "window_rows": state.window_rows,
        "modules": sorted(run.modules),
        "has_best": state.best_state is not None,
        "history": dataclasses.asdict(state.history),
        "optimizer": optim_meta,
        "scaler": run.scaler.state_dict(),
        "config": trajectory_config(run.config),
        "data_fingerprint": run.fingerprint,
        "world_size": run.ddp.world_size,
    }
    atomic_write_json(directory / f"{stem}.json", record)
    _prune(directory, keep_step=state.global_step)
    logger.debug("checkpoint %s (epoch %d, step %d)", stem, state.epoch, state.step)
    return directory / f"{stem}.json"


def _committed(directory: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in directory.glob("state-*.json") if (m := _NAME.match(p.name))]
    return sorted(found)


def _prune(directory: Path, keep_step: int) -> None:
    """Drop checkpoints older than the newest KEEP, and tensor files whose JSON never got written."""
    committed = _committed(directory)
    keep = {step for step, _ in committed[-KEEP:]} | {keep_step}
    for step, path in committed:
        if step not in keep:
            path.with_suffix(".safetensors").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
    for path in directory.glob("state-*.safetensors"):
        if not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)


def clear_train_state(directory: str | Path) -> None:
    """Delete every checkpoint in ``directory`` (other files are left alone)."""
    directory = Path(directory)
    if directory.is_dir():
        for path in [*directory.glob("state-*.json"), *directory.glob("state-*.safetensors")]:
            path.unlink(missing_ok=True)


def has_train_state(directory: str | Path) -> bool:
    directory = Path(directory)
    return directory.is_dir() and bool(_committed(directory))


def load_train_state(directory: str | Path, run: Run) -> TrainState:
    """Restore ``run``'s modules, optimizer, loss scaler and RNGs from the newest checkpoint in
    ``directory``; return the position (the fit loop continues from it).

    Any mismatch (another config or data, a damaged file) raises ``CheckpointError`` naming the file.
    """
    directory = Path(directory)
    committed = _committed(directory) if directory.is_dir() else []
    if not committed:
        raise CheckpointError(f"{directory}: no training checkpoint (state-*.json) to resume from")
    for leftover in directory.glob(f"{TMP_PREFIX}*"):
        leftover.unlink(missing_ok=True)  # a killed writer's temp file; this run is the only writer
    path = committed[-1][1]
    older = (
        f"; delete {path.name} and its .safetensors to resume from {committed[-2][1].name}"
        if len(committed) > 1
        else ""
    )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({exc}){older}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pluralign training checkpoint{older}")
    if record.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: training checkpoint version {record.get('version')} is not supported "
            f"(this pluralign reads version {VERSION})"
        )
    saved_config, current = record.get("config", {}), trajectory_config(run.config)
    changed = sorted(k for k in current.keys() | saved_config.keys() if saved_config.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved_config.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"{path}: the checkpoint was written with other training settings ({details})")
    if record.get("data_fingerprint") != run.fingerprint:
        raise CheckpointError(
            f"{path}: the checkpoint was written for other training/validation data (fingerprint mismatch)"
        )
    if record.get("modules") != sorted(run.modules):
        raise CheckpointError(
            f"{path}: the checkpoint trained {record.get('modules')}, this run trains {sorted(run.modules)}"
        )
    tensor_path = directory / str(record.get("tensors", ""))
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{tensor_path}: cannot read ({exc.strerror}){older}") from None
    if hashlib.sha256(blob).hexdigest() != record.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path}: checksum mismatch: the file is corrupt or was changed{older}")
    try:
        tensors = load_tensors(blob)
        for name, module in run.modules.items():
            module.load_state_dict(_strip(tensors, f"{name}."), strict=True)
        run.optimizer.load_state_dict(unflatten_optimizer(tensors, record["optimizer"]))
        if record["scaler"]:
            run.scaler.load_state_dict(record["scaler"])
        best = (
            {name: _strip(tensors, f"best.{name}.") for name in run.modules} if record["has_best"] else None
        )
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        state = TrainState(
            epoch=int(record["epoch"]),
            step=int(record["step"]),
            global_step=int(record["global_step"]),
            generator_state=tensors["rng.generator"],
            loss_sum=tensors["epoch.loss_sum"],
            correct=tensors["epoch.correct"],
            history=History(**record["history"]),
            best_state=best,
            stale=int(record["stale"]),
            elapsed=float(record["elapsed"]),
            window_rows=int(record["window_rows"]),
        )
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint does not match the model or is damaged ({exc}){older}"
        ) from None
    if record.get("world_size", 1) != run.ddp.world_size:
        logger.warning(
            "resuming a %d-process run with %d processes: same batches, other float summation order",
            record.get("world_size", 1),
            run.ddp.world_size,
        )
    logger.info("resuming from %s: epoch %d, step %d", path, state.epoch, state.step)
    return state


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


class Checkpointer(Callback):
    """The fit loop's checkpoint callback: restore on resume; save every N steps and/or seconds, on rank 0.

    A fresh run (``config.resume`` False) first deletes the directory's older checkpoints, so it never
    mixes with an earlier run's states.
    """

    checkpoints = True

    def __init__(self, config: TrainConfig) -> None:
        if not config.checkpoint_dir:
            raise ValueError("Checkpointer needs config.checkpoint_dir")
        self.directory = Path(config.checkpoint_dir)
        self.config = config
        self.last = time.monotonic()

    def on_train_begin(self, run: Run) -> None:
        self.last = time.monotonic()
        if self.config.resume:
            run.state = load_train_state(self.directory, run)
        elif run.ddp.is_main:
            clear_train_state(self.directory)

    def due(self, run: Run) -> bool:
        if not run.ddp.is_main:
            return False
        every, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return bool(
            (every and run.state.global_step % every == 0)
            or (seconds and time.monotonic() - self.last >= seconds)
        )

    def on_step_end(self, run: Run) -> None:
        if self.due(run):
            self.save(run)

    def save(self, run: Run) -> Path:
        path = save_train_state(self.directory, run)
        self.last = time.monotonic()
        return path


def checkpoint_callbacks(config: TrainConfig) -> list[Checkpointer]:
    """The fit-loop callbacks ``config`` asks for: a ``Checkpointer`` when it has a ``checkpoint_dir``."""
    return [Checkpointer(config)] if config.checkpoint_dir else []
