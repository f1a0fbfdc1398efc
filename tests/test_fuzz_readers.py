"""Fuzzed inputs for every reader and writer (hypothesis): each input loads exactly as an independent
reference reader says, or fails with a DataError naming the file, line and field; no other exception, no
partial file.

The references here are deliberately simple: ``json.loads`` line by line for JSON Lines, the ``csv`` module
for CSV, and plain Python checks of the documented row rules (README "Data"). Every crash the fuzzer found is
pinned as an ``@example``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pluralign.data import DataError, read_preferences
from pluralign.data.readers import ALIASES, write_preferences

COLUMNS = ("user_id", "prompt", "chosen", "rejected")
# derandomize: CI runs the same examples every time; HYPOTHESIS_SEED-free runs explore (see README).
FUZZ = settings(
    max_examples=int(os.environ.get("PLURALIGN_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("PLURALIGN_FUZZ_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        yield Path(tmp)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp"))


# ========================================================================================================
# the reference: which row is bad, and why
# ========================================================================================================
MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def field_problem(name: str, value: Any) -> bool:
    """Whether one value breaks the row rules (README "Data"): strings (an int for user_id), non-blank
    except the prompt, no unpaired surrogates."""
    if value is MISSING or value is None:
        return True
    if name == "user_id" and _is_int(value):
        return False
    if not isinstance(value, str):
        return True
    if _has_surrogate(value):
        return True
    return name != "prompt" and (value == "" or value.isspace())


def expected(rows: list[dict | None]) -> tuple[str, Any]:
    """("ok", frame) or ("error", (index of the first bad row, its field, number of bad rows)).

    ``rows`` holds each data row's values by canonical name (MISSING when absent), or None for a row that
    is not an object at all (a parse error).
    """
    first, count = None, 0
    for i, row in enumerate(rows):
        if row is None:
            problem: str | bool | None = None
        else:
            bad = [name for name in COLUMNS if field_problem(name, row[name])]
            if bad:
                problem = bad[0]
            elif str(row["chosen"]) == str(row["rejected"]):
                problem = "rejected"
            else:
                problem = False
        if problem is not False:
            count += 1
            if first is None:
                first = (i, problem)
    if first is not None:
        return "error", (first[0], first[1], count)
    frame = pd.DataFrame(
        {name: [str(r[name]) for r in rows] for name in COLUMNS}  # type: ignore[index]
    )
    return "ok", frame


def check_outcome(load: Any, rows: list[dict | None], lines: list[int], where: str) -> Any:
    """Run ``load`` and compare with the reference; returns the loaded data (None on an expected error)."""
    kind, detail = expected(rows) if rows else ("empty", None)
    try:
        data = load()
    except DataError as exc:
        assert kind != "ok", f"valid input rejected: {exc}"
        assert exc.path == where, exc
        if kind == "empty":
            assert exc.line is None, exc
            return None
        index, field, count = detail
        assert (exc.line, exc.field) == (lines[index], field), (str(exc), lines[index], field)
        more = re.search(r"\(and (\d+) more invalid rows?\)$", exc.reason)
        assert (int(more.group(1)) if more else 0) == count - 1, (str(exc), count)
        assert str(exc).startswith(f"{where}:{lines[index]}:"), exc
        return None
    assert kind == "ok", f"expected an error ({kind}, {detail}), but the input loaded"
    got = data.to_frame()
    pd.testing.assert_frame_equal(got.astype(object), detail.astype(object), check_dtype=False)
    np.testing.assert_array_equal(data.source_line, lines)
    return data


# ========================================================================================================
# strategies
# ========================================================================================================
SPECIAL_TEXTS = [
    "", " ", "\t", "\u3000", "\u2028", "a", "b", "tea", "coffee", "2020-01-01", "null", "NaN", "nan", "NA",
    "1", "true", "prompt", "user", "question", '"', "a,b", "x\ny", "x\r\ny", "\r", "é", "✓", "😀", "\ufeff",
    "\x00", "\ud800", "a\udfffb", "\\u0000",
]  # fmt: skip
texts = st.one_of(
    st.sampled_from(SPECIAL_TEXTS),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.builds(lambda n, c: c * n, st.integers(1, 300_000), st.sampled_from(["a", "é", "\\", '"', " "])),
)
scalars = st.one_of(
    texts,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2)
)
KEYS = [*COLUMNS, *COLUMNS, "id", "extra", *(alias for group in ALIASES.values() for alias in group[:2])]


@st.composite
def json_rows(draw: st.DrawFn) -> list[list[tuple[str, Any]]]:
    """Rows as (key, value) pairs: usually valid, with any field perturbed, dropped, renamed or repeated."""
    n = draw(st.integers(1, 6))
    users = ["alice", "bob", 7, "Ωmega"]
    rows = []
    for _ in range(n):
        row = {
            "user_id": draw(st.sampled_from(users)),
            "prompt": draw(st.sampled_from(["", "Which is better?", "ctx"])),
            "chosen": draw(st.sampled_from(["tea", "water", "A long answer"])),
            "rejected": draw(st.sampled_from(["coffee", "milk", "B"])),
        }
        pairs = list(row.items())
        for _ in range(draw(st.integers(0, 3))):
            action = draw(st.sampled_from(["set", "drop", "add", "repeat"]))
            if action == "set" and pairs:
                i = draw(st.integers(0, len(pairs) - 1))
                pairs[i] = (pairs[i][0], draw(values))
            elif action == "drop" and pairs:
                pairs.pop(draw(st.integers(0, len(pairs) - 1)))
            elif action == "add":
                pairs.append((draw(st.sampled_from(KEYS)), draw(values)))
            elif action == "repeat" and pairs:
                key = draw(st.sampled_from([k for k, _ in pairs]))
                pairs.append((key, draw(values)))
        rows.append(pairs)
    return rows


def dump_pairs(pairs: list[tuple[str, Any]], ensure_ascii: bool) -> str:
    return (
        "{"
        + ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=ensure_ascii)}" for k, v in pairs)
        + "}"
    )


# ========================================================================================================
# JSON Lines
# ========================================================================================================
def reference_jsonl(raw: bytes) -> tuple[str, Any]:
    """("decode", line) | ("alias", field) | ("rows", (rows, lines)) for the bytes of a .jsonl file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "decode", raw.count(b"\n", 0, exc.start) + 1
    text = text.removeprefix("\ufeff")
    rows: list[dict | None] = []
    lines: list[int] = []
    parsed: list[dict] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        lines.append(number)
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            parsed.append(obj)
            rows.append({name: obj.get(name, MISSING) for name in COLUMNS})
        else:
            rows.append(None)
    for name in COLUMNS:
        if not any(name in obj for obj in parsed):
            if any(alias in obj for obj in parsed for alias in ALIASES[name]):
                return "alias", name
            if name == "prompt":
                for row in rows:
                    if row is not None:
                        row["prompt"] = ""
    return "rows", (rows, lines)


