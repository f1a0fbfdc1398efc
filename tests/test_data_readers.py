"""Preference readers and writers: every format gives the same data, every bad input an exact error."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluralign.data import DataError, PreferenceData, read_preferences
from pluralign.data.readers import write_preferences

ROWS = [
    {"user_id": "alice", "prompt": "Which is better?", "chosen": "tea", "rejected": "coffee"},
    {"user_id": "bob", "prompt": "Which is better?", "chosen": "coffee", "rejected": "tea"},
    {"user_id": "alice", "prompt": "", "chosen": "héllo wörld ✓", "rejected": "goodbye, world"},
    {"user_id": "carol", "prompt": "2020-01-01", "chosen": 'say "hi"', "rejected": "a/b \\ c"},
    {"user_id": "bob", "prompt": "", "chosen": "tea", "rejected": "water"},
]


def _write_jsonl(path: Path, lines: list[str | dict]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _assert_same(a: PreferenceData, b: PreferenceData) -> None:
    for name in ("user", "context", "chosen", "rejected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("user_ids", "contexts", "items"):
        assert list(getattr(a, name)) == list(getattr(b, name)), name


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS)


@pytest.fixture
def reference(frame: pd.DataFrame) -> PreferenceData:
    return read_preferences(frame)


# --------------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------------
def test_reference_tables(reference: PreferenceData) -> None:
    assert len(reference) == 5
    assert list(reference.user_ids) == ["alice", "bob", "carol"]
    assert list(reference.contexts) == ["Which is better?", "", "2020-01-01"]
    assert reference.items[reference.chosen[3]] == 'say "hi"'
    np.testing.assert_array_equal(reference.source_line, [1, 2, 3, 4, 5])
    assert reference.source is None
    pd.testing.assert_frame_equal(reference.to_frame().astype(object), pd.DataFrame(ROWS).astype(object))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_file_round_trip(tmp_path: Path, frame: pd.DataFrame, reference: PreferenceData, suffix: str) -> None:
    path = write_preferences(frame, tmp_path / f"prefs{suffix}")
    data = read_preferences(path)
    _assert_same(data, reference)
    assert data.source == str(path)
    first = 2 if suffix == ".csv" else 1
    np.testing.assert_array_equal(data.source_line, np.arange(first, first + 5))
    # PreferenceData writes back to the same rows
    again = read_preferences(write_preferences(data, tmp_path / f"again{suffix}"))
    _assert_same(again, reference)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_hf_dataset_round_trip(tmp_path: Path, frame: pd.DataFrame, reference: PreferenceData) -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_pandas(frame.assign(extra=[1, 2, 3, 4, 5]))
    _assert_same(read_preferences(dataset), reference)
    dataset.save_to_disk(str(tmp_path / "hf"))
    data = read_preferences(tmp_path / "hf")
    _assert_same(data, reference)
    np.testing.assert_array_equal(data.source_line, [1, 2, 3, 4, 5])
    # an indices mapping (after select/shuffle) is honoured
    picked = read_preferences(dataset.select([4, 0]))
    assert picked.to_frame()["chosen"].tolist() == ["tea", "tea"]
    assert picked.to_frame()["rejected"].tolist() == ["water", "coffee"]


def test_hf_dataset_dict_rejected(frame: pd.DataFrame) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)})
    with pytest.raises(DataError, match=r"DatasetDict with splits \[train\]"):
        read_preferences(dd)


def test_source_name(frame: pd.DataFrame) -> None:
    assert read_preferences(frame, source_name="mine").source == "mine"
    bad = frame.assign(chosen=["a", "", "b", "c", "d"])
    with pytest.raises(DataError, match=r"^mine:2: field 'chosen'"):
        read_preferences(bad, source_name="mine")
    with pytest.raises(DataError, match=r"^<DataFrame>:2: field 'chosen'"):
        read_preferences(bad)


def test_missing_prompt_column_means_empty_prompts(tmp_path: Path, frame: pd.DataFrame) -> None:
    no_prompt = frame.drop(columns="prompt")
    for source in (
        no_prompt,
        _write_jsonl(tmp_path / "a.jsonl", no_prompt.to_dict("records")),
        write_preferences(no_prompt, tmp_path / "a.csv"),
        write_preferences(no_prompt, tmp_path / "a.parquet"),
    ):
        data = read_preferences(source)
        assert list(data.contexts) == [""]
        np.testing.assert_array_equal(data.context, np.zeros(5))


def test_extra_columns_ignored_and_prompt_wins_over_alias(tmp_path: Path, frame: pd.DataFrame) -> None:
    extra = frame.assign(context=["c"] * 5, id=range(5), score=[0.5] * 5, meta=[{"a": [1]}] * 5)
    path = _write_jsonl(tmp_path / "x.jsonl", extra.to_dict("records"))
    _assert_same(read_preferences(path), read_preferences(frame))
    _assert_same(read_preferences(extra), read_preferences(frame))


def test_int_user_ids(tmp_path: Path, frame: pd.DataFrame) -> None:
    ints = frame.assign(user_id=[7, 8, 7, 9, 8])
    data = read_preferences(ints)
    assert list(data.user_ids) == ["7", "8", "9"]
    jsonl = _write_jsonl(tmp_path / "int.jsonl", ints.to_dict("records"))  # pyarrow's int64 path
    _assert_same(read_preferences(jsonl), data)
    _assert_same(read_preferences(write_preferences(ints, tmp_path / "int.parquet")), data)
    mixed = ints.astype({"user_id": object})
    mixed.loc[2, "user_id"] = "7"
    path = _write_jsonl(tmp_path / "mixed.jsonl", mixed.to_dict("records"))  # exact reader
    _assert_same(read_preferences(path), data)
    _assert_same(read_preferences(mixed), data)


def test_jsonl_blank_lines_crlf_and_bom(tmp_path: Path, reference: PreferenceData) -> None:
    lines = [json.dumps(r) for r in ROWS]
    text = "\r\n".join([lines[0], "", "   ", lines[1], lines[2], "\t", lines[3], lines[4]]) + "\r\n\r\n"
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    data = read_preferences(path)
    _assert_same(data, reference)
    np.testing.assert_array_equal(data.source_line, [1, 4, 5, 7, 8])


def test_csv_quoted_newlines_keep_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        'user_id,prompt,chosen,rejected\nu1,"line one\nline two",a,b\n\nu2,p,"x\n\ny",z\nu3,p,c,d\n',
        encoding="utf-8",
    )
    data = read_preferences(path)
    np.testing.assert_array_equal(data.source_line, [2, 5, 8])
    assert data.contexts[data.context[0]] == "line one\nline two"
    assert data.items[data.chosen[1]] == "x\n\ny"
    path.write_text(
        'user_id,prompt,chosen,rejected\nu1,"line one\nline two",a,b\nu2,p,"x\ny",z\nu3,p,,d\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"multi\.csv:6: field 'chosen': is empty"):
        read_preferences(path)


# --------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------
GOOD = {"user_id": "u1", "prompt": "p", "chosen": "a", "rejected": "b"}


def _bad(**changes: object) -> str:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not DROP})


DROP = object()

JSONL_CASES = [
    # (bad line, field, fragment of the reason)
    ('{"user_id": "u1", "chosen": "a" "rejected": "b"}', None, "invalid JSON: Expecting ',' delimiter"),
    ('{"user_id": "u1", "chosen": "a", ', None, "invalid JSON"),
    ('["u1", "p", "a", "b"]', None, "expected a JSON object, got a JSON array"),
    ('"just a string"', None, "expected a JSON object, got a JSON string"),
    (_bad(rejected=DROP), "rejected", "is missing"),
    (_bad(user_id=DROP), "user_id", "is missing"),
    (_bad(prompt=DROP), "prompt", "is missing"),
    (_bad(user_id=""), "user_id", "is empty"),
    (_bad(user_id="  "), "user_id", "is empty"),
    (_bad(chosen=""), "chosen", "is empty"),
    (_bad(chosen=" \t "), "chosen", "is empty"),
    (_bad(rejected="\u00a0"), "rejected", "is empty"),
    (_bad(chosen=None), "chosen", "is null"),
    (_bad(user_id=None), "user_id", "is null"),
    (_bad(prompt=None), "prompt", "is null"),
    (_bad(chosen=5), "chosen", "must be a string, got int 5"),
    # lists are TRL's conversational format (tests/test_trl_formats.py): not among standard rows
    (_bad(chosen=["a", "b"]), "chosen", "is a message list, but line 1 is a standard row (strings)"),
    (_bad(rejected={"role": "assistant"}), "rejected", "must be a string, got dict"),
    (_bad(prompt=3.5), "prompt", "must be a string, got float 3.5"),
    (_bad(user_id=1.5), "user_id", "must be a string or an integer, got float 1.5"),
    (_bad(user_id=True), "user_id", "must be a string or an integer, got bool True"),
    (_bad(chosen="same", rejected="same"), "rejected", "is identical to 'chosen'"),
]


@pytest.mark.parametrize(("line", "field", "reason"), JSONL_CASES)
def test_jsonl_errors_name_file_line_field(tmp_path: Path, line: str, field: str | None, reason: str) -> None:
    # physical lines: 1 good, 2 blank, 3 good, 4 bad, 5 good, 6 bad again
    path = _write_jsonl(tmp_path / "prefs.jsonl", [GOOD, "", GOOD | {"chosen": "c"}, line, GOOD, line])
    with pytest.raises(DataError) as info:
        read_preferences(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 4, field)
    message = str(err)
    where = f"{path}:4: field '{field}': " if field else f"{path}:4: "
    assert message.startswith(where + reason), message
    assert message.endswith("(and 1 more invalid row)"), message


def test_jsonl_reports_first_of_many_errors_across_kinds(tmp_path: Path) -> None:
    lines = [GOOD] * 3 + [_bad(chosen=""), "{oops", _bad(user_id=2.5)] + [GOOD] * 2 + [_bad(rejected="a")]
    path = _write_jsonl(tmp_path / "many.jsonl", lines)
    with pytest.raises(
        DataError, match=r"many\.jsonl:4: field 'chosen': is empty .*\(and 3 more invalid rows\)"
    ):
        read_preferences(path)


def test_field_order_within_a_row(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "order.jsonl", [GOOD, json.dumps({"user_id": "", "chosen": 3})])
    with pytest.raises(DataError) as info:
        read_preferences(path)
    assert (info.value.line, info.value.field) == (2, "user_id")
    assert "more invalid" not in str(info.value)  # one row, however many bad fields


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    good = json.dumps(GOOD).encode()
    bad = b'{"user_id": "u1", "chosen": "caf\xe9", "rejected": "b"}'
    path.write_bytes(b"\n".join([good, good, b"", bad, good, bad, bad]) + b"\n")
    with pytest.raises(DataError) as info:
        read_preferences(path)
    assert info.value.line == 4
    assert str(info.value).startswith(f"{path}:4: not valid UTF-8: byte 0xe9 at byte 33 of the line")
    assert "(and 2 more lines with invalid UTF-8)" in str(info.value)
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"user_id,prompt,chosen,rejected\nu1,p,a,b\nu1,p,caf\xe9,b\n")
    with pytest.raises(DataError, match=r"latin\.csv:3: not valid UTF-8"):
        read_preferences(csv_path)


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n"])
def test_empty_jsonl(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: no preference rows"):
        read_preferences(path)


@pytest.mark.parametrize(
    "content", ["", "user_id,prompt,chosen,rejected\n", "user_id,prompt,chosen,rejected\n\n"]
)
def test_empty_csv(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.csv: no preference rows"):
        read_preferences(path)


def test_empty_frame() -> None:
    with pytest.raises(DataError, match="no preference rows"):
        read_preferences(pd.DataFrame(columns=["user_id", "prompt", "chosen", "rejected"]))


def test_json_array_file_hint(tmp_path: Path) -> None:
    path = tmp_path / "array.json"
    path.write_text(json.dumps([GOOD, GOOD]))
    with pytest.raises(
        DataError, match=r"array\.json:1: expected a JSON object, got a JSON array \(\.json files"
    ):
        read_preferences(path)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory"):
        read_preferences(tmp_path / "nope.jsonl")
    (tmp_path / "prefs.txt").write_text("x")
    with pytest.raises(DataError, match=r"prefs\.txt: unknown file type '\.txt'"):
        read_preferences(tmp_path / "prefs.txt")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataError, match=r"plain_dir: directory is not a dataset saved by datasets"):
        read_preferences(tmp_path / "plain_dir")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read Parquet file"):
        read_preferences(tmp_path / "broken.parquet")
    with pytest.raises(TypeError, match="expects a path"):
        read_preferences(123)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "secret.jsonl", [GOOD])
    path.chmod(0)
    try:
        with pytest.raises(DataError, match=r"secret\.jsonl: cannot read file"):
            read_preferences(path)
    finally:
        path.chmod(0o600)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_or_a_directory_in_place_of_the_file_is_refused_even_as_root(tmp_path: Path) -> None:
    """Neither can be read as a file by any user; opening a FIFO would block until a writer comes."""
    fifo = tmp_path / "secret.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_preferences(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked in open(): give it a writer that closes at once, so it ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=30)
        pytest.fail("read_preferences blocked on a FIFO")
    assert isinstance(outcome[0], DataError)
    assert re.search(r"secret\.jsonl: cannot read file: not a regular file \(a FIFO\)", str(outcome[0]))

    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    expected = r"folder\.jsonl: cannot read file: is a directory, not a \.jsonl file"
    with pytest.raises(DataError, match=expected):
        read_preferences(folder)
    for name in ("table.parquet", "rows.csv"):
        (tmp_path / name).mkdir()
        with pytest.raises(DataError, match=rf"{re.escape(name)}: cannot read file: is a directory"):
            read_preferences(tmp_path / name)


CSV_CASES = [
    # (bad record, field, fragment of the reason)
    ("u1,p,,b", "chosen", "is empty"),
    ("u1,p,a,   ", "rejected", "is empty"),
    (",p,a,b", "user_id", "is empty"),
    ("u1,p,a,a", "rejected", "is identical to 'chosen'"),
    ("u1,p,a", "rejected", "is missing"),
    ("u1,p,a,b,extra", None, "has 5 fields but the header has 4"),
]


@pytest.mark.parametrize(("record", "field", "reason"), CSV_CASES)
def test_csv_errors_name_file_line_field(tmp_path: Path, record: str, field: str | None, reason: str) -> None:
    # header = line 1; line 3 blank; bad record on line 5 and again on line 7
    lines = ["user_id,prompt,chosen,rejected", "u1,,a,b", "", "u2,p,c,d", record, "u3,p,e,f", record]
    path = tmp_path / "prefs.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_preferences(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 5, field)
    where = f"{path}:5: field '{field}': " if field else f"{path}:5: "
    assert str(err).startswith(where + reason), str(err)
    assert str(err).endswith("(and 1 more invalid row)")


def test_csv_keeps_literal_na_strings(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("user_id,prompt,chosen,rejected\nNA,,null,NaN\n")
    data = read_preferences(path)
    assert data.to_frame().iloc[0].tolist() == ["NA", "", "null", "NaN"]


@pytest.mark.parametrize(
    ("columns", "field", "fragment"),
    [
        (
            ["worker_id", "prompt", "chosen", "rejected"],
            "user_id",
            "found 'worker_id': rename it to 'user_id'",
        ),
        (["user", "prompt", "chosen", "rejected"], "user_id", "found 'user': rename it to 'user_id'"),
        (["user_id", "question", "chosen", "rejected"], "prompt", "found 'question': rename it to 'prompt'"),
        (["user_id", "context", "chosen", "rejected"], "prompt", "found 'context': rename it to 'prompt'"),
        (["user_id", "prompt", "chosen", "other"], "rejected", "missing column 'rejected'"),
    ],
)
def test_column_errors(tmp_path: Path, columns: list[str], field: str, fragment: str) -> None:
    frame = pd.DataFrame([["u1", "p", "a", "b"], ["u2", "p", "a", "b"]], columns=columns)
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_parquet(tmp_path / "c.parquet", index=False)
    sources = [frame, tmp_path / "c.csv", tmp_path / "c.parquet"]
    sources.append(_write_jsonl(tmp_path / "c.jsonl", frame.to_dict("records")))
    for source in sources:
        if isinstance(source, Path) and source.suffix == ".jsonl" and fragment.startswith("missing"):
            # JSON Lines have no header: a key absent everywhere is a per-row error
            with pytest.raises(DataError, match=r"c\.jsonl:1: field 'rejected': is missing \(and 1 more"):
                read_preferences(source)
            continue
        with pytest.raises(DataError) as info:
            read_preferences(source)
        assert info.value.field == field
        assert fragment in str(info.value), str(info.value)


def test_parquet_and_frame_row_errors(tmp_path: Path, frame: pd.DataFrame) -> None:
    bad = frame.astype({"chosen": object})
    bad.loc[2, "chosen"] = None
    bad.loc[4, "chosen"] = 7
    path = tmp_path / "bad.parquet"
    bad.astype({"chosen": str}).assign(chosen=lambda f: f.chosen.where(f.index != 2, None)).to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet:3: field 'chosen': is null$"):
        read_preferences(path)
    with pytest.raises(
        DataError, match=r"<DataFrame>:3: field 'chosen': is null \(and 1 more invalid row\)$"
    ):
        read_preferences(bad)
    floats = frame.assign(user_id=[1.0, 2.0, np.nan, 1.0, 2.0])
    with pytest.raises(DataError, match=r"<DataFrame>:1: field 'user_id': must be a string or an integer"):
        read_preferences(floats)


def test_hf_row_error_uses_row_number(tmp_path: Path, frame: pd.DataFrame) -> None:
    datasets = pytest.importorskip("datasets")
    bad = frame.assign(rejected=["x", "y", "z", 'say "hi"', "  "])
    dataset = datasets.Dataset.from_pandas(bad)
    dataset.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError) as info:
        read_preferences(tmp_path / "hf")
    assert (info.value.line, info.value.field) == (4, "rejected")
    assert str(info.value).startswith(f"{tmp_path / 'hf'}:4: field 'rejected': is identical to 'chosen'")


# --------------------------------------------------------------------------------------------------------
# duplicates and writing
# --------------------------------------------------------------------------------------------------------
def test_duplicates_are_kept_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = GOOD | {"chosen": "c"}
    path = _write_jsonl(tmp_path / "dup.jsonl", [GOOD, other, "", GOOD, other, GOOD])
    with caplog.at_level(logging.WARNING, logger="pluralign.data.readers"):
        data = read_preferences(path)
    assert len(data) == 5
    (record,) = [r for r in caplog.records if "duplicate" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"{path}: 3 duplicate rows (same user_id, prompt, chosen, rejected) kept, not dropped; "
        "first at line 4 (repeats line 1)"
    )


def test_no_warning_without_duplicates(reference: PreferenceData, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        read_preferences(pd.DataFrame(ROWS))
    assert not caplog.records


def test_write_errors_and_overwrite(tmp_path: Path, frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=r"unknown file type '\.txt'"):
        write_preferences(frame, tmp_path / "x.txt")
    with pytest.raises(DataError, match="missing column"):
        write_preferences(frame.drop(columns="chosen"), tmp_path / "x.jsonl")
    path = tmp_path / "sub" / "x.jsonl"
    write_preferences(frame, path)
    write_preferences(frame.iloc[:2], path)
    assert len(read_preferences(path)) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.jsonl"]
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == json.dumps(ROWS[0], ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------------
# the fast (pyarrow) and exact (line by line) readers agree
# --------------------------------------------------------------------------------------------------------
def test_fast_and_exact_readers_agree(tmp_path: Path) -> None:
    from pluralign.data import readers

    rows = [
        *ROWS,
        {"user_id": "dave", "prompt": "x\u2028y", "chosen": "nul\x00byte", "rejected": "tab\there"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    raw = ("\n".join([lines[0], "", *lines[1:3], " \r", *lines[3:]]) + "\n").encode()
    fast = readers._fast_jsonl(raw, "f.jsonl")
    assert fast is not None
    exact = readers._slow_jsonl(raw, "f.jsonl", array_hint=False)
    pd.testing.assert_frame_equal(readers._validate(fast), readers._validate(exact))
    assert readers._validate(fast)["_line"].tolist() == [1, 3, 4, 6, 7, 8]

    csv_raw = pd.DataFrame(rows).to_csv(index=False, lineterminator="\r\n").encode()
    fast = readers._fast_csv(csv_raw, "f.csv")
    assert fast is not None
    exact = readers._slow_csv(csv_raw, "f.csv")
    pd.testing.assert_frame_equal(readers._validate(fast), readers._validate(exact))


def test_unpaired_surrogate(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "s.jsonl", [GOOD, '{"user_id": "u", "prompt": "", "chosen": "a\\ud800", "rejected": "b"}']
    )
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'chosen': contains an unpaired surrogate"):
        read_preferences(path)
