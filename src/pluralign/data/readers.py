"""Read and write preference rows (user_id, prompt, chosen, rejected): JSONL, CSV, Parquet, HF datasets.

Every source goes through one vectorized validation, so a bad row is reported the same way whatever the
format: ``file:line: field 'name': reason``, plus how many other rows are bad. Lines are 1-based: physical
lines for JSONL and CSV (the CSV header is line 1), row numbers for Parquet, HF datasets and data frames.

Valid JSONL and CSV files take a fast path through pyarrow's multithreaded readers; anything unusual
(a parse error, nulls, mixed types, quoted newlines) falls back to an exact line-by-line reader, which is
slower but locates every problem precisely.

This module detects the format, reads and writes; the readers live in :mod:`pluralign.data.text_readers`
(JSONL, CSV) and :mod:`pluralign.data.table_readers` (Parquet, HF datasets, data frames), the row checks
in :mod:`pluralign.data.validation`, and what they share in :mod:`pluralign.data.raw`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa

from pluralign.atomic import atomic_write
from pluralign.data.comparisons import COLUMNS, PreferenceData
from pluralign.data.conversation import ChatTemplate, holds_messages
from pluralign.data.raw import ALIASES, KNOWN_TYPES, Raw
from pluralign.data.table_readers import (
    is_hf_dataset,
    raw_from_frame,
    raw_from_hf,
    raw_from_hf_dir,
    raw_from_parquet,
)
from pluralign.data.text_readers import fast_csv, fast_jsonl, slow_csv, slow_jsonl
from pluralign.data.validation import validate
from pluralign.errors import DataError

__all__ = ["ALIASES", "read_preferences", "write_preferences"]

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet",)
REQUIRED = ("user_id", "chosen", "rejected")

# The readers' names from before they moved to their own modules: tests/test_data_readers.py compares
# the fast and exact readers through them.
_fast_jsonl, _slow_jsonl = fast_jsonl, slow_jsonl
_fast_csv, _slow_csv, _validate = fast_csv, slow_csv, validate


# ========================================================================================================
# public API
# ========================================================================================================
def read_preferences(
    source: Any, *, source_name: str | None = None, chat_template: ChatTemplate = None
) -> PreferenceData:
    """Read and validate preference rows into a :class:`PreferenceData`.

    ``source`` is a path to a ``.jsonl``/``.json`` (JSON Lines), ``.csv`` or ``.parquet`` file, a directory
    written by ``datasets.Dataset.save_to_disk``, or an in-memory ``datasets.Dataset`` or
    ``pandas.DataFrame``. ``source_name`` replaces the path (or ``<DataFrame>``/``<Dataset>``) in error
    messages and becomes ``.source``. Raises :class:`DataError` on the first invalid row (in file order),
    with the count of the other invalid rows. Duplicate rows are kept and logged as a warning.

    Rows are in TRL's standard format (strings) or its conversational one (message lists, explicit or
    implicit prompt; not in CSV), one format per source; ``chat_template`` says how a conversation becomes
    text (see :func:`pluralign.data.conversation.render_messages`: role-tagged lines by default, or a jinja
    template string, a tokenizer, a callable). It does not affect standard rows. See docs/data-formats.md.
    """
    if isinstance(source, pd.DataFrame):
        where = source_name or "<DataFrame>"
        raw = raw_from_frame(source, where)
        origin = source_name
    elif is_hf_dataset(source):
        where = source_name or "<Dataset>"
        raw = raw_from_hf(source, where)
        origin = source_name
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        where = source_name or str(path)
        raw = _raw_from_path(path, where)
        origin = where
    else:
        raise TypeError(
            "read_preferences expects a path, a pandas.DataFrame or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    frame = validate(raw, chat_template=chat_template)
    data = PreferenceData.from_frame(frame, source=origin)
    _warn_duplicates(data, where)
    return data


def write_preferences(data: PreferenceData | pd.DataFrame, path: str | Path) -> Path:
    """Write rows to ``.jsonl``/``.json`` (JSON Lines), ``.csv`` or ``.parquet``, atomically.

    A frame is written with its canonical columns first, then its other columns (except ``_``-prefixed
    internal ones). The file appears complete or not at all: it is written to a temporary file in the same
    directory and renamed over ``path``. Returns ``path``.
    """
    path = Path(path)
    frame = data.to_frame() if isinstance(data, PreferenceData) else data
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"cannot write: missing column(s) {', '.join(missing)}", path=path)
    first = [c for c in COLUMNS if c in frame.columns]
    rest = [c for c in frame.columns if c not in first and not str(c).startswith("_")]
    frame = frame[first + rest].reset_index(drop=True)

    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(f"cannot write unknown file type '{path.suffix}' ({KNOWN_TYPES})", path=path)
    if not isinstance(data, PreferenceData):
        raw = raw_from_frame(frame, "<DataFrame>")
        validate(raw)  # never write a file that read_preferences refuses
        if suffix in CSV_SUFFIXES and holds_messages(raw.columns):
            raise DataError(
                "cannot write conversational rows (message lists) to CSV, which holds strings only: write "
                ".jsonl or .parquet, or read the rows first (read_preferences renders them to text)",
                path=path,
            )

    def write(handle: BinaryIO) -> None:
        if suffix in JSON_SUFFIXES:
            text = frame.to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
            # pandas escapes every "/" as "\/"; undoing it is safe because no unescaped "/" exists in
            # its output, so each "\/" found is a whole escape sequence.
            handle.write(text.replace("\\/", "/").encode("utf-8"))
        elif suffix in CSV_SUFFIXES:
            # Python 3.11's csv writer quotes a field holding a lone "\r" only if the line terminator has
            # one, so such rows (rare) are written with RFC 4180's CRLF: otherwise they would not read back.
            newline = "\r\n" if _has_carriage_return(frame) else "\n"
            handle.write(frame.to_csv(index=False, lineterminator=newline).encode("utf-8"))
        else:
            frame.to_parquet(handle, index=False)

    try:
        return atomic_write(path, write)
    except (pa.ArrowException, ValueError, TypeError) as exc:  # e.g. an extra column of mixed types
        raise DataError(f"cannot write: {exc}", path=path) from exc


def _has_carriage_return(frame: pd.DataFrame) -> bool:
    text = [
        c for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)
    ]
    return any(frame[c].astype(str).str.contains("\r", regex=False).any() for c in text)


# ========================================================================================================
# format detection
# ========================================================================================================
def _raw_from_path(path: Path, where: str) -> Raw:
    suffix = path.suffix.lower()
    known = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
    if path.is_dir():
        try:
            return raw_from_hf_dir(path, where)
        except DataError:
            if suffix not in known:
                raise
            # named like a file: say so rather than only that it is no saved dataset
            raise DataError(
                f"cannot read file: is a directory, not a {suffix} file (nor a dataset saved by datasets' "
                "save_to_disk)",
                path=where,
            ) from None
    if not path.exists():
        raise DataError("no such file or directory", path=where)
    if suffix not in known:
        raise DataError(f"unknown file type '{path.suffix}' ({KNOWN_TYPES})", path=where)
    if not path.is_file():
        # Opening a FIFO blocks until some writer appears, and devices or sockets are no data files.
        kind = "a FIFO" if path.is_fifo() else "a socket" if path.is_socket() else "a device or special file"
        raise DataError(f"cannot read file: not a regular file ({kind})", path=where)
    if suffix in PARQUET_SUFFIXES:
        return raw_from_parquet(path, where)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=where) from exc
    if suffix in CSV_SUFFIXES:
        return fast_csv(raw, where) or slow_csv(raw, where)
    return fast_jsonl(raw, where) or slow_jsonl(raw, where, array_hint=suffix == ".json")


def _warn_duplicates(data: PreferenceData, where: str) -> None:
    if len(data) < 2:
        return
    keys = pd.DataFrame({"u": data.user, "c": data.context, "a": data.chosen, "b": data.rejected})
    duplicated = keys.duplicated().to_numpy()
    count = int(duplicated.sum())
    if not count:
        return
    row = int(np.argmax(duplicated))
    original = int(
        np.flatnonzero(
            (data.user == data.user[row])
            & (data.context == data.context[row])
            & (data.chosen == data.chosen[row])
            & (data.rejected == data.rejected[row])
        )[0]
    )
    lines = data.source_line if data.source_line is not None else np.arange(1, len(data) + 1)
    log.warning(
        "%s: %d duplicate row%s (same user_id, prompt, chosen, rejected) kept, not dropped; "
        "first at line %d (repeats line %d)",
        where,
        count,
        "s" * (count != 1),
        lines[row],
        lines[original],
    )