def check_jsonl_bytes(raw: bytes, suffix: str = ".jsonl") -> None:
    with scratch() as tmp:
        path = tmp / f"in{suffix}"
        path.write_bytes(raw)
        where = str(path)
        kind, detail = reference_jsonl(raw)
        if kind == "decode":
            with pytest.raises(DataError) as info:
                read_preferences(path)
            assert (info.value.path, info.value.line, info.value.field) == (where, detail, None)
            assert "not valid UTF-8" in info.value.reason
            return
        if kind == "alias":
            with pytest.raises(DataError, match="rename it to") as info:
                read_preferences(path)
            assert (info.value.path, info.value.field) == (where, detail)
            return
        rows, lines = detail
        data = check_outcome(lambda: read_preferences(path), rows, lines, where)
        if data is not None:
            # round trip through every writer
            for out_suffix in (".jsonl", ".csv", ".parquet"):
                out = tmp / f"out{out_suffix}"
                write_preferences(data, out)
                again = read_preferences(out)
                pd.testing.assert_frame_equal(again.to_frame(), data.to_frame())
            assert leftovers(tmp) == []


@FUZZ
@given(
    rows=json_rows(),
    ensure_ascii=st.booleans(),
    layout=st.sampled_from(["plain", "crlf", "bom", "blank-lines", "no-final-newline", "indent"]),
    corrupt=st.lists(
        st.tuples(
            st.sampled_from(["truncate", "garbage", "array", "scalar", "blank"]), st.integers(0, 10**6)
        ),
        max_size=2,
    ),
)
def test_jsonl_rows_load_exactly_or_fail_with_located_error(rows, ensure_ascii, layout, corrupt) -> None:
    lines = [dump_pairs(pairs, ensure_ascii) for pairs in rows]
    for action, seed in corrupt:
        i = seed % len(lines)
        if action == "truncate":
            lines[i] = lines[i][: seed % max(len(lines[i]), 1)]
        elif action == "garbage":
            pos = seed % (len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + "}{,:\"'"[seed % 6] + lines[i][pos:]
        elif action == "array":
            lines[i] = "[" + lines[i] + "]"
        elif action == "scalar":
            lines[i] = json.dumps(["a", 1, None, True, 2.5][seed % 5])
        else:
            lines[i] = ["", " ", "\t", "\r"][seed % 4]
    if layout == "blank-lines":
        lines = [x for line in lines for x in ("", line, "  ")]
    if layout == "indent":
        lines = ["  " + line for line in lines]
    newline = "\r\n" if layout == "crlf" else "\n"
    text = newline.join(lines) + ("" if layout == "no-final-newline" else newline)
    raw = ("\ufeff" if layout == "bom" else "").encode() + text.encode("utf-8", "surrogatepass")
    check_jsonl_bytes(raw)


@FUZZ
@given(
    row=st.fixed_dictionaries(
        {"user_id": st.sampled_from(["u", "v"]), "prompt": texts, "chosen": texts, "rejected": texts}
    ),
    encoding=st.sampled_from(["utf-8", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-32"]),
)
@example(  # the fast reader let invalid UTF-8 through to pandas (a raw ArrowInvalid)
    row={"user_id": "u", "prompt": "", "chosen": "é", "rejected": "b"}, encoding="latin-1"
)
@example(  # write_preferences wrote a lone "\r" unquoted into CSV: the file read back as other rows
    row={"user_id": "u", "prompt": "\r", "chosen": "a", "rejected": "b"}, encoding="utf-8"
)
def test_jsonl_in_other_encodings(row, encoding) -> None:
    text = json.dumps(row, ensure_ascii=False) + "\n"
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    check_jsonl_bytes(raw)


@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json"]))
@example(raw=b"  \t\n  null\n", suffix=".jsonl")  # pyarrow 26's JSON reader segfaulted on a first `null`
@example(raw=b'{"user_id": "u", "chosen": "\xe9", "rejected": "b"}\n', suffix=".jsonl")  # latin-1 passed
def test_jsonl_random_bytes(raw, suffix) -> None:
    check_jsonl_bytes(raw, suffix)


# ========================================================================================================
# CSV
# ========================================================================================================
def reference_csv(raw: bytes) -> tuple[str, Any]:
    """("decode", line) | ("csv", line) | ("column", field) | ("empty", None) | ("rows", (rows, lines))."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return "decode", raw.count(b"\n", 0, exc.start) + 1
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    records, starts, previous = [], [], 0
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if record and not (len(record) == 1 and not record[0].strip()):
                records.append(record)
                starts.append(start)
    except csv.Error:
        return "csv", reader.line_num
    finally:
        csv.field_size_limit(limit)
    if not records:
        return "empty", None
    header = records[0]
    for name in COLUMNS:
        if name not in header and (any(a in header for a in ALIASES[name]) or name != "prompt"):
            return "column", name
    for name in COLUMNS:
        if header.count(name) > 1:
            return "column", name
    if len(records) < 2:
        return "empty", None
    rows: list[dict | None] = []
    for record in records[1:]:
        if len(record) > len(header):
            rows.append(None)
            continue
        row = {
            name: (record[header.index(name)] if header.index(name) < len(record) else MISSING)
            if name in header
            else ""
            for name in COLUMNS
        }
        rows.append(row)
    return "rows", (rows, starts[1:])


def check_csv_bytes(raw: bytes) -> None:
    with scratch() as tmp:
        path = tmp / "in.csv"
        path.write_bytes(raw)
        where = str(path)
        kind, detail = reference_csv(raw)
        if kind == "rows":
            rows, lines = detail
            data = check_outcome(lambda: read_preferences(path), rows, lines, where)
            if data is not None:
                out = write_preferences(data, tmp / "out.csv")
                pd.testing.assert_frame_equal(read_preferences(out).to_frame(), data.to_frame())
            return
        with pytest.raises(DataError) as info:
            read_preferences(path)
        error = info.value
        assert error.path == where
        if kind in ("decode", "csv"):
            assert (error.line, error.field) == (detail, None), error
        elif kind == "column":
            assert (error.line, error.field) == (None, detail), error
        else:
            assert error.line is None and "no preference rows" in error.reason, error


csv_texts = st.one_of(
    st.sampled_from([t for t in SPECIAL_TEXTS if not _has_surrogate(t)]),
    st.text(max_size=10),
    st.text(alphabet=",\"\r\n \tab'", max_size=8),
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from([*COLUMNS, *COLUMNS, "id", "user", "question", "x"]), min_size=1, max_size=6
    ).filter(lambda h: len(set(h) & {"chosen", "rejected"}) >= 1)
    | st.permutations(list(COLUMNS)),
    body=st.lists(st.lists(csv_texts, min_size=0, max_size=6), min_size=0, max_size=5),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    noise=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(['"', ",", "\n", "\r", "\x00"])), max_size=2
    ),
)
@example(  # Python 3.11's csv writer left a lone "\r" unquoted with a "\n" terminator: rows split on reading
    header=list(COLUMNS),
    body=[["u", "\r", "a", "b"]],
    quoting=csv.QUOTE_MINIMAL,
    newline="\n",
    bom=False,
    noise=[],
)
@example(  # a "\r" inside the header line crashed the fast reader's header parse (csv.Error)
    header=["user_id", "chosen\rx", "rejected"],
    body=[],
    quoting=csv.QUOTE_MINIMAL,
    newline="\n",
    bom=False,
    noise=[],
)
@example(  # header-only file: fast reader said "missing column", exact one "no rows"; now both the first
    header=["chosen"], body=[], quoting=csv.QUOTE_MINIMAL, newline="\n", bom=False, noise=[]
)
@example(  # a repeated column silently used its first copy; now a DataError naming it
    header=["user_id", "user_id", "chosen", "rejected"],
    body=[["a", "b", "c", "d"]],
    quoting=csv.QUOTE_MINIMAL,
    newline="\n",
    bom=False,
    noise=[],
)
def test_csv_loads_exactly_or_fails_with_located_error(header, body, quoting, newline, bom, noise) -> None:
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(body)
    text = out.getvalue()
    for position, char in noise:
        cut = position % (len(text) + 1)
        text = text[:cut] + char + text[cut:]
    check_csv_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))


@FUZZ
@given(
    row=st.lists(csv_texts, min_size=4, max_size=4),
    encoding=st.sampled_from(
        ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]
    ),
)
def test_csv_in_other_encodings(row, encoding) -> None:
    text = "user_id,prompt,chosen,rejected\n" + ",".join(json.dumps(v) for v in row) + "\n"
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    check_csv_bytes(raw)


# ========================================================================================================
# Parquet
# ========================================================================================================
def arrow_column(draw: st.DrawFn, name: str, n: int) -> pa.Array:
    kind = draw(
        st.sampled_from(
            [
                "string",
                "large_string",
                "string_view",
                "dictionary",
                "int64",
                "int8",
                "uint64",
                "float64",
                "bool",
                "binary",
                "list",
                "null",
                "timestamp",
                "struct",
            ]
        )
    )
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n)) if draw(st.booleans()) else [False] * n
    if kind in ("string", "large_string", "string_view", "dictionary"):
        values = draw(st.lists(csv_texts, min_size=n, max_size=n))
        values = [None if null else v for v, null in zip(values, nulls, strict=True)]
        if kind == "dictionary":
            return pa.array(values, pa.string()).dictionary_encode()
        return pa.array(
            values, {"string": pa.string(), "large_string": pa.large_string()}.get(kind, pa.string_view())
        )
    if kind in ("int64", "int8", "uint64"):
        bounds = {"int64": (-(2**63), 2**63 - 1), "int8": (-128, 127), "uint64": (0, 2**64 - 1)}[kind]
        values = draw(st.lists(st.integers(*bounds), min_size=n, max_size=n))
        return pa.array(
            [None if null else v for v, null in zip(values, nulls, strict=True)], getattr(pa, kind)()
        )
    if kind == "float64":
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
        return pa.array(values, pa.float64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=4), min_size=n, max_size=n)), pa.binary())
    if kind == "list":
        return pa.array(draw(st.lists(st.lists(st.text(max_size=3), max_size=2), min_size=n, max_size=n)))
    if kind == "timestamp":
        return pa.array(list(range(n)), pa.timestamp("s"))
    if kind == "struct":
        return pa.array([{"text": f"t{i}"} for i in range(n)])
    return pa.nulls(n)


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from([*COLUMNS, "id", "extra"]), min_size=3, max_size=6, unique=True))
    columns = {}
    for name in names:
        if name != "user_id" and name in COLUMNS and draw(st.booleans()):
            values = draw(
                st.lists(st.sampled_from(["tea", "coffee", "", " ", "ctx", "x"]), min_size=n, max_size=n)
            )
            columns[name] = pa.array(values, pa.string())
        else:
            columns[name] = arrow_column(draw, name, n)
    return pa.table(columns)


def python_value(value: Any) -> Any:
    """What a Parquet value means as a row field: str/int stay, NaN is a null, anything else is wrong."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@FUZZ
@given(table=parquet_tables())
@example(  # an int column with a null came through pandas as floats: "got float 1.0" on the wrong row
    table=pa.table({"user_id": pa.array([1, None], pa.int64()), "chosen": ["a", "b"], "rejected": ["c", "d"]})
)
def test_parquet_loads_exactly_or_fails_with_located_error(table) -> None:
    with scratch() as tmp:
        path = tmp / "in.parquet"
        pq.write_table(table, path)
        where = str(path)
        names = table.column_names
        missing = [c for c in ("user_id", "chosen", "rejected") if c not in names]
        if missing:
            with pytest.raises(DataError) as info:
                read_preferences(path)
            assert (info.value.path, info.value.field, info.value.line) == (where, missing[0], None)
            return
        values = {
            name: [python_value(v) for v in table.column(name).to_pylist()]
            if name in names
            else [""] * len(table)
            for name in COLUMNS
        }
        rows = [{name: values[name][i] for name in COLUMNS} for i in range(len(table))]
        check_outcome(lambda: read_preferences(path), rows, list(range(1, len(table) + 1)), where)


def test_parquet_strings_with_invalid_utf8_are_a_data_error() -> None:
    """Regression: Parquet does not check string bytes; they reached pandas as a raw ArrowInvalid."""
    bad = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(np.array([0, 1], np.int32)), pa.py_buffer(b"\xff")]
    )
    with scratch() as tmp:
        path = tmp / "bad.parquet"
        pq.write_table(pa.table({"user_id": ["u"], "chosen": bad, "rejected": ["r"]}), path)
        with pytest.raises(DataError, match="UTF8") as info:
            read_preferences(path)
        assert (info.value.path, info.value.field) == (str(path), "chosen")


@FUZZ
@given(
    raw=st.binary(min_size=0, max_size=64),
    cut=st.integers(0, 10**6),
    flips=st.lists(st.integers(0, 10**6), max_size=3),
)
def test_damaged_parquet_is_data_or_data_error(raw, cut, flips) -> None:
    """A truncated or bit-flipped Parquet file loads (flips in the data pages can keep it valid) or is refused
    with a DataError; pyarrow's own exceptions never escape."""
    frame = pd.DataFrame(
        {"user_id": ["a", "b"], "prompt": ["p", ""], "chosen": ["x", "y"], "rejected": ["z", "w"]}
    )
    with scratch() as tmp:
        path = write_preferences(frame, tmp / "in.parquet")
        data = bytearray(path.read_bytes())
        data = data[: len(data) - cut % (len(data) + 1)] if cut % 3 == 0 else data
        for flip in flips:
            if data:
                data[flip % len(data)] ^= 1 << (flip % 8)
        path.write_bytes(bytes(data) + raw)
        try:
            read_preferences(path)
        except DataError as exc:
            assert exc.path == str(path)


# ========================================================================================================
# precomputed vectors (NPZ, Parquet)
# ========================================================================================================
vector_values = st.one_of(
    st.floats(-10, 10, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e300, 0.0, -0.0, 3.4e38]),
)
vector_keys = st.one_of(st.sampled_from(["a", "b", "é", "", " ", "item-1"]), st.text(max_size=6))


