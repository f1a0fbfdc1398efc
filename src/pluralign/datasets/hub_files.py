"""Reading a hub dataset's files, as the hub ships them, with every problem located by file, line and field.

A *source* is the split -> table of one dataset: from a local copy (``--from DIR``: the ``.jsonl``,
``.json`` (JSON Lines) and ``.parquet`` files under DIR, read exactly, never with pickle) or from the hub
through ``datasets.load_dataset`` when a network is there. Each table is a pandas frame with two extra
columns, ``_file`` and ``_line`` (1-based: the physical line of a JSONL record, the row of a Parquet file or
hub split), so that :func:`fail` can name ``file:line: field 'name': reason`` for the first bad row.

Offline (``HF_HUB_OFFLINE=1``) without a local copy is one :class:`~pluralign.errors.DataError` naming the
dataset and the ``--from`` option. This module is the reading layer of :mod:`pluralign.datasets.hub`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.errors import DataError

__all__ = [
    "PICKLE_SUFFIXES",
    "TABLE_SUFFIXES",
    "Source",
    "as_records",
    "fail",
    "hub_offline",
    "load_hub",
    "read_local",
    "require_columns",
    "split_of",
    "text_column",
]

TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")
#: formats that can only be read by unpickling (which can run code): refused, never opened
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".npy_pickle", ".zip")
OFFLINE_VALUES = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Source:
    """The tables of one dataset by split, where they came from, and the files read."""

    tables: dict[str, pd.DataFrame]
    origin: str  # "local:<dir>" or "hub:<repo>"
    files: tuple[str, ...] = ()


# ========================================================================================================
# local copies
# ========================================================================================================
def read_local(
    directory: str | Path,
    *,
    dataset: str,
    split_of_file: Callable[[Path], str],
    include: Callable[[Path], bool] = lambda p: True,
) -> Source:
    """Every table file under ``directory`` (recursively, sorted; hidden files skipped) that ``include``
    accepts, grouped by ``split_of_file(path)``. Pickle-only files are refused with a clear message."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise DataError(f"no such directory (the local copy of {dataset})", path=root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    paths = [p for p in paths if not any(part.startswith(".") for part in p.relative_to(root.parent).parts)]
    pickled = [p for p in paths if p.suffix.lower() in PICKLE_SUFFIXES and include(p)]
    if pickled:
        raise DataError(
            f"{pickled[0].suffix} files can only be read by unpickling, which can run code: pluralign never "
            f"opens them. Convert them to .jsonl/.parquet/.npz (see docs/datasets/hub.md, {dataset})",
            path=pickled[0],
        )
    tables = [p for p in paths if p.suffix.lower() in TABLE_SUFFIXES and include(p)]
    if not tables:
        raise DataError(
            f"no {dataset} files here (expected {', '.join(TABLE_SUFFIXES)} files as the hub ships them)",
            path=root,
        )
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in tables:
        parts.setdefault(split_of_file(path), []).append(read_table_file(path))
    frames = {split: pd.concat(fs, ignore_index=True) for split, fs in parts.items()}
    return Source(frames, f"local:{root}", tuple(str(p) for p in tables))


def read_table_file(path: Path) -> pd.DataFrame:
    """One JSONL (``.jsonl``/``.json``, one object a line) or Parquet file, with ``_file`` and ``_line``."""
    where = str(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            frame = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file: {exc}", path=where) from None
        lines = np.arange(1, len(frame) + 1)
    else:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=where) from None
        except OSError as exc:
            raise DataError(f"cannot read file: {exc.strerror or exc}", path=where) from None
        records, line_numbers = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"invalid JSON ({exc.msg}, column {exc.colno})", path=where, line=number
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"expected a JSON object, got {type(record).__name__}", path=where, line=number
                )
            records.append(record)
            line_numbers.append(number)
        frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
        lines = np.asarray(line_numbers, dtype=np.int64)
    frame["_file"] = where
    frame["_line"] = lines
    return frame


