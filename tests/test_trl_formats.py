"""TRL's conversational preference formats (explicit and implicit prompt): every source, TRL as reference,
the chat-template path, each malformed case's error, and the docs' example files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pluralign.data import read_preferences
from pluralign.data.conversation import render_messages
from pluralign.errors import DataError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


EXPLICIT = [
    {
        "user_id": "ana",
        "prompt": [user("What color is the sky?")],
        "chosen": [bot("Blue.")],
        "rejected": [bot("Green.")],
    },
    {
        "user_id": "ben",
        "prompt": [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("Sun?")],
        "chosen": [bot("In the sky.")],
        "rejected": [bot("In the\nsea.")],
    },
]
IMPLICIT = [
    {
        "user_id": "ana",
        "chosen": [user("What color is the sky?"), bot("Blue.")],
        "rejected": [user("What color is the sky?"), bot("Green.")],
    },
    {
        "user_id": "ben",
        "chosen": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            bot("Hello!"),
            user("Sun?"),
            bot("In the sky."),
        ],
        "rejected": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            bot("Hello!"),
            user("Sun?"),
            bot("In the\nsea."),
        ],
    },
]
# what both become with the default rendering, exactly
EXPECTED = [
    {
        "user_id": "ana",
        "prompt": "user: What color is the sky?",
        "chosen": "assistant: Blue.",
        "rejected": "assistant: Green.",
    },
    {
        "user_id": "ben",
        "prompt": "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Sun?",
        "chosen": "assistant: In the sky.",
        "rejected": "assistant: In the\nsea.",
    },
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def as_source(kind: str, rows: list[dict], tmp_path: Path):
    if kind == "jsonl":
        return write_jsonl(tmp_path / "rows.jsonl", rows)
    if kind == "parquet":
        pd.DataFrame(rows).to_parquet(tmp_path / "rows.parquet")
        return tmp_path / "rows.parquet"
    if kind == "frame":
        return pd.DataFrame(rows)
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    if kind == "dataset":
        return dataset
    dataset.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def records(data) -> list[dict]:
    return data.to_frame()[["user_id", "prompt", "chosen", "rejected"]].to_dict("records")


SOURCES = ["jsonl", "parquet", "dataset", "saved-dataset", "frame"]


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("rows", [EXPLICIT, IMPLICIT], ids=["explicit", "implicit"])
def test_conversational_rows_read_as_standard_rows(tmp_path, kind, rows):
    assert records(read_preferences(as_source(kind, rows, tmp_path))) == EXPECTED


def test_same_rows_in_standard_format_read_unchanged(tmp_path):
    # the standard rows that the conversations render to are themselves read as they are
    assert records(read_preferences(write_jsonl(tmp_path / "s.jsonl", EXPECTED))) == EXPECTED


HAND_WRITTEN = [
    # diverges at the last answer
    ([user("Q"), bot("A")], [user("Q"), bot("B")]),
    # diverges at an answer in the middle: the rest of each conversation is its response
    ([user("Q"), bot("A"), user("more"), bot("C")], [user("Q"), bot("B")]),
    # a system message and two shared turns
    (
        [{"role": "system", "content": "S"}, user("Q"), bot("A"), user("R"), bot("yes")],
        [
            {"role": "system", "content": "S"},
            user("Q"),
            bot("A"),
            user("R"),
            bot("no"),
            user("why"),
            bot("x"),
        ],
    ),
    # same content, other role: not shared
    ([user("Q"), user("Q2"), bot("A")], [user("Q"), {"role": "system", "content": "Q2"}, bot("A")]),
]


@pytest.mark.parametrize(("chosen", "rejected"), HAND_WRITTEN)
def test_implicit_prompt_is_trl_extract_prompt(tmp_path, chosen, rejected):
    from trl import extract_prompt, maybe_extract_prompt

    reference = extract_prompt({"chosen": chosen, "rejected": rejected})
    assert maybe_extract_prompt({"chosen": chosen, "rejected": rejected}) == reference
    expected = {name: render_messages(reference[name]) for name in ("prompt", "chosen", "rejected")}
    path = write_jsonl(tmp_path / "i.jsonl", [{"user_id": "u", "chosen": chosen, "rejected": rejected}])
    (row,) = records(read_preferences(path))
    assert row == {"user_id": "u", **expected}
    # and as TRL's maybe_extract_prompt, a string prompt next to conversations is not used
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"user_id": "u", "prompt": "Q", "chosen": chosen, "rejected": rejected}]
    )
    assert records(read_preferences(path)) == [row]
    assert maybe_extract_prompt({"prompt": "Q", "chosen": chosen, "rejected": rejected}) == reference


def test_string_rows_without_prompt_keep_empty_prompts(tmp_path):
    # TRL's standard implicit prompt (common leading characters) is not extracted: documented choice
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [{"user_id": "u", "chosen": "The sky is blue.", "rejected": "The sky is green."}],
    )
    assert records(read_preferences(path)) == [
        {"user_id": "u", "prompt": "", "chosen": "The sky is blue.", "rejected": "The sky is green."}
    ]


def test_render_messages_default_format():
    text = render_messages([{"role": "system", "content": "S"}, user("two\nlines"), bot("ok")])
    assert text == "system: S\nuser: two\nlines\nassistant: ok"


# --- chat templates -------------------------------------------------------------------------------------
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT
    return tokenizer


def test_chat_template_renders_as_trl_apply_chat_template(tmp_path):
    from trl import apply_chat_template

    tokenizer = chat_tokenizer()
    path = write_jsonl(tmp_path / "c.jsonl", EXPLICIT)
    expected = [
        {
            "user_id": row["user_id"],
            **apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer),
        }
        for row in EXPLICIT
    ]
    assert expected[0] == {
        "user_id": "ana",
        "prompt": "<user> What color is the sky? </s> <assistant> ",
        "chosen": "Blue. </s> ",
        "rejected": "Green. </s> ",
    }
    assert records(read_preferences(path, chat_template=tokenizer)) == expected
    # the same template as a jinja string, and as a plain callable, give the same rows
    assert records(read_preferences(path, chat_template=CHAT)) == expected

    def hook(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    assert records(read_preferences(path, chat_template=hook)) == expected
    # implicit rows: the prompt is extracted first, then rendered the same way
    implicit = write_jsonl(tmp_path / "i.jsonl", IMPLICIT)
    assert records(read_preferences(implicit, chat_template=tokenizer)) == expected
    # standard rows are never re-rendered
    standard = write_jsonl(tmp_path / "s.jsonl", EXPECTED)
    assert records(read_preferences(standard, chat_template=tokenizer)) == EXPECTED


def test_a_failing_template_is_the_rows_error(tmp_path):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    path = write_jsonl(tmp_path / "c.jsonl", EXPLICIT)
    with pytest.raises(DataError) as info:
        read_preferences(path, chat_template=strict)
    assert (info.value.line, info.value.field) == (2, "chosen")
    assert "the chat template failed on this row" in str(info.value) and "no system" in str(info.value)
    with pytest.raises(TypeError, match="chat_template must be"):
        read_preferences(path, chat_template=3)
    with pytest.raises(
        DataError, match=r"c\.jsonl:1: field 'chosen': the chat template failed on this row: Type"
    ):
        read_preferences(path, chat_template=lambda messages, add_generation_prompt: None)


# --- malformed rows -------------------------------------------------------------------------------------
GOOD = EXPLICIT[0]


def bad(**fields) -> dict:
    return GOOD | fields


MALFORMED = [
    (bad(chosen={"role": "assistant", "content": "x"}), "chosen", "must be a message list, got dict"),
    (bad(rejected="Green."), "rejected", "must be a message list, as 'chosen' is, got str 'Green.'"),
    (
        bad(chosen=["Blue."]),
        "chosen",
        "message 1 of 1 must be an object with 'role' and 'content', got str 'Blue.'",
    ),
    (
        bad(rejected=[bot("a"), 3]),
        "rejected",
        "message 2 of 2 must be an object with 'role' and 'content', got int 3",
    ),
    (bad(chosen=[{"content": "x"}]), "chosen", "message 1 of 1 has no 'role' ({'content': 'x'})"),
    (bad(prompt=[{"role": "user"}]), "prompt", "message 1 of 1 has no 'content' ({'role': 'user'})"),
    (bad(chosen=[{"role": "assistant", "content": None}]), "chosen", "message 1 of 1 has no 'content'"),
    (
        bad(chosen=[{"role": "assistant", "content": 5}]),
        "chosen",
        "message 1 of 1: 'content' must be a string, got int 5",
    ),
    (
        bad(chosen=[{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]),
        "chosen",
        "message 1 of 1: 'content' must be a string, got list",
    ),
    (
        bad(rejected=[{"role": 1, "content": "x"}]),
        "rejected",
        "message 1 of 1: 'role' must be a string, got int 1",
    ),
    (
        bad(rejected=[{"role": ["user"], "content": "x"}]),
        "rejected",
        "message 1 of 1: 'role' must be a string, got list",
    ),
    (
        bad(chosen=[{"role": "robot", "content": "x"}]),
        "chosen",
        "message 1 of 1: unknown role 'robot' (expected one of system, user, assistant, tool)",
    ),
    (bad(prompt=[]), "prompt", "is an empty message list"),
    (bad(rejected=[]), "rejected", "is an empty message list"),
    (bad(prompt=None), "prompt", "is null"),
    # identical once rendered: the extra key does not reach the role tags
    (
        bad(rejected=[{"role": "assistant", "content": "Blue.", "name": "bot"}]),
        "rejected",
        "is identical to 'chosen'",
    ),
    (
        bad(chosen="Blue.", rejected="Green.", prompt="Q"),
        "chosen",
        "is a string, but line 1 is a conversational row",
    ),
    (bad(prompt="What color is the sky?"), "prompt", "is a string, but line 1's prompt is a message list"),
]


@pytest.mark.parametrize(("row", "field", "reason"), MALFORMED)
def test_malformed_conversations_are_refused(tmp_path, row, field, reason):
    # lines: 1 good, 2 bad, 3 good, 4 bad again: the first is reported, the other counted, none dropped
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row, EXPLICIT[1], row])
    with pytest.raises(DataError) as info:
        read_preferences(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 2, field), str(err)
    assert str(err).startswith(f"{path}:2: field '{field}': {reason}"), str(err)
    assert str(err).endswith("(and 1 more invalid row)"), str(err)


IMPLICIT_GOOD = IMPLICIT[0]
IMPLICIT_MALFORMED = [
    (
        {"user_id": "u", "chosen": [user("Q"), bot("A")], "rejected": [user("R"), bot("A")]},
        "chosen",
        "shares no leading message with 'rejected', so there is no implicit prompt",
    ),
    (
        {"user_id": "u", "chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("A"), user("more")]},
        "chosen",
        "has nothing after the 2 messages it shares with 'rejected' (the implicit prompt)",
    ),
    (
        {"user_id": "u", "chosen": [user("Q"), bot("A"), user("more")], "rejected": [user("Q")]},
        "rejected",
        "has nothing after the 1 message it shares with 'chosen' (the implicit prompt)",
    ),
    (
        {"user_id": "u", "chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("A")]},
        "rejected",
        "is identical to 'chosen'",
    ),
    (
        {"user_id": "u", "chosen": "Q A", "rejected": "Q B"},
        "chosen",
        "is a string, but line 1 is a conversational row",
    ),
]


@pytest.mark.parametrize(("row", "field", "reason"), IMPLICIT_MALFORMED)
def test_malformed_implicit_prompts_are_refused(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [IMPLICIT_GOOD, row])
    with pytest.raises(DataError) as info:
        read_preferences(path)
    assert (info.value.line, info.value.field) == (2, field), str(info.value)
    assert str(info.value) == f"{path}:2: field '{field}': {reason}" or str(info.value).startswith(
        f"{path}:2: field '{field}': {reason}"
    )


def test_lists_in_a_standard_file_are_refused(tmp_path):
    standard = {"user_id": "u", "prompt": "Q", "chosen": "A", "rejected": "B"}
    path = write_jsonl(
        tmp_path / "s.jsonl", [standard, standard | {"chosen": [bot("A")], "rejected": [bot("B")]}]
    )
    with pytest.raises(
        DataError, match=r"s\.jsonl:2: field 'chosen': is a message list, but line 1 is a standard row"
    ):
        read_preferences(path)
    path = write_jsonl(tmp_path / "p.jsonl", [standard, standard | {"prompt": [user("Q")]}])
    with pytest.raises(
        DataError, match=r"p\.jsonl:2: field 'prompt': is a message list but 'chosen' is a string"
    ):
        read_preferences(path)


@pytest.mark.parametrize("kind", ["parquet", "dataset", "frame"])
def test_column_sources_report_rows(tmp_path, kind):
    # in Parquet and datasets, a message lacking a key of the others' struct holds a null there
    rows = [
        *EXPLICIT,
        bad(chosen=[{"role": "assistant"}]),
        bad(chosen=[bot("Blue.")], rejected=[bot("Blue.")]),
    ]
    with pytest.raises(DataError) as info:
        read_preferences(as_source(kind, rows, tmp_path))
    assert (info.value.line, info.value.field) == (3, "chosen")
    assert "message 1 of 1 has no 'content'" in str(info.value)
    assert str(info.value).endswith("(and 1 more invalid row)")


def test_conversational_frames_write_to_jsonl_and_parquet_not_csv(tmp_path):
    from pluralign.data import write_preferences

    for suffix in (".jsonl", ".parquet"):
        path = write_preferences(pd.DataFrame(EXPLICIT), tmp_path / f"c{suffix}")
        assert records(read_preferences(path)) == EXPECTED
    with pytest.raises(DataError, match="cannot write conversational rows"):
        write_preferences(pd.DataFrame(EXPLICIT), tmp_path / "c.csv")
    assert not (tmp_path / "c.csv").exists()
    write_preferences(read_preferences(pd.DataFrame(EXPLICIT)), tmp_path / "rendered.csv")  # text: fine
    assert records(read_preferences(tmp_path / "rendered.csv")) == EXPECTED


# --- the docs' examples ---------------------------------------------------------------------------------
def test_docs_example_files_are_the_documented_ones_and_read():
    page = (DOCS / "data-formats.md").read_text()
    blocks = re.findall(r"\(\[examples/(\w+\.jsonl)\]\(examples/\1\)\)\n\n```json\n(.*?)```", page, re.S)
    assert [name for name, _ in blocks] == ["standard.jsonl", "conversational.jsonl", "implicit_prompt.jsonl"]
    for name, block in blocks:
        assert (DOCS / "examples" / name).read_text() == block, name
    read = {name: records(read_preferences(DOCS / "examples" / name)) for name, _ in blocks}
    ana = {"user_id": "ana", "prompt": "user: What color is the sky?", "chosen": "assistant: It is blue."}
    assert read["conversational.jsonl"][0] == ana | {"rejected": "assistant: It is green."}
    assert read["conversational.jsonl"][1]["prompt"] == "system: Answer briefly.\nuser: Where is the sun?"
    assert read["implicit_prompt.jsonl"][0] == read["conversational.jsonl"][0]
    assert read["implicit_prompt.jsonl"][1] == {
        "user_id": "ben",
        "prompt": "user: Where is the sun?",
        "chosen": "assistant: In the sky.\nuser: Sure?\nassistant: Yes.",
        "rejected": "assistant: In the sea.",
    }
    assert read["standard.jsonl"][1] == {
        "user_id": "ben",
        "prompt": "Where is the sun?",
        "chosen": "In the sky.",
        "rejected": "In the sea.",
    }
    # the render_messages example of the page
    assert "# 'user: Hi\\nassistant: Hello!'" in page
    assert render_messages([user("Hi"), bot("Hello!")]) == "user: Hi\nassistant: Hello!"