def reference_vectors(keys: list[Any], rows: list[list[float]]) -> tuple[str, Any]:
    """("ok", (keys, float32 vectors) after merging identical duplicates) or ("error", None)."""
    if not keys or len(rows) != len(keys) or len({len(r) for r in rows}) != 1 or not rows[0]:
        return "error", None
    if not all(isinstance(k, str) for k in keys):
        return "error", None
    with np.errstate(over="ignore"):
        vectors = np.asarray(rows, dtype=np.float64).astype(np.float32)
    if not np.isfinite(vectors).all():
        return "error", None
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            if not np.array_equal(vectors[seen[key]], vectors[i]):
                return "error", None
        else:
            seen[key] = i
    order = sorted(seen.values())
    return "ok", ([keys[i] for i in order], vectors[order])


@FUZZ
@given(
    keys=st.lists(vector_keys, max_size=5),
    dim=st.integers(0, 3),
    values=st.lists(vector_values, min_size=16, max_size=16),
    extra_row=st.booleans(),
    ragged=st.booleans(),
    suffix=st.sampled_from([".npz", ".parquet"]),
)
@example(keys=["a"], dim=1, values=[1e39] + [0.0] * 15, extra_row=False, ragged=False, suffix=".npz")
@example(  # rows of different lengths: save_vectors raised numpy's ValueError instead of a DataError
    keys=["a", "b"], dim=1, values=[0.0] * 16, extra_row=False, ragged=True, suffix=".npz"
)
def test_vectors_round_trip_or_data_error(keys, dim, values, extra_row, ragged, suffix) -> None:
    rows = [values[(i * dim) % 16 : (i * dim) % 16 + dim] for i in range(len(keys) + extra_row)]
    if ragged and rows:
        rows[-1] = rows[-1] + [0.0]
    from pluralign.encoders.precomputed import PrecomputedEncoder, save_vectors

    kind, detail = reference_vectors(keys, rows)
    with scratch() as tmp:
        path = tmp / f"vectors{suffix}"
        # The file on disk written by a third party: the reader's own checks, not save_vectors', apply.
        if suffix == ".npz":
            array = np.empty(len(rows), dtype=object)
            array[:] = [np.asarray(r, dtype=np.float64) for r in rows]
            vectors = np.stack(list(array)) if rows and len({len(r) for r in rows}) == 1 else array
            np.savez(path, keys=np.asarray(keys, dtype=str), vectors=vectors)
        else:
            pq.write_table(
                pa.table({"key": pa.array(keys + ["x"] * extra_row, pa.string()), "vector": rows}), path
            )
        try:
            encoder = PrecomputedEncoder.from_file(path)
        except DataError as exc:
            assert kind == "error", f"valid vectors refused: {exc}"
            assert exc.path == str(path)
        else:
            assert kind == "ok" or (suffix == ".parquet" and extra_row), "invalid vectors accepted"
            if kind == "ok":
                assert list(encoder.keys) == detail[0]
                np.testing.assert_array_equal(encoder.vectors, detail[1])
            assert np.isfinite(encoder.vectors).all()
        # save_vectors: the same rules, and a file only when they hold
        target = tmp / f"saved{suffix}"
        try:
            save_vectors(target, keys, rows)
        except DataError:
            assert kind == "error"
            assert not target.exists()
        else:
            assert kind == "ok"
            again = PrecomputedEncoder.from_file(target)
            assert list(again.keys) == detail[0]
            np.testing.assert_array_equal(again.vectors, detail[1])
        assert leftovers(tmp) == []


