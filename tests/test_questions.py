"""Question pools (pluralign.data.questions): JSONL or a JSON list of {prompt, a, b}; bad input names the
file, line (or position) and field."""

from __future__ import annotations

import json

import pytest

from pluralign.data.questions import MAX_POOL, MAX_TEXT_CHARS, Question, read_questions
from pluralign.errors import DataError


def test_jsonl_and_json_list_read_the_same_pool(tmp_path):
    items = [{"prompt": "p0", "a": "x", "b": "y"}, {"a": "u", "b": "v"}]
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text(json.dumps(items[0]) + "\n\n" + json.dumps(items[1]) + "\n")  # blank lines are skipped
    listed = tmp_path / "pool.json"
    listed.write_text("  " + json.dumps(items, indent=2))
    expected = [Question("p0", "x", "y"), Question("", "u", "v")]
    assert read_questions(jsonl) == expected
    assert read_questions(str(listed)) == expected
    assert read_questions(jsonl)[1]._asdict() == {"prompt": "", "a": "u", "b": "v"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "p", "a": "x", "b": "y"}', '{"prompt": "p", "a": "x"}'], ":2: field 'b': required"),
        (['{"a": "x", "b": 3}'], ":1: field 'b': expected a string, got int"),
        (['{"prompt": null, "a": "x", "b": "y"}'], ":1: field 'prompt': expected a string, got NoneType"),
        (['{"a": "x", "b": "y", "c": "z"}'], ":1: field 'c': unknown field (expected prompt, a, b)"),
        (['{"a": "x", "b": "y"}', '["x", "y"]'], ":2: expected an object {prompt, a, b}, got list"),
        (["", '{"a": "x", "b": "y"}', "{oops"], ":3: not JSON: "),
        ([json.dumps({"a": "x" * (MAX_TEXT_CHARS + 1), "b": "y"})], ":1: field 'a': is 10,001 characters"),
        (["", "  "], ": no questions"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_questions(path)
    assert str(info.value).startswith(f"{path}{message}")


def test_bad_json_list_names_the_position(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"a": "x", "b": "y"}, {"a": "x", "b": ["y"]}]))
    with pytest.raises(DataError, match=r"pool\.json:2: field 'b': expected a string, got list$") as info:
        read_questions(path)
    assert (info.value.line, info.value.field) == (2, "b")
    path.write_text('[{"a": "x", "b": "y"},')
    with pytest.raises(DataError, match=r"pool\.json: not a JSON list: "):
        read_questions(path)
    path.write_text("[]")
    with pytest.raises(DataError, match=r"pool\.json: no questions$"):
        read_questions(path)


def test_unreadable_undecodable_and_oversized_pools(tmp_path):
    with pytest.raises(DataError, match=r"cannot read questions file .*missing\.jsonl: No such file"):
        read_questions(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"cannot read questions file .*: Is a directory"):
        read_questions(tmp_path)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": "caf\xe9", "b": "y"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8"):
        read_questions(path)
    path = tmp_path / "big.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n' * (MAX_POOL + 1))
    with pytest.raises(DataError, match=rf"big\.jsonl: {MAX_POOL + 1:,} questions \(at most {MAX_POOL:,}\)"):
        read_questions(path)
