"""Read and write preference rows (user_id, prompt, chosen, rejected): JSONL, CSV, Parquet, HF datasets.

Every source goes through one vectorized validation, so a bad row is reported the same way whatever the
format: ``file:line: field 'name': reason``, plus how many other rows are bad. Lines are 1-based: physical
lines for JSONL and CSV (the CSV header is line 1), row numbers for Parquet, HF datasets and data frames.

Valid JSONL and CSV files take a fast path through pyarrow's multithreaded readers; anything unusual
(a parse error, nulls, mixed types, quoted newlines) falls back to an exact line-by-line reader, which is
slower but locates every problem precisely.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa

from pluralign.atomic import atomic_write
from pluralign.data.comparisons import COLUMNS, PreferenceData
from pluralign.errors import DataError

__all__ = ["ALIASES", "read_preferences", "write_preferences"]

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet",)
REQUIRED = ("user_id", "chosen", "rejected")

# Common names for the canonical columns in other datasets. They are never renamed silently: a file that
# has one of these instead of the canonical name is rejected with a message saying what to rename.
ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "userid", "uid", "worker_id", "worker", "annotator_id", "annotator", "rater_id"),
    "prompt": ("question", "context", "instruction", "query"),
    "chosen": ("preferred", "winner", "chosen_response", "response_chosen"),
    "rejected": ("dispreferred", "loser", "rejected_response", "response_rejected"),
}

_BLOCK_SIZE = 1 << 24  # pyarrow needs every line to fit in one block; long responses are common
# A first line, or any later line, whose first non-blank character does not open a JSON object.
_NOT_OBJECT_START = re.compile(rb"[ \t\r\n]*+[^{ \t\r\n]")
_NOT_OBJECT_LINE = re.compile(rb"\n[ \t\r]*+[^{ \t\r\n]")


class _Missing:
    """Marks a key absent from a JSON object (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()

# Per-element kinds of an object column, see _kind.
_STR, _INT, _NULL, _ABSENT, _OTHER = range(5)


@dataclass
class _Check:
    """Rows failing one check; ``reason(i)`` builds the message for row i (only for the first bad row)."""

    mask: np.ndarray
    field: str | None
    reason: Callable[[int], str]


@dataclass
class _Raw:
    """Columns as read, before validation: canonical name -> values aligned with ``lines``."""

    columns: dict[str, pd.Series]
    lines: np.ndarray
    where: str
    problems: list[_Check] = field(default_factory=list)


# ========================================================================================================
# public API
# ========================================================================================================
def read_preferences(source: Any, *, source_name: str | None = None) -> PreferenceData:
    """Read and validate preference rows into a :class:`PreferenceData`.

    ``source`` is a path to a ``.jsonl``/``.json`` (JSON Lines), ``.csv`` or ``.parquet`` file, a directory
    written by ``datasets.Dataset.save_to_disk``, or an in-memory ``datasets.Dataset`` or
    ``pandas.DataFrame``. ``source_name`` replaces the path (or ``<DataFrame>``/``<Dataset>``) in error
    messages and becomes ``.source``. Raises :class:`DataError` on the first invalid row (in file order),
    with the count of the other invalid rows. Duplicate rows are kept and logged as a warning.
    """
    if isinstance(source, pd.DataFrame):
        where = source_name or "<DataFrame>"
        raw = _raw_from_frame(source, where)
        origin = source_name
    elif _is_hf_dataset(source):
        where = source_name or "<Dataset>"
        raw = _raw_from_hf(source, where)
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
    frame = _validate(raw)
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
        raise DataError(f"cannot write unknown file type '{path.suffix}' ({_KNOWN_TYPES})", path=path)
    if not isinstance(data, PreferenceData):
        _validate(_raw_from_frame(frame, "<DataFrame>"))  # never write a file that read_preferences refuses

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
# sources
# ========================================================================================================
_KNOWN_TYPES = "expected .jsonl, .json, .csv, .parquet or a directory saved by datasets' save_to_disk"


def _raw_from_path(path: Path, where: str) -> _Raw:
    suffix = path.suffix.lower()
    known = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES
    if path.is_dir():
        try:
            return _raw_from_hf_dir(path, where)
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
        raise DataError(f"unknown file type '{path.suffix}' ({_KNOWN_TYPES})", path=where)
    if not path.is_file():
        # Opening a FIFO blocks until some writer appears, and devices or sockets are no data files.
        kind = "a FIFO" if path.is_fifo() else "a socket" if path.is_socket() else "a device or special file"
        raise DataError(f"cannot read file: not a regular file ({kind})", path=where)
    if suffix in PARQUET_SUFFIXES:
        return _raw_from_parquet(path, where)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=where) from exc
    if suffix in CSV_SUFFIXES:
        return _fast_csv(raw, where) or _slow_csv(raw, where)
    return _fast_jsonl(raw, where) or _slow_jsonl(raw, where, array_hint=suffix == ".json")


