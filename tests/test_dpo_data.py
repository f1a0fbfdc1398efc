"""Ranking data for the DPO family: reading, validation errors, full breaking, tokenization as TRL does."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from pluralign.data.comparisons import PreferenceData
from pluralign.dpo.data import (
    full_breaking_pairs,
    preferences_to_rankings,
    rankings_from_records,
    rankings_to_pairs,
    read_rankings,
    tokenize_rankings,
)
from pluralign.dpo.models import word_tokenizer
from pluralign.errors import DataError


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_reads_rankings_and_pairs(tmp_path):
    # one format per file (mixing them is refused, below); a pair is the ranking [chosen, rejected]
    rankings, pairs = tmp_path / "r.jsonl", tmp_path / "p.jsonl"
    write_jsonl(
        rankings,
        [
            {"user_id": "a", "prompt": "p1", "responses": ["x", "y", "z"]},
            {"user_id": "b", "prompt": "p3", "responses": ["u", "v"]},
        ],
    )
    write_jsonl(pairs, [{"user_id": 7, "prompt": "p2", "chosen": "good", "rejected": "bad"}])
    frame = read_rankings(rankings)
    assert frame["user_id"].tolist() == ["a", "b"]
    assert frame["prompt"].tolist() == ["p1", "p3"]
    assert frame["responses"].tolist() == [("x", "y", "z"), ("u", "v")]
    frame = read_rankings(pairs)
    assert frame["user_id"].tolist() == ["7"]
    assert frame["prompt"].tolist() == ["p2"]
    assert frame["responses"].tolist() == [("good", "bad")]


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {"user_id": ["a", "b"], "prompt": ["p", "q"], "responses": [["x", "y", "z"], ["u", "v"]]}
    ).to_parquet(path)
    assert read_rankings(path)["responses"].tolist() == [("x", "y", "z"), ("u", "v")]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"user_id": "a", "prompt": "q", "responses": ["x"]}', "responses", "at least 2"),
        ('{"user_id": "a", "prompt": "q", "responses": ["x", "x"]}', "responses", "distinct"),
        ('{"user_id": "a", "prompt": "q", "responses": ["x", ""]}', "responses[1]", "non-empty string"),
        ('{"user_id": "a", "prompt": "q", "responses": ["x", 3]}', "responses[1]", "non-empty string"),
        ('{"user_id": "a", "prompt": "q", "responses": ["x", " \\n "]}', "responses[1]", "whitespace only"),
        ('{"user_id": "a", "prompt": "q", "responses": "x > y"}', "responses", "list of strings"),
        ('{"prompt": "q", "responses": ["x", "y"]}', "user_id", "non-empty string or integer"),
        (
            '{"user_id": true, "prompt": "q", "responses": ["x", "y"]}',
            "user_id",
            "non-empty string or integer",
        ),
        ('{"user_id": "a", "prompt": 5, "responses": ["x", "y"]}', "prompt", "expected a string"),
        ('{"user_id": "a", "responses": ["x", "y"]}', "prompt", "expected a string"),
        ('{"user_id": "a", "prompt": "", "responses": ["x", "y"]}', "prompt", "empty or whitespace"),
        ('{"user_id": "a", "prompt": "  ", "responses": ["x", "y"]}', "prompt", "empty or whitespace"),
        ('{"user_id": "a", "prompt": "p"}', "responses", "missing"),
        ('{"user_id": "a", "prompt": "p", "responses": ["x", "y"], "chosen": "y"}', "responses", "not both"),
        ('{"user_id": "a", "prompt": "p", "chosen": "x", "rejected": "y"}', "chosen", "line 1 is a ranking"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, row, field, reason):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"user_id": "ok", "prompt": "q", "responses": ["a", "b"]}, "", row])
    with pytest.raises(DataError) as info:
        read_rankings(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert reason in str(err)


def test_bad_pair_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    for row, field, reason in [
        ('{"user_id": "a", "prompt": "q", "chosen": "x"}', "rejected", "non-empty string"),
        ('{"user_id": "a", "prompt": "q", "chosen": "x", "rejected": "\\t"}', "rejected", "whitespace only"),
        ('{"user_id": "a", "prompt": "q", "chosen": " ", "rejected": "y"}', "chosen", "whitespace only"),
        ('{"user_id": "a", "prompt": "q", "responses": ["x", "y"]}', "responses", "line 1 is a pair"),
    ]:
        write_jsonl(path, [{"user_id": "ok", "prompt": "q", "chosen": "a", "rejected": "b"}, row])
        with pytest.raises(DataError) as info:
            read_rankings(path)
        assert (info.value.line, info.value.field) == (2, field), row
        assert reason in str(info.value), row


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rankings(tmp_path / "missing.jsonl")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        read_rankings(tmp_path / "r.txt")
    (tmp_path / "r.jsonl").write_text(
        '{"user_id": "a", "prompt": "q", "responses": ["x", "y"]}\n{"user_id": \n'
    )
    with pytest.raises(DataError, match="invalid JSON") as info:
        read_rankings(tmp_path / "r.jsonl")
    assert info.value.line == 2
    (tmp_path / "arr.jsonl").write_text('["a", "b"]\n')
    with pytest.raises(DataError, match="JSON object"):
        read_rankings(tmp_path / "arr.jsonl")
    (tmp_path / "latin.jsonl").write_bytes('{"user_id": "é", "responses": ["x", "y"]}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_rankings(tmp_path / "latin.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no ranking rows"):
        read_rankings(tmp_path / "empty.jsonl")


def test_full_breaking_matches_itertools():
    lengths = np.array([2, 3, 5, 2, 7, 41, 4])
    ranking, better, worse = full_breaking_pairs(lengths)
    expected = [(r, i, j) for r, m in enumerate(lengths) for i, j in itertools.combinations(range(m), 2)]
    assert list(zip(ranking.tolist(), better.tolist(), worse.tolist(), strict=True)) == expected


def test_rankings_to_pairs_keeps_users():
    frame = rankings_from_records(
        [
            {"user_id": "a", "prompt": "p", "responses": ["x", "y", "z"]},
            {"user_id": "b", "prompt": "q", "responses": ["u", "v"]},
        ]
    )
    pairs = rankings_to_pairs(frame)
    assert pairs[["user_id", "chosen", "rejected", "ranking"]].values.tolist() == [
        ["a", "x", "y", 0],
        ["a", "x", "z", 0],
        ["a", "y", "z", 0],
        ["b", "u", "v", 1],
    ]


def test_preferences_to_rankings():
    frame = pd.DataFrame(
        {"user_id": ["u1", "u2"], "prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["c", "d"]}
    )
    rankings = preferences_to_rankings(PreferenceData.from_frame(frame))
    assert rankings["responses"].tolist() == [("a", "c"), ("b", "d")]
    assert rankings["user_id"].tolist() == ["u1", "u2"]


CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def chat_tokenizer(words: str):
    tokenizer = word_tokenizer([words + " <user> <assistant>"])
    tokenizer.chat_template = CHAT
    return tokenizer


@pytest.mark.parametrize("chat", [False, True])
def test_tokenization_matches_trl(tmp_path, chat):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from pluralign.dpo.data import pairs_dataset
    from pluralign.dpo.models import tiny_causal_lm

    rows = [{"user_id": "a", "prompt": "tell me ", "responses": ["red apple", "blue sky now"]}]
    tokenizer = (
        chat_tokenizer("tell me red apple blue sky now")
        if chat
        else word_tokenizer(["tell me red apple blue sky now"])
    )
    frame = rankings_from_records(rows)
    prompt_ids, response_ids = tokenize_rankings(tokenizer, frame, chat=chat)
    # the dataset pluralign hands to TRL, tokenized by TRL itself
    dataset = pairs_dataset(frame, tokenizer, chat=chat).select_columns(["prompt", "chosen", "rejected"])
    if chat:
        assert dataset[0]["prompt"] == [{"role": "user", "content": "tell me "}]
    else:
        manual = Dataset.from_list(
            [{"prompt": "tell me ", "chosen": "red apple", "rejected": "blue sky now"}]
        )
        assert dataset.to_list() == manual.to_list()
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, precompute_ref_log_probs=False)
    model = tiny_causal_lm(len(tokenizer))
    trainer = DPOTrainer(
        model=model,
        ref_model=tiny_causal_lm(len(tokenizer)),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert prompt_ids[0] == row["prompt_ids"]
    assert response_ids[0] == [row["chosen_ids"], row["rejected_ids"]]
    end = tokenizer.convert_tokens_to_ids("</s>")
    assert response_ids[0][0][-1] == end
    if chat:  # the completion follows the generation prompt, which ends the prompt
        assert tokenizer.convert_ids_to_tokens(prompt_ids[0][-1]) == "<assistant>"


def test_prompt_that_merges_with_the_response_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # characters are tokens, except "ab" which merges: the prompt "xa" + response "b" crosses the boundary
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "x": 3, "a": 4, "b": 5, "ab": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    frame = rankings_from_records([{"user_id": "u", "prompt": "xa", "responses": ["b", "x"]}])
    with pytest.raises(ValueError, match="ranking 1: the prompt's tokens are not a prefix"):
        tokenize_rankings(tokenizer, frame)
