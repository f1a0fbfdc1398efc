"""Resumable training: the whole state of the fit loop, checkpointed atomically into a directory.

A checkpoint is two files named by the global step, ``state-<step>.safetensors`` (model, best-epoch model,
optimizer tensors, RNG states, the running epoch sums) and ``state-<step>.json`` (position in the data,
history, early-stopping counters, optimizer hyperparameters, the training config, a fingerprint of the
data and the sha256 of the tensor file). Each is written to a temp file, fsynced and renamed; the JSON goes
last and is the commit record, so a kill at any moment leaves the previous checkpoint intact. The last two
are kept. No pickle: torch optimizer state dicts are flattened into named tensors plus JSON.

The data position is (epoch, steps done in it) plus the shuffling generator's state at the start of that
epoch: the epoch's order is regenerated on resume instead of stored (320 MB at 40M rows). Together with the
global torch RNG (dropout) and the optimizer moments, a resumed run repeats the uninterrupted run's
arithmetic exactly, so on CPU with the same thread count it ends bit-identical.
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
from pluralign.models.base import Batch, Tables
from pluralign.training.distributed import DistContext
from pluralign.training.trainer import History, TrainConfig

logger = logging.getLogger(__name__)

FORMAT = "pluralign-train-state"
VERSION = 1
KEEP = 2
_NAME = re.compile(r"^state-(\d{10})\.json$")
#: TrainConfig fields that do not change the arithmetic of training (may differ on resume)
NON_TRAJECTORY = {"epochs", "progress", "metrics_path", "checkpoint_dir", "checkpoint_every"}
NON_TRAJECTORY |= {"checkpoint_seconds", "resume"}


@dataclasses.dataclass
class TrainState:
    """Where a fit loop is: ``step`` steps of ``epoch`` (1-based) are done."""

    epoch: int
    step: int
    global_step: int
    #: state of the shuffling generator at the start of ``epoch`` (its order is regenerated from it)
    generator_state: torch.Tensor
    loss_sum: torch.Tensor
    correct: torch.Tensor
    history: History
    best_state: dict[str, torch.Tensor] | None
    stale: int
    elapsed: float


def data_fingerprint(train: tuple[Batch, Tables], val: tuple[Batch, Tables] | None) -> str:
    """sha256 of the index arrays and table shapes (plus up to 256 sampled vectors of each table).

    Resuming on other data would silently train on a mix; this catches a changed file or split.
    """
    digest = hashlib.sha256()
    for part in (train, val):
        if part is None:
            digest.update(b"none")
            continue
        batch, tables = part
        for tensor in batch:
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.contiguous().numpy())
        for table in tables:
            digest.update(str(tuple(table.shape)).encode())
            if len(table):
                rows = torch.linspace(0, len(table) - 1, min(len(table), 256)).long()
                digest.update(table[rows].contiguous().numpy())
    return digest.hexdigest()


def trajectory_config(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in NON_TRAJECTORY}


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


def save_train_state(
    directory: str | Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    fingerprint: str,
    world_size: int = 1,
) -> Path:
    """Write a checkpoint of ``state`` (atomically, JSON last) and drop all but the newest ``KEEP``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    optim_tensors, optim_meta = flatten_optimizer(optimizer)
    tensors = {
        **_prefixed("model.", model.state_dict()),
        **_prefixed("best.", state.best_state or {}),
        **{k: v.detach().clone() for k, v in optim_tensors.items()},
        "rng.torch": torch.get_rng_state(),
        "rng.generator": state.generator_state,
        "epoch.loss_sum": state.loss_sum.detach().clone(),
        "epoch.correct": state.correct.detach().clone(),
    }
    blob = save_tensors(tensors)
    stem = f"state-{state.global_step:010d}"
    atomic_write(directory / f"{stem}.safetensors", lambda handle: handle.write(blob))
    history = dataclasses.asdict(state.history)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": f"{stem}.safetensors",
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "epoch": state.epoch,
        "step": state.step,
        "global_step": state.global_step,
        "elapsed": state.elapsed,
        "stale": state.stale,
        "has_best": state.best_state is not None,
        "history": history,
        "optimizer": optim_meta,
        "config": trajectory_config(config),
        "data_fingerprint": fingerprint,
        "world_size": world_size,
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


def load_train_state(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    fingerprint: str,
    world_size: int = 1,
) -> TrainState:
    """Restore model, optimizer and RNGs from the newest checkpoint in ``directory``; return the position.

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
    saved_config, current = record.get("config", {}), trajectory_config(config)
    changed = sorted(k for k in current.keys() | saved_config.keys() if saved_config.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved_config.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(f"{path}: the checkpoint was written with other training settings ({details})")
    if record.get("data_fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: the checkpoint was written for other training/validation data (fingerprint mismatch)"
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
        model.load_state_dict(_strip(tensors, "model."), strict=True)
        optimizer.load_state_dict(unflatten_optimizer(tensors, record["optimizer"]))
        best = _strip(tensors, "best.") if record["has_best"] else None
        torch.set_rng_state(tensors["rng.torch"])
        history = History(**record["history"])
        state = TrainState(
            epoch=int(record["epoch"]),
            step=int(record["step"]),
            global_step=int(record["global_step"]),
            generator_state=tensors["rng.generator"],
            loss_sum=tensors["epoch.loss_sum"],
            correct=tensors["epoch.correct"],
            history=history,
            best_state=best,
            stale=int(record["stale"]),
            elapsed=float(record["elapsed"]),
        )
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint does not match the model or is damaged ({exc}){older}"
        ) from None
    if record.get("world_size", 1) != world_size:
        logger.warning(
            "resuming a %d-process run with %d processes: same batches, other float summation order",
            record.get("world_size", 1),
            world_size,
        )
    logger.info("resuming from %s: epoch %d, step %d", path, state.epoch, state.step)
    return state


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


class Checkpointer:
    """The fit loop's checkpoint policy: when to save (every N steps and/or seconds), on rank 0 only."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train: tuple[Batch, Tables],
        val: tuple[Batch, Tables] | None,
        ddp: DistContext,
    ) -> None:
        if not config.checkpoint_dir:
            raise ValueError("Checkpointer needs config.checkpoint_dir")
        self.directory = Path(config.checkpoint_dir)
        self.config, self.model, self.optimizer, self.ddp = config, model, optimizer, ddp
        self.fingerprint = data_fingerprint(train, val)
        self.last = time.monotonic()
        if not config.resume and ddp.is_main:
            clear_train_state(self.directory)  # a fresh run must never mix with an older run's states

    def due(self, global_step: int) -> bool:
        if not self.ddp.is_main:
            return False
        every, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return bool(
            (every and global_step % every == 0) or (seconds and time.monotonic() - self.last >= seconds)
        )

    def save(self, state: TrainState) -> Path:
        path = save_train_state(
            self.directory,
            state,
            self.model,
            self.optimizer,
            self.config,
            self.fingerprint,
            self.ddp.world_size,
        )
        self.last = time.monotonic()
        return path

    def load(self) -> TrainState:
        return load_train_state(
            self.directory, self.model, self.optimizer, self.config, self.fingerprint, self.ddp.world_size
        )