# --- JSON Lines -----------------------------------------------------------------------------------------
def _fast_jsonl(raw: bytes, where: str) -> _Raw | None:
    """pyarrow's reader for clean files; None when anything needs the exact reader's diagnosis."""
    import pyarrow.json as pj

    # pyarrow 26 segfaults on a file whose first value is `null` (and turns a later `null` line into a row of
    # nulls): give it only files in which every line is blank or starts an object.
    if _NOT_OBJECT_START.match(raw) or _NOT_OBJECT_LINE.search(raw) or not _is_utf8(raw):
        return None
    # An explicit schema stops pyarrow from turning date-like strings into timestamps. A prompt-less file
    # must not get an all-null prompt column (indistinguishable from nulls), hence the byte search.
    has_prompt = b'"prompt"' in raw
    if not has_prompt and any(f'"{alias}"'.encode() in raw for alias in ALIASES["prompt"]):
        return None  # maybe a renamed prompt column: the exact reader decides
    text_fields = [f for f in ("prompt", "chosen", "rejected") if f != "prompt" or has_prompt]
    table = None
    for user_type in (pa.string(), pa.int64()):
        schema = pa.schema([("user_id", user_type), *((f, pa.string()) for f in text_fields)])
        try:
            table = pj.read_json(
                pa.BufferReader(raw),
                read_options=pj.ReadOptions(block_size=_BLOCK_SIZE),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
            break
        except (pa.ArrowException, ValueError):
            continue
    if table is None or any(table.column(name).null_count for name in table.column_names):
        return None
    lines = _nonblank_lines(raw)
    if len(lines) != table.num_rows:
        return None
    columns = {name: table.column(name).to_pandas() for name in table.column_names}
    return _Raw(_with_prompt(columns, table.num_rows), lines, where)


def _slow_jsonl(raw: bytes, where: str, *, array_hint: bool) -> _Raw:
    text = _decode(raw, where)
    lines, rows, errors = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):  # JSON strings may hold \u2028: no splitlines
        if not line.strip(" \t\r"):
            continue
        lines.append(number)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(None)
            errors.append(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if isinstance(row, dict):
            rows.append(row)
            errors.append(None)
        else:
            rows.append(None)
            hint = " (.json files must be JSON Lines: one object per line)" if array_hint else ""
            errors.append(f"expected a JSON object, got a JSON {_json_type(row)}{hint}")
    if not rows:
        raise DataError("no preference rows (the file is empty)", path=where)

    columns = {
        name: pd.Series([_MISSING if r is None else r.get(name, _MISSING) for r in rows], dtype=object)
        for name in COLUMNS
    }
    failed = np.array([e is not None for e in errors])
    parsed = [r for r in rows if r is not None]
    for name in COLUMNS:
        absent = np.array([v is _MISSING for v in columns[name]]) | failed
        if absent.all():
            present = set().union(*parsed) if parsed else set()
            _check_aliases(name, present, where)
            if name == "prompt":
                columns[name] = pd.Series([""] * len(rows), dtype=object)
    problems = [_Check(failed, None, lambda i: errors[i])] if failed.any() else []
    return _Raw(columns, np.asarray(lines, dtype=np.int64), where, problems)


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- CSV ------------------------------------------------------------------------------------------------
def _fast_csv(raw: bytes, where: str) -> _Raw | None:
    import pyarrow.csv as pc

    header = _csv_header(raw)
    if header is None or not _is_utf8(raw):
        return None
    columns = _resolve_columns(header, where)
    try:
        table = pc.read_csv(
            pa.BufferReader(raw),
            read_options=pc.ReadOptions(block_size=_BLOCK_SIZE),
            parse_options=pc.ParseOptions(newlines_in_values=True),
            convert_options=pc.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                include_columns=list(columns.values()),
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    lines = _nonblank_lines(raw)
    # Quoted newlines make records span lines; the exact reader then counts the lines.
    if len(lines) != table.num_rows + 1 or table.num_rows == 0:
        return None
    values = {canon: table.column(name).to_pandas() for canon, name in columns.items()}
    return _Raw(_with_prompt(values, table.num_rows), lines[1:], where)


def _csv_header(raw: bytes) -> list[str] | None:
    end = raw.find(b"\n")
    first = raw if end < 0 else raw[:end]
    try:
        text = first.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        return None
    if not text.strip() or '"' in text or "\r" in text:  # unusual headers: let the exact reader handle them
        return None
    return next(csv.reader([text]))


def _slow_csv(raw: bytes, where: str) -> _Raw:
    text = _decode(raw, where)
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    starts: list[int] = []
    previous = 0
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # long responses exceed the default limit of 131072 characters
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
    empty = "no preference rows (the file is empty or has only a header)"
    if not records:
        raise DataError(empty, path=where)
    header, body = records[0], records[1:]
    columns = _resolve_columns(header, where)  # before the row count, as the fast reader does
    if not body:
        raise DataError(empty, path=where)
    position = {name: header.index(name) for name in columns.values()}
    widths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    values = {
        canon: pd.Series(
            [r[position[name]] if len(r) > position[name] else _MISSING for r in body], dtype=object
        )
        for canon, name in columns.items()
    }
    too_wide = widths > len(header)
    problems = []
    if too_wide.any():
        problems.append(
            _Check(too_wide, None, lambda i: f"has {widths[i]} fields but the header has {len(header)}")
        )
    return _Raw(_with_prompt(values, len(body)), np.asarray(starts[1:], dtype=np.int64), where, problems)


# --- Parquet and HF datasets ----------------------------------------------------------------------------
def _raw_from_parquet(path: Path, where: str) -> _Raw:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        columns = _resolve_columns(names, where)
        table = pq.read_table(path, columns=list(columns.values()))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=where) from exc
    return _raw_from_table(table, columns, where)


def _raw_from_hf_dir(path: Path, where: str) -> _Raw:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(
            f"directory is not a dataset saved by datasets' save_to_disk ({_KNOWN_TYPES}): {exc}", path=where
        ) from exc
    return _raw_from_hf(dataset, where)


def _raw_from_hf(dataset: Any, where: str) -> _Raw:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset)
        raise DataError(
            f"got a DatasetDict with splits [{splits}]: pass one split (e.g. dataset['train'], or the "
            "split's subdirectory when reading from disk)",
            path=where,
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    columns = _resolve_columns(dataset.column_names, where)
    # select_columns + the arrow format applies any indices mapping (after shuffle/select) without copies
    # of unused columns.
    table = dataset.select_columns(list(columns.values())).with_format("arrow")[:]
    return _raw_from_table(table, columns, where)


def _raw_from_table(table: pa.Table, columns: dict[str, str], where: str) -> _Raw:
    for canon, name in columns.items():
        try:  # Parquet strings are not checked for UTF-8 on reading
            table.column(name).validate(full=True)
        except pa.ArrowInvalid as exc:
            raise DataError(f"invalid values ({exc})", path=where, field=canon) from exc
    # integer_object_nulls: an int column with a null must not turn into floats (user 3 -> "3.0")
    values = {
        canon: table.column(name).to_pandas(integer_object_nulls=True) for canon, name in columns.items()
    }
    return _Raw(_with_prompt(values, table.num_rows), np.arange(1, table.num_rows + 1), where)


def _raw_from_frame(frame: pd.DataFrame, where: str) -> _Raw:
    names = [c for c in frame.columns if isinstance(c, str)]
    columns = _resolve_columns(names, where)
    values = {canon: frame[name].reset_index(drop=True) for canon, name in columns.items()}
    return _Raw(_with_prompt(values, len(frame)), np.arange(1, len(frame) + 1), where)


def _is_hf_dataset(source: Any) -> bool:
    # Avoid importing datasets (slow) unless the caller already did, which any Dataset instance implies.
    module = sys.modules.get("datasets")
    return module is not None and isinstance(source, module.Dataset | module.DatasetDict)


# --- shared helpers -------------------------------------------------------------------------------------
def _resolve_columns(names: Sequence[str], where: str) -> dict[str, str]:
    """Canonical name -> column name for a column-oriented source (prompt omitted when absent)."""
    present = set(names)
    for canon in COLUMNS:
        if canon not in present:
            _check_aliases(canon, present, where)
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


def _check_aliases(canon: str, present: set[str], where: str) -> None:
    found = [a for a in ALIASES[canon] if a in present]
    if found:
        raise DataError(
            f"no '{canon}' column, but found '{found[0]}': rename it to '{canon}' "
            "(pluralign reads only the canonical column names user_id, prompt, chosen, rejected)",
            path=where,
            field=canon,
        )


def _with_prompt(values: dict[str, pd.Series], n: int) -> dict[str, pd.Series]:
    if "prompt" not in values:  # no prompt column at all: every row has an empty prompt
        values["prompt"] = pd.Series([""] * n, dtype=object)
    return values


def _is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` is valid UTF-8 (pyarrow's readers pass invalid bytes through); zero-copy, ~10 GB/s."""
    offsets = pa.py_buffer(np.array([0, len(raw)], dtype=np.int64).tobytes())
    try:
        pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(raw)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _decode(raw: bytes, where: str) -> str:
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


def _nonblank_lines(raw: bytes) -> np.ndarray:
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


# ========================================================================================================
# validation
# ========================================================================================================
def _validate(raw: _Raw) -> pd.DataFrame:
    """Check every row of every column at once; raise on the first bad row, else return a clean frame."""
    n = len(raw.lines)
    if n == 0:
        raise DataError("no preference rows (the source is empty)", path=raw.where)
    checks = list(raw.problems)
    failed = np.zeros(n, dtype=bool)
    for check in checks:
        failed |= check.mask
    clean: dict[str, pd.Series] = {}
    for name in COLUMNS:
        text, column_checks = _check_text(
            raw.columns[name], name, allow_int=name == "user_id", allow_empty=name == "prompt"
        )
        clean[name] = text
        for check in column_checks:
            check.mask = check.mask & ~failed  # pandas may hand out read-only arrays
            checks.append(check)
    usable = ~failed
    for check in checks[len(raw.problems) :]:
        usable = usable & ~check.mask
    same = usable & (clean["chosen"] == clean["rejected"]).to_numpy(dtype=bool)
    checks.append(_Check(same, "rejected", lambda i: "is identical to 'chosen'"))

    bad = np.zeros(n, dtype=bool)
    for check in checks:
        bad |= check.mask
    if bad.any():
        row = int(np.argmax(bad))
        check = next(c for c in checks if c.mask[row])
        more = int(bad.sum()) - 1
        suffix = f" (and {more} more invalid row{'s' * (more != 1)})" if more else ""
        raise DataError(
            check.reason(row) + suffix, path=raw.where, line=int(raw.lines[row]), field=check.field
        )
    frame = pd.DataFrame({name: clean[name] for name in COLUMNS})
    frame["_line"] = raw.lines
    return frame


def _check_text(
    values: pd.Series, name: str, *, allow_int: bool, allow_empty: bool
) -> tuple[pd.Series, list[_Check]]:
    """Strings of a column ("" where invalid) and the checks of its values."""
    values = values.reset_index(drop=True)
    checks: list[_Check] = []
    null_reason = "is null" + (" (use an empty string for no prompt)" if allow_empty else "")
    if isinstance(values.dtype, pd.StringDtype):
        # Typed string column (pyarrow readers, most frames): only nulls can be wrong.
        null = values.isna().to_numpy()
        text = values.fillna("").astype(str)
        if null.any():
            checks.append(_Check(null, name, lambda i: null_reason))
    else:
        objects = values.to_numpy(dtype=object)
        inferred = pd.api.types.infer_dtype(objects, skipna=False)
        if inferred == "string":
            kinds = np.full(len(objects), _STR, dtype=np.int8)
        elif inferred == "integer" and allow_int:
            kinds = np.full(len(objects), _INT, dtype=np.int8)
        else:
            kinds = np.frompyfunc(_kind, 1, 1)(objects).astype(np.int8)
        ok = (kinds == _STR) | ((kinds == _INT) & allow_int)
        strings = np.where(ok, objects, "")
        if allow_int and (kinds == _INT).any():
            strings = np.frompyfunc(str, 1, 1)(strings)  # ints -> decimal strings, strings unchanged
        try:
            text = pd.Series(strings, dtype=str)
        except UnicodeEncodeError:  # lone surrogates, from "\ud800"-style escapes json.loads lets through
            encodable = np.frompyfunc(_encodable, 1, 1)(strings).astype(bool)
            checks.append(
                _Check(~encodable, name, lambda i: "contains an unpaired surrogate (bad \\u escape)")
            )
            text = pd.Series(np.where(encodable, strings, ""), dtype=str)
        checks.append(_Check(kinds == _ABSENT, name, lambda i: "is missing"))
        checks.append(_Check(kinds == _NULL, name, lambda i: null_reason))
        wrong = ~ok & (kinds != _ABSENT) & (kinds != _NULL)
        expected = "a string or an integer" if allow_int else "a string"
        checks.append(_Check(wrong, name, lambda i: f"must be {expected}, got {_describe(objects[i])}"))
        checks = [c for c in checks if c.mask.any()]
    if not allow_empty:
        # str.strip() treats Unicode whitespace as blank too; isspace() is the vectorized equivalent.
        empty = ((text.str.len() == 0) | text.str.isspace()).to_numpy(dtype=bool)
        for check in checks:
            empty = empty & ~check.mask
        if empty.any():
            checks.append(_Check(empty, name, lambda i: "is empty or only whitespace"))
    return text, checks


def _kind(value: Any) -> int:
    if type(value) is str or isinstance(value, str):
        return _STR
    if value is _MISSING:
        return _ABSENT
    if value is None or value is pd.NA or value is pd.NaT:
        return _NULL
    if isinstance(value, float | np.floating) and math.isnan(value):
        return _NULL
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return _INT
    return _OTHER


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value: Any) -> str:
    kind = type(value).__name__
    shown = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    hint = ""
    if isinstance(value, list | tuple | np.ndarray):
        hint = " (chat-style message lists are not supported: pass the response text)"
    return f"{kind} {shown}{hint}"


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