@FUZZ
@given(
    table=st.fixed_dictionaries(
        {
            "key": st.sampled_from(
                [pa.array(["a", "b"]), pa.array([1, 2]), pa.array(["a", None]), pa.array([b"a", b"b"])]
            ),
            "vector": st.sampled_from(
                [
                    pa.array([[1.0, 2.0], [3.0]]),
                    pa.array([[1.0, None], [3.0, 4.0]]),
                    pa.array([[1.0, 2.0], None]),
                    pa.array([["x", "y"], ["z", "w"]]),
                    pa.array([[[1.0]], [[2.0]]]),
                    pa.array([1.0, 2.0]),
                    pa.array([[1, 2], [3, 4]], pa.list_(pa.int8())),
                    pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float16())),
                    pa.array([[math.nan, 2.0], [3.0, 4.0]]),
                    pa.array([[], []], pa.list_(pa.float32())),
                ]
            ),
        }
    ),
    name=st.sampled_from([("key", "vector"), ("id", "embedding"), ("text", "vector"), ("k", "v")]),
)
def test_parquet_vectors_of_any_schema_load_or_data_error(table, name) -> None:
    from pluralign.encoders.precomputed import PrecomputedEncoder

    with scratch() as tmp:
        path = tmp / "v.parquet"
        pq.write_table(pa.table({name[0]: table["key"], name[1]: table["vector"]}), path)
        try:
            encoder = PrecomputedEncoder.from_file(path)
        except DataError as exc:
            assert exc.path == str(path)
        else:
            assert encoder.vectors.dtype == np.float32 and np.isfinite(encoder.vectors).all()
            assert all(isinstance(k, str) for k in encoder.keys)


