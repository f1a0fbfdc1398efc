"""Checkpoints: a directory with config.json, model.safetensors and users.json, written atomically.

No pickle anywhere: tensors go through safetensors, everything else is JSON. config.json records the
sha256 of the tensor file and of users.json, and of its own content (``config_sha256``, over the rest of the
config), so a truncated, altered or hand-edited checkpoint is refused instead of loading wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pluralign.atomic import atomic_write_json
from pluralign.errors import CheckpointError

FORMAT = "pluralign-checkpoint"
VERSION = 1
CONFIG, TENSORS, USERS = "config.json", "model.safetensors", "users.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    users: list[str],
    extra: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint; an existing one at ``directory`` is replaced only once the new one is complete.

    ``extra`` writes more files into the unfinished checkpoint directory it is given (e.g. a fine-tuned
    encoder) and returns entries to add to config.json.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
        atomic_write_json(tmp / USERS, list(users))
        # safetensors creates its file 0600; give it the mode its siblings get from the umask
        os.chmod(tmp / TENSORS, stat.S_IMODE(os.stat(tmp / USERS).st_mode))
        if extra is not None:
            config = {**config, **extra(tmp)}
        full = {
            "format": FORMAT,
            "version": VERSION,
            "tensors_sha256": sha256_file(tmp / TENSORS),
            "users_sha256": sha256_file(tmp / USERS),
            **config,
        }
        full["config_sha256"] = config_digest(json.loads(json.dumps(full)))  # digest of what loading sees
        atomic_write_json(tmp / CONFIG, full)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
        os.rename(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a checkpoint config (canonical JSON, without its own ``config_sha256`` entry)."""
    rest = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_directory(path: str | Path) -> Path:
    """The model checkpoint of ``path``: its ``model/`` folder when it has one (a `pluralign train` run
    directory), else ``path`` itself."""
    path = Path(path)
    return path / "model" if (path / "model").is_dir() else path


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """Read and verify a checkpoint; any problem raises CheckpointError naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (it does not exist or is a file)")
    for name in (CONFIG, TENSORS, USERS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing {name}; is this a pluralign checkpoint?")
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / CONFIG}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{directory / CONFIG}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{directory / CONFIG}: not a pluralign checkpoint (format field missing)")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{directory / CONFIG}: checkpoint version {config.get('version')} is not supported "
            f"(this pluralign reads version {VERSION})"
        )
    # Checkpoints written before config_sha256 and users_sha256 existed lack them; tensors_sha256 is required.
    if "config_sha256" in config and config_digest(config) != config["config_sha256"]:
        raise CheckpointError(
            f"{directory / CONFIG}: checksum mismatch: the file is corrupt or was edited after saving "
            "(load the model and save it again to change settings)"
        )
    for name, key in ((TENSORS, "tensors_sha256"), (USERS, "users_sha256")):
        if (key == "tensors_sha256" or key in config) and sha256_file(directory / name) != config.get(key):
            raise CheckpointError(
                f"{directory / name}: checksum mismatch: the file is corrupt or was changed"
            )
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / TENSORS}: cannot read tensors ({exc})") from None
    try:
        users = json.loads((directory / USERS).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / USERS}: not valid JSON ({exc})") from None
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise CheckpointError(f"{directory / USERS}: expected a JSON list of user id strings")
    return config, tensors, users
