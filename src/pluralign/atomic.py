"""All-or-nothing file writes: write a temp file beside the target, fsync it, then rename it over the target.

A reader sees the old file or the new one, never half of one. Temp names are
``.tmp-<host>-<pid>-<random>-<name>`` so cleanup code can tell a dead writer's leftovers from a live one's.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
TMP_PREFIX = ".tmp-"


def temp_path(path: Path) -> Path:
    """A fresh temp name in ``path``'s directory."""
    return path.with_name(f"{TMP_PREFIX}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a binary handle of a temp file, then move the finished file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))