@FUZZ
@given(
    keys=st.sampled_from(
        [
            np.array(["a", "b"]),
            np.array([b"a", b"\xff"]),
            np.array([1, 2]),
            np.array([["a", "b"]]),
            np.array(["a", None], dtype=object),
            np.array([], dtype=str),
        ]
    ),
    vectors=st.sampled_from(
        [
            np.ones((2, 3)),
            np.ones((2, 3), dtype=np.int64),
            np.ones(2),
            np.ones((2, 3, 1)),
            np.array([["a"], ["b"]]),
            np.ones((2, 0)),
            np.array([[np.inf], [1.0]]),
            np.ones((3, 2)),
            np.array([[1], [2]], dtype=object),
            np.ones((2, 2), dtype=np.complex64),
            np.ones((2, 2), dtype=bool),
        ]
    ),
    names=st.sampled_from([("keys", "vectors"), ("keys", "embeddings"), ("ids", "vectors")]),
)
def test_npz_vectors_of_any_kind_load_or_data_error(keys, vectors, names) -> None:
    from pluralign.encoders.precomputed import PrecomputedEncoder

    with scratch() as tmp:
        path = tmp / "v.npz"
        np.savez(path, **{names[0]: keys, names[1]: vectors})
        try:
            encoder = PrecomputedEncoder.from_file(path)
        except DataError as exc:
            assert exc.path == str(path)
        else:
            assert encoder.vectors.dtype == np.float32 and np.isfinite(encoder.vectors).all()
            assert encoder.vectors.shape == (len(encoder.keys), vectors.shape[1])