def split_of(path: Path, default: str = "train") -> str:
    """The split a hub file belongs to by its name (``train-0000.parquet``, ``test/0000.parquet``...)."""
    words = [path.stem.lower(), *(p.lower() for p in path.parent.parts[-2:])]
    for word in words:
        for split, keys in (("validation", ("validation", "valid", "val")), ("test", ("test",))):
            if any(word == k or word.startswith(f"{k}-") or word.endswith(f"-{k}") for k in keys):
                return split
        if word == "train" or word.startswith("train-") or word.endswith("-train"):
            return "train"
    return default


# ========================================================================================================
# the hub
# ========================================================================================================
def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


def load_hub(repo: str, config: str | None, *, dataset: str) -> Source:
    """``datasets.load_dataset(repo, config)``, each split as a frame; offline or unreachable is one
    DataError naming the dataset and ``--from``."""
    hint = (
        f"{dataset}: the hub dataset {repo}"
        + (f" (config {config!r})" if config else "")
        + " is not available "
    )
    advice = (
        f"download it (e.g. `huggingface-cli download {repo} --repo-type dataset --local-dir DIR`) and pass "
        "--from DIR"
    )
    if hub_offline():
        raise DataError(hint + f"offline (HF_HUB_OFFLINE=1): {advice}, or unset HF_HUB_OFFLINE to load it")
    try:
        import datasets
    except ImportError:
        raise DataError(hint + f"(the 'datasets' package is not installed): {advice}") from None
    try:
        loaded = datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
    except Exception as exc:  # network, auth or hub errors of many kinds: one message, no traceback
        raise DataError(hint + f"({type(exc).__name__}: {exc}): {advice}") from None
    tables = {}
    for split, part in loaded.items():
        frame = part.to_pandas()
        frame["_file"] = f"hf://{repo}/{config or 'default'}/{split}"
        frame["_line"] = np.arange(1, len(frame) + 1)
        tables[str(split)] = frame
    return Source(tables, f"hub:{repo}" + (f":{config}" if config else ""))


# ========================================================================================================
# checks
# ========================================================================================================
def fail(frame: pd.DataFrame, bad: np.ndarray | pd.Series, field: str, reason: str) -> None:
    """Raise a DataError at the first row where ``bad`` holds (file:line: field), with the count of others."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    row = int(np.argmax(bad))
    others = int(bad.sum()) - 1
    more = f" ({others} more row{'s' if others != 1 else ''} like it)" if others else ""
    raise DataError(
        reason + more, path=str(frame["_file"].iloc[row]), line=int(frame["_line"].iloc[row]), field=field
    )


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], *, dataset: str) -> None:
    """Every file of the frame has the columns (a missing column is reported at the file's first row)."""
    for column in columns:
        if column not in frame.columns:
            found = ", ".join(c for c in frame.columns if not c.startswith("_")) or "none"
            raise DataError(
                f"missing column for {dataset} (columns found: {found})",
                path=str(frame["_file"].iloc[0]) if len(frame) else None,
                line=int(frame["_line"].iloc[0]) if len(frame) else None,
                field=column,
            )
        fail(frame, frame[column].isna().to_numpy(), column, f"missing value (every {dataset} row needs one)")


def text_column(frame: pd.DataFrame, column: str, *, allow_empty: bool = False) -> np.ndarray:
    """The column as an object array of str; a non-string (or, unless allowed, blank) value is an error."""
    values = frame[column].to_numpy(dtype=object)
    is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    fail(frame, ~is_text, column, "must be a string")
    if not allow_empty:
        blank = np.fromiter((not v.strip() for v in values), dtype=bool, count=len(values))
        fail(frame, blank, column, "must not be empty")
    return values


def as_records(value: Any) -> list[Any] | None:
    """A JSON list or a Parquet list cell (a numpy array) as a Python list; None when it is neither."""
    if isinstance(value, list):
        return value
    if isinstance(value, np.ndarray):
        return list(value)
    return None
