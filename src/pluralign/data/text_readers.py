"""The JSON Lines and CSV readers: a fast path through pyarrow, and an exact line-by-line fallback.

Valid files take pyarrow's multithreaded readers; anything unusual (a parse error, nulls, mixed types,
quoted newlines) makes the fast reader return None, and the exact reader, slower but precise, locates
every problem. Both return the same :class:`~pluralign.data.raw.Raw` for the same file.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pluralign.data.comparisons import COLUMNS
from pluralign.data.raw import (
    ALIASES,
    BLOCK_SIZE,
    MISSING,
    Check,
    Raw,
    check_aliases,
    csv_records,
    decode_utf8,
    is_utf8,
    nonblank_lines,
    resolve_columns,
    with_prompt,
)
from pluralign.errors import DataError

# A first line, or any later line, whose first non-blank character does not open a JSON object.
_NOT_OBJECT_START = re.compile(rb"[ \t\r\n]*+[^{ \t\r\n]")
_NOT_OBJECT_LINE = re.compile(rb"\n[ \t\r]*+[^{ \t\r\n]")


# --- JSON Lines -----------------------------------------------------------------------------------------
def fast_jsonl(raw: bytes, where: str) -> Raw | None:
    """pyarrow's reader for clean files; None when anything needs the exact reader's diagnosis."""
    import pyarrow.json as pj

    # pyarrow 26 segfaults on a file whose first value is `null` (and turns a later `null` line into a row of
    # nulls): give it only files in which every line is blank or starts an object.
    if _NOT_OBJECT_START.match(raw) or _NOT_OBJECT_LINE.search(raw) or not is_utf8(raw):
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
                read_options=pj.ReadOptions(block_size=BLOCK_SIZE),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
            break
        except (pa.ArrowException, ValueError):
            continue
    if table is None or any(table.column(name).null_count for name in table.column_names):
        return None
    lines = nonblank_lines(raw)
    if len(lines) != table.num_rows:
        return None
    columns = {name: table.column(name).to_pandas() for name in table.column_names}
    return Raw(with_prompt(columns, table.num_rows), lines, where)


def slow_jsonl(raw: bytes, where: str, *, array_hint: bool) -> Raw:
    text = decode_utf8(raw, where)
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
        name: pd.Series([MISSING if r is None else r.get(name, MISSING) for r in rows], dtype=object)
        for name in COLUMNS
    }
    failed = np.array([e is not None for e in errors])
    parsed = [r for r in rows if r is not None]
    for name in COLUMNS:
        absent = np.array([v is MISSING for v in columns[name]]) | failed
        if absent.all():
            present = set().union(*parsed) if parsed else set()
            check_aliases(name, present, where)
            if name == "prompt":
                columns[name] = pd.Series([""] * len(rows), dtype=object)
    problems = [Check(failed, None, lambda i: errors[i])] if failed.any() else []
    return Raw(columns, np.asarray(lines, dtype=np.int64), where, problems)


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --- CSV ------------------------------------------------------------------------------------------------
def fast_csv(raw: bytes, where: str) -> Raw | None:
    import pyarrow.csv as pc

    header = _csv_header(raw)
    if header is None or not is_utf8(raw):
        return None
    columns = resolve_columns(header, where)
    try:
        table = pc.read_csv(
            pa.BufferReader(raw),
            read_options=pc.ReadOptions(block_size=BLOCK_SIZE),
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
    lines = nonblank_lines(raw)
    # Quoted newlines make records span lines; the exact reader then counts the lines.
    if len(lines) != table.num_rows + 1 or table.num_rows == 0:
        return None
    values = {canon: table.column(name).to_pandas() for canon, name in columns.items()}
    return Raw(with_prompt(values, table.num_rows), lines[1:], where)


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


def slow_csv(raw: bytes, where: str) -> Raw:
    text = decode_utf8(raw, where)
    records, starts = csv_records(text, where)
    empty = "no preference rows (the file is empty or has only a header)"
    if not records:
        raise DataError(empty, path=where)
    header, body = records[0], records[1:]
    columns = resolve_columns(header, where)  # before the row count, as the fast reader does
    if not body:
        raise DataError(empty, path=where)
    position = {name: header.index(name) for name in columns.values()}
    widths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    values = {
        canon: pd.Series(
            [r[position[name]] if len(r) > position[name] else MISSING for r in body], dtype=object
        )
        for canon, name in columns.items()
    }
    too_wide = widths > len(header)
    problems = []
    if too_wide.any():
        problems.append(
            Check(too_wide, None, lambda i: f"has {widths[i]} fields but the header has {len(header)}")
        )
    return Raw(with_prompt(values, len(body)), np.asarray(starts[1:], dtype=np.int64), where, problems)