# ========================================================================================================
# interrupted writes: the old file or nothing, never part of one, never a leftover temp file
# ========================================================================================================
class FullDisk(io.FileIO):
    """A file that accepts ``budget`` bytes, writes part of the next chunk, then fails like a full disk."""

    budget = 0

    def write(self, chunk: Any) -> int:
        size = memoryview(chunk).nbytes
        if size > FullDisk.budget:
            super().write(bytes(memoryview(chunk).cast("B")[: FullDisk.budget]))
            FullDisk.budget = 0
            raise OSError(28, "No space left on device")
        FullDisk.budget -= size
        return super().write(chunk)


def _writers(tmp: Path) -> dict[str, Any]:
    from pluralign.encoders.precomputed import save_vectors

    frame = pd.DataFrame(
        {"user_id": ["u", "v"], "prompt": ["p", ""], "chosen": ["a" * 300, "b"], "rejected": ["c", "d"]}
    )
    keys, vectors = ["x", "y", "z"], np.arange(600, dtype=np.float32).reshape(3, 200)
    return {
        "jsonl": lambda: write_preferences(frame, tmp / "out.jsonl"),
        "csv": lambda: write_preferences(frame, tmp / "out.csv"),
        "parquet": lambda: write_preferences(frame, tmp / "out.parquet"),
        "npz": lambda: save_vectors(tmp / "out.npz", keys, vectors),
        "vectors-parquet": lambda: save_vectors(tmp / "out-v.parquet", keys, vectors),
    }


