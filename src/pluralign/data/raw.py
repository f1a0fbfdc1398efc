"""Preference columns as read from a source, before validation, and what every reader shares.

A reader (:mod:`pluralign.data.text_readers` for JSONL and CSV, :mod:`pluralign.data.table_readers` for
Parquet, HF datasets and data frames) turns a source into a :class:`Raw`: canonical column name -> values,
the 1-based line of each row, and any problems found while parsing. :mod:`pluralign.data.validation` then
checks every row at once. Here are the pieces the readers have in common: the canonical column names and
their refused aliases, UTF-8 checks, and the numbering of non-blank lines.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from pluralign.data.comparisons import COLUMNS
from pluralign.errors import DataError

# Common names for the canonical columns in other datasets. They are never renamed silently: a file that
# has one of these instead of the canonical name is rejected with a message saying what to rename.
ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "userid", "uid", "worker_id", "worker", "annotator_id", "annotator", "rater_id"),
    "prompt": ("question", "context", "instruction", "query"),
    "chosen": ("preferred", "winner", "chosen_response", "response_chosen"),
    "rejected": ("dispreferred", "loser", "rejected_response", "response_rejected"),
}

BLOCK_SIZE = 1 << 24  # pyarrow needs every line to fit in one block; long responses are common
KNOWN_TYPES = "expected .jsonl, .json, .csv, .parquet or a directory saved by datasets' save_to_disk"


class _Missing:
    """Marks a key absent from a JSON object (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


@dataclass
class Check:
    """Rows failing one check; ``reason(i)`` builds the message for row i (only for the first bad row)."""

    mask: np.ndarray
    field: str | None
    reason: Callable[[int], str]


@dataclass
class Raw:
    """Columns as read, before validation: canonical name -> values aligned with ``lines``."""

    columns: dict[str, pd.Series]
    lines: np.ndarray
    where: str
    problems: list[Check] = field(default_factory=list)


def resolve_columns(names: Sequence[str], where: str) -> dict[str, str]:
    """Canonical name -> column name for a column-oriented source (prompt omitted when absent)."""
    present = set(names)
    for canon in COLUMNS:
        if canon not in present:
            check_aliases(canon, present, where)
            if canon != "prompt":
                raise DataError(
                    f"missing column '{canon}' (columns found: {', '.join(map(str, names)) or 'none'})",
                    path=where,
                    field=canon,
                )
    repeated = [canon for canon in COLUMNS if list(names).count(canon) > 1]
    if repeated:
        raise DataError(f"column '{repeated[0]}' appears more than once", path=where, field=repeated[0])
    return {canon: canon for canon in COLUMNS if canon in present}


def check_aliases(canon: str, present: set[str], where: str) -> None:
    found = [a for a in ALIASES[canon] if a in present]
    if found:
        raise DataError(
            f"no '{canon}' column, but found '{found[0]}': rename it to '{canon}' "
            "(pluralign reads only the canonical column names user_id, prompt, chosen, rejected)",
            path=where,
            field=canon,
        )


def with_prompt(values: dict[str, pd.Series], n: int) -> dict[str, pd.Series]:
    if "prompt" not in values:  # no prompt column at all: every row has an empty prompt
        values["prompt"] = pd.Series([""] * n, dtype=object)
    return values


def is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` is valid UTF-8 (pyarrow's readers pass invalid bytes through); zero-copy, ~10 GB/s."""
    offsets = pa.py_buffer(np.array([0, len(raw)], dtype=np.int64).tobytes())
    try:
        pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(raw)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def decode_utf8(raw: bytes, where: str) -> str:
    """UTF-8 text (BOM dropped); invalid bytes are reported with their line and the count of bad lines."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        end = raw.find(b"\n", exc.start)
        rest = b"" if end < 0 else raw[end + 1 :]
        more = 0
        for chunk in rest.split(b"\n"):
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                more += 1
        suffix = f" (and {more} more line{'s' * (more != 1)} with invalid UTF-8)" if more else ""
        raise DataError(
            f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start - line_start + 1} of the line"
            f"{suffix}; re-save the file as UTF-8",
            path=where,
            line=line,
        ) from exc


def _may_have_blank(raw: bytes) -> bool:
    return any(raw.find(b"\n" + c) >= 0 or raw.startswith(c) for c in (b" ", b"\t", b"\r"))


def nonblank_lines(raw: bytes) -> np.ndarray:
    """1-based numbers of the lines that hold anything but spaces, tabs and carriage returns."""
    if not raw:
        return np.zeros(0, dtype=np.int64)
    n_lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
    if raw.find(b"\n\n") < 0 and not raw.startswith(b"\n") and not _may_have_blank(raw):
        return np.arange(1, n_lines + 1, dtype=np.int64)  # the usual case, without a pass in numpy
    buffer = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(buffer)]))
    nonblank = ends > starts
    # Only lines that begin with whitespace can be blank; they are rare, so check them one by one.
    first = buffer[np.minimum(starts, len(buffer) - 1)]
    suspects = np.flatnonzero(nonblank & np.isin(first, np.frombuffer(b" \t\r", dtype=np.uint8)))
    for i in suspects:
        nonblank[i] = bool(raw[starts[i] : ends[i]].strip(b" \t\r"))
    return np.flatnonzero(nonblank) + 1


def csv_records(text: str, where: str) -> tuple[list[list[str]], list[int]]:
    """Every non-blank record of a CSV text (quoted newlines kept) and the line each one starts on.

    Fields may be longer than the csv module's default limit of 131072 characters (long responses)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    starts: list[int] = []
    previous = 0
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            records.append(record)
            starts.append(start)
    except csv.Error as exc:
        raise DataError(f"invalid CSV: {exc}", path=where, line=reader.line_num) from exc
    finally:
        csv.field_size_limit(limit)
    return records, starts
