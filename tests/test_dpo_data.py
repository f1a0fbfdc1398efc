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
    path = tmp_path / "r.jsonl"
    write_jsonl(
        path,
        [
            {"user_id": "a", "prompt": "p1", "responses": ["x", "y", "z"]},
            {"user_id": 7, "prompt": "p2", "chosen": "good", "rejected": "bad"},
            {"user_id": "b", "responses": ["u", "v"]},
        ],
    )
    frame = read_rankings(path)
    assert frame["user_id"].tolist() == ["a", "7", "b"]
    assert frame["prompt"].tolist() == ["p1", "p2", ""]
    assert frame["responses"].tolist() == [("x", "y", "z"), ("good", "bad"), ("u", "v")]


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {"user_id": ["a", "b"], "prompt": ["p", "q"], "responses": [["x", "y", "z"], ["u", "v"]]}
    ).to_parquet(path)
    assert read_rankings(path)["responses"].tolist() == [("x", "y", "z"), ("u", "v")]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"user_id": "a", "responses": ["x"]}', "responses", "at least 2"),
        ('{"user_id": "a", "responses": ["x", "x"]}', "responses", "distinct"),
        ('{"user_id": "a", "responses": ["x", ""]}', "responses[1]", "non-empty string"),
        ('{"user_id": "a", "responses": ["x", 3]}', "responses[1]", "non-empty string"),
        ('{"user_id": "a", "responses": "x > y"}', "responses", "list of strings"),
        ('{"responses": ["x", "y"]}', "user_id", "non-empty string or integer"),
        ('{"user_id": true, "responses": ["x", "y"]}', "user_id", "non-empty string or integer"),
        ('{"user_id": "a", "prompt": 5, "responses": ["x", "y"]}', "prompt", "expected a string"),
        ('{"user_id": "a", "prompt": "p"}', "responses", "missing"),
        ('{"user_id": "a", "chosen": "x"}', "rejected", "non-empty string"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, row, field, reason):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"user_id": "ok", "responses": ["a", "b"]}, "", row])
    with pytest.raises(DataError) as info:
        read_rankings(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert reason in str(err)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rankings(tmp_path / "missing.jsonl")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        read_rankings(tmp_path / "r.txt")
    (tmp_path / "r.jsonl").write_text('{"user_id": "a", "responses": ["x", "y"]}\n{"user_id": \n')
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
            {"user_id": "b", "responses": ["u", "v"]},
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


def test_tokenization_matches_trl(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from pluralign.dpo.models import tiny_causal_lm

    rows = [{"user_id": "a", "prompt": "tell me ", "responses": ["red apple", "blue sky now"]}]
    tokenizer = word_tokenizer(["tell me red apple blue sky now"])
    prompt_ids, response_ids = tokenize_rankings(tokenizer, rankings_from_records(rows))
    dataset = Dataset.from_list([{"prompt": "tell me ", "chosen": "red apple", "rejected": "blue sky now"}])
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
    assert response_ids[0][0][-1] == tokenizer.eos_token_id