@FUZZ
@given(
    which=st.sampled_from(["jsonl", "csv", "parquet", "npz", "vectors-parquet"]), budget=st.integers(0, 4000)
)
def test_interrupted_writes_leave_the_old_file_or_nothing(which, budget) -> None:
    from unittest import mock

    import pluralign.atomic

    with scratch() as tmp:
        write = _writers(tmp)[which]
        target = write()  # a complete file from an earlier run
        before = target.read_bytes()
        target.unlink()
        FullDisk.budget = budget
        with mock.patch.object(pluralign.atomic, "open", lambda p, mode: FullDisk(p, mode), create=True):
            try:
                write()
            except OSError as exc:
                assert exc.errno == 28
                assert not target.exists()  # nothing rather than part of a file
            else:
                assert target.read_bytes() == before  # the budget sufficed: the whole file
            assert leftovers(tmp) == []
            # over an existing complete file, a failed write keeps it intact
            target.write_bytes(before)
            FullDisk.budget = budget
            with suppress(OSError):
                write()
            assert target.read_bytes() == before
        assert leftovers(tmp) == []


@FUZZ
@given(budget=st.integers(0, 200_000), stage=st.sampled_from(["tensors", "json"]))
def test_interrupted_checkpoint_save_keeps_the_old_checkpoint(budget, stage) -> None:
    from unittest import mock

    import torch

    import pluralign.atomic
    import pluralign.checkpoint as ckpt

    tensors = {"w": torch.arange(12_000, dtype=torch.float32)}
    with scratch() as tmp:
        target = ckpt.save_checkpoint(tmp / "model", {"a": 1}, tensors, ["u"])
        old = {p.name: p.read_bytes() for p in target.iterdir()}
        real_save = ckpt.save_file

        def failing_save(data: dict, path: str, **kwargs: Any) -> None:
            real_save(data, path, **kwargs)
            Path(path).write_bytes(Path(path).read_bytes()[:budget])
            raise OSError(28, "No space left on device")

        FullDisk.budget = budget
        patch = (
            mock.patch.object(ckpt, "save_file", failing_save)
            if stage == "tensors"
            else mock.patch.object(pluralign.atomic, "open", lambda p, mode: FullDisk(p, mode), create=True)
        )
        with patch:
            try:
                ckpt.save_checkpoint(target, {"a": 2}, {"w": tensors["w"] + 1}, ["u", "v"])
                new = True
            except OSError as exc:
                assert exc.errno == 28
                new = False
        if not new:
            assert {p.name: p.read_bytes() for p in target.iterdir()} == old
        assert sorted(p.name for p in tmp.iterdir()) == ["model"]  # no temp directory left
        config, loaded, users = ckpt.load_checkpoint(target)
        assert config["a"] == 1 + new and users == ["u", "v"][: 1 + new]
        assert torch.equal(loaded["w"], tensors["w"] + new)


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 25))
@given(table=parquet_tables())
def test_hf_dataset_loads_exactly_or_fails_with_located_error(table) -> None:
    datasets = pytest.importorskip("datasets")
    names = table.column_names
    if [c for c in ("user_id", "chosen", "rejected") if c not in names] or "struct" in str(table.schema):
        return  # column errors are covered by the Parquet test; the HF path shares the column code
    try:
        dataset = datasets.Dataset(table)
    except (TypeError, ValueError, pa.ArrowException):
        return  # a table that datasets itself refuses to wrap never reaches pluralign
    values = {
        name: [python_value(v) for v in table.column(name).to_pylist()]
        if name in names
        else [""] * len(table)
        for name in COLUMNS
    }
    rows = [{name: values[name][i] for name in COLUMNS} for i in range(len(table))]
    check_outcome(lambda: read_preferences(dataset), rows, list(range(1, len(table) + 1)), "<Dataset>")


# ========================================================================================================
# persona statement files
# ========================================================================================================
persona_values = st.one_of(
    st.sampled_from([" Yes", " No", "Yes", "", " ", None, 1, ["x"], "I like art"]), st.text(max_size=5)
)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(
                st.fixed_dictionaries(
                    {
                        "question": st.sampled_from(["Q1", "Q2", "Q3"]),
                        "statement": st.sampled_from(["S1", "S2", "S3"]),
                        "answer_matching_behavior": st.sampled_from([" Yes", " No"]),
                    }
                ),
                st.dictionaries(
                    st.sampled_from(
                        ["question", "statement", "answer_matching_behavior", "answer_not_matching_behavior"]
                    ),
                    persona_values,
                    max_size=2,
                ),
                st.sets(st.sampled_from(["question", "statement", "answer_matching_behavior"]), max_size=1),
            ).map(lambda t: json.dumps({k: v for k, v in {**t[0], **t[1]}.items() if k not in t[2]})),
            st.sampled_from(["", "  ", "null", "[1]", "{", '{"question": "Q"}', "\ufeff{}"]),
            st.binary(max_size=6).map(lambda b: b.decode("latin-1")),
        ),
        max_size=6,
    )
)
def test_persona_statement_files_load_or_data_error(lines) -> None:
    from pluralign.datasets.persona import load_statements

    with scratch() as tmp:
        path = tmp / "p.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
        try:
            pool = load_statements(["p"], tmp)
        except DataError as exc:
            assert exc.path == str(path)
            assert exc.line is None or 1 <= exc.line <= max(len(lines), 1)
        else:
            parsed = [json.loads(x) for x in lines if x.strip()]
            assert len(pool) == len({p["statement"] for p in parsed})
            for p in parsed:
                s = list(pool.statements).index(p["statement"])
                assert pool.agrees[0, s] == (p["answer_matching_behavior"] == " Yes")


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 15))
@given(budget=st.integers(0, 300_000))
def test_interrupted_write_persona_leaves_no_readable_half(budget) -> None:
    """write_persona removes the manifest first and writes it last: after a failure at any byte the
    directory is refused as incomplete (or, if the budget sufficed, reads back whole); no temp files."""
    from unittest import mock

    import pluralign.atomic
    from pluralign.datasets.persona import build_persona, read_persona, write_persona

    dataset = build_persona(
        k_star=2,
        users_per_persona=5,
        queries_per_user=20,
        unseen_users_per_persona=2,
        unseen_queries_per_user=20,
    )
    with scratch() as tmp:
        out = write_persona(dataset, tmp / "persona")  # a complete earlier write
        FullDisk.budget = budget
        with mock.patch.object(pluralign.atomic, "open", lambda p, mode: FullDisk(p, mode), create=True):
            try:
                write_persona(dataset, out)
                failed = False
            except OSError as exc:
                assert exc.errno == 28
                failed = True
        assert leftovers(out) == []
        if failed:
            with pytest.raises(DataError, match="not a complete Persona dataset"):
                read_persona(out)
        else:
            again = read_persona(out)
            np.testing.assert_array_equal(again.seen.chosen, dataset.seen.chosen)
