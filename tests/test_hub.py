"""Hub dataset recipes on hand-written fixtures in each card's schema (tests/fixtures/hub/): PRISM's
within-turn pairs, summarize-from-feedback and its PAL/P-DPO length variant, PersonalLLM's simulated users,
PAL's Pick-a-Pic embeddings as arrays; exact rows and skip counts, the offline and malformed-file errors,
the refusal of pickle files, and `pluralign datasets prepare`."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.data import read_preferences
from pluralign.data.arrays import load_arrays
from pluralign.datasets.hub import RECIPES, prepare, write_hub
from pluralign.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"
runner = CliRunner()
LENGTH = {"n_seen": 3, "minority_ranks": (1,), "unseen_min_pairs": 2, "unseen_longer": 0.5, "seed": 0}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def triples(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(frame["user_id"], frame["chosen"], frame["rejected"], strict=True))


# ========================================================================================================
# PRISM
# ========================================================================================================
def test_prism_pairs_every_differently_scored_pair_within_a_turn():
    data = prepare("prism", source_dir=FIXTURES / "prism")
    rows = data.parts["rows"]
    assert triples(rows) == [
        ("user0", "Whiskers.", "Cat."),
        ("user0", "Whiskers.", "Mittens or Luna."),
        ("user0", "Whiskers.", "I cannot help with that."),
        ("user0", "Cat.", "I cannot help with that."),
        ("user0", "Mittens or Luna.", "I cannot help with that."),
        ("user1", "Yes, by most measures.", "No."),
        ("user1", "Yes, by most measures.", "It depends on the design."),
        ("user1", "It depends on the design.", "No."),
    ]
    assert (rows["chosen_score"] > rows["rejected_score"]).all()
    assert set(rows[rows.user_id == "user1"]["prompt"]) == {"Is nuclear power safe?"}
    # 11 pairs = 8 rows + 2 ties (40/40, 70/70) + 1 identical text ("Hi!"/"Hi!"); one single-response turn
    assert data.skipped == {"tied_pairs": 2, "same_text_pairs": 1, "single_response_turns": 1}
    assert data.counts["pairs"] == 11 and data.counts["utterances"] == 12
    users = data.users.set_index("user_id")
    assert list(users.index) == ["user0", "user1"]
    assert users.loc["user0", ["n_rows", "n_ties"]].tolist() == [5, 2]
    assert users.loc["user1", "location_reside_country"] == "United States"
    assert users.loc["user0", "religion_gpt4_categorised"] == "Non-religious"
    assert json.loads(users.loc["user1", "order_stated_prefs"]) == ["fluency", "values"]
    assert data.counts["survey_users_without_rows"] == 1  # user3 answered the survey only


def test_prism_malformed_file_is_located_by_file_line_field():
    with pytest.raises(DataError) as info:
        prepare("prism", source_dir=FIXTURES / "prism-bad")
    err = info.value
    assert (Path(err.path).name, err.line, err.field) == ("utterances.jsonl", 3, "score")
    assert "must be a number" in str(err)


def test_prism_turn_with_two_users_is_an_error(tmp_path):
    lines = (FIXTURES / "prism" / "utterances.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["user_id"] = "user9"
    lines[1] = json.dumps(record)
    (tmp_path / "utterances.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="two users") as info:
        prepare("prism", source_dir=tmp_path)
    assert (info.value.line, info.value.field) == (2, "user_id")


# ========================================================================================================
# summarize from feedback
# ========================================================================================================
def test_summarize_comparisons_workers_as_users():
    data = prepare("summarize", source_dir=FIXTURES / "summarize")
    train, validation = data.parts["train"], data.parts["validation"]
    assert (len(train), len(validation)) == (10, 8)  # 11 - 1 CNN article; 9 - 1 missing summary text
    assert data.skipped == {"no_post": 1, "missing_summary": 1, "same_text": 0}
    assert triples(train)[:2] == [("wA", "tiny", "much longer text"), ("wA", "abc", "abcdefgh")]
    assert train["prompt"].iloc[0] == (
        "SUBREDDIT: r/relationships\nTITLE: Title t1\nPOST: Post number 1: something happened.\nTL;DR:"
    )
    assert set(data.users["user_id"]) == {"wA", "wB", "wC", "wD", "wE", "wF", "wG"}


def test_summarize_length_majority_minority_and_unseen_construction():
    data = prepare("summarize-length", source_dir=FIXTURES / "summarize", **LENGTH)
    # seen = the 3 workers with most sup-vs-sup train comparisons: wA (4), wB (3), wC (2); rank 1 (wB) is
    # the minority (shorter); wD (1) is not seen
    assert data.counts["seen_workers"] == ["wA", "wB", "wC"]
    assert data.counts["minority_workers"] == ["wB"]
    assert triples(data.parts["train"]) == [
        ("wA", "much longer text", "tiny"),
        ("wA", "abcdefgh", "abc"),
        ("wA", "yyyy", "x1"),
        ("wB", "tiny", "much longer text"),
        ("wB", "abc", "abcdefgh"),
        ("wC", "much longer text", "tiny"),
        ("wC", "qq", "q"),
    ]
    assert triples(data.parts["test"]) == [("wA", "aaaa", "aa"), ("wB", "aa", "aaaa")]
    assert data.parts["train"]["prompt"].iloc[0] == "Post number 1: something happened."
    # unseen: wE and wF have 2 valid validation pairs each (wE's third has no text; wF's third is ppo), wG 1;
    # half of them (rounded) prefer longer, drawn by default_rng(seed)
    order = np.random.default_rng(0).permutation(2)
    longer = ["wE", "wF"][order[0]]
    unseen = data.parts["unseen"]
    assert sorted(unseen["user_id"]) == ["wE", "wE", "wF", "wF"]
    for user, chosen, rejected in triples(unseen):
        assert (len(chosen) > len(rejected)) == (user == longer)
    assert data.skipped == {
        "train_not_sup_vs_sup": 1,
        "validation_not_sup_vs_sup": 1,
        "no_post": 1,
        "missing_summary": 1,
        "train_unseen_workers": 1,
        "validation_below_min_pairs": 1,
        "train_equal_length": 1,
        "test_equal_length": 0,
        "unseen_equal_length": 0,
    }
    users = data.users.set_index("user_id")
    assert users.loc[["wA", "wB", "wC"], "prefers"].tolist() == ["longer", "shorter", "longer"]
    assert users.loc[longer, "prefers"] == "longer" and not users.loc[longer, "seen"]
    # every record is a row or a skip: 11 train + 9 validation records
    total = sum(map(len, data.parts.values())) + sum(data.skipped.values())
    assert total == 20


def test_summarize_length_defaults_are_the_paper_construction():
    # App. D.3: ten seen workers, unseen users with >= 100 pairs, 70% longer; PAL's code: ranks 3-5 minority
    from pluralign.datasets.hub_summarize import summarize_length

    defaults = {k: p.default for k, p in inspect.signature(summarize_length).parameters.items()}
    assert (defaults["n_seen"], defaults["minority_ranks"]) == (10, (3, 4, 5))
    assert (defaults["unseen_min_pairs"], defaults["unseen_longer"]) == (100, 0.7)
    with pytest.raises(DataError, match="only 4 workers in the train split, 10 needed"):
        prepare("summarize-length", source_dir=FIXTURES / "summarize")


# ========================================================================================================
# PersonalLLM
# ========================================================================================================
def test_personalllm_users_prefer_their_mixture_reward():
    data = prepare("personalllm", source_dir=FIXTURES / "personalllm", n_users=4, alpha=0.5, pairs_per_user=2)
    assert data.counts["reward_models"] == ["gemma_2b", "llama3_sfairx"]
    assert data.counts["responses_per_prompt"] == 4
    frames = {
        "train": pd.read_json(FIXTURES / "personalllm" / "data" / "train.jsonl", lines=True),
        "test": pd.read_parquet(FIXTURES / "personalllm" / "data" / "test-00000-of-00001.parquet"),
    }
    models = ["gemma_2b", "llama3_sfairx"]
    flat = np.concatenate(
        [
            f[[f"response_{i}_{m}" for m in models]].to_numpy(float)
            for f in frames.values()
            for i in range(1, 5)
        ]
    )  # every response's scores, [n, reward model]
    mean, std = np.nanmean(flat, axis=0), np.nanstd(flat, axis=0)
    weights = data.users.set_index("user_id")[[f"w_{m}" for m in models]]
    assert np.allclose(weights.sum(axis=1), 1.0)
    for split, part in data.parts.items():
        frame = frames[split]
        for row in part.itertuples():
            w = weights.loc[row.user_id].to_numpy()

            def reward(index, frame=frame, row=row, w=w):
                z = (
                    frame.loc[row.prompt_index, [f"response_{index}_{m}" for m in models]].to_numpy(float)
                    - mean
                )
                return float((z / std) @ w)

            assert frame.loc[row.prompt_index, f"response_{row.chosen_response}"] == row.chosen
            assert reward(row.chosen_response) > reward(row.rejected_response)
        drawn = data.counts[f"{split}_pairs_drawn"]
        skips = sum(v for k, v in data.skipped.items() if k.startswith(split))
        assert drawn == 4 * 2 and len(part) + skips == drawn
    again = prepare(
        "personalllm", source_dir=FIXTURES / "personalllm", n_users=4, alpha=0.5, pairs_per_user=2
    )
    assert triples(again.parts["train"]) == triples(data.parts["train"])  # seeded
    other = prepare(
        "personalllm", source_dir=FIXTURES / "personalllm", n_users=4, alpha=0.5, pairs_per_user=2, seed=1
    )
    assert not np.allclose(other.users["w_gemma_2b"], data.users["w_gemma_2b"])


def test_personalllm_missing_score_is_counted_not_dropped_silently():
    data = prepare(
        "personalllm",
        source_dir=FIXTURES / "personalllm",
        n_users=30,
        alpha=1.0,
        pairs_per_user={"train": 3, "test": 2},
    )
    # prompt 2's response 4 has no gemma_2b score: every pair drawn with it is counted as missing
    assert data.skipped["train_missing_response"] > 0
    assert not (
        (data.parts["train"]["prompt_index"] == 2) & (data.parts["train"]["chosen"] == "It is 4.")
    ).any()


# ========================================================================================================
# Pick-a-Pic embeddings
# ========================================================================================================
def test_pickapic_embedded_arrays_skip_the_encoder(tmp_path):
    data = prepare("pickapic", source_dir=FIXTURES / "pickapic")
    assert triples(data.parts["train"]) == [("u1", "image:i1", "image:i2"), ("u1", "image:i4", "image:i3"),
                                            ("u2", "image:i2", "image:i1")]  # fmt: skip
    assert data.skipped == {"ties": 1, "same_image": 1}
    paths = write_hub(data, tmp_path)
    arrays = load_arrays(paths["train.arrays"])
    images = np.load(FIXTURES / "pickapic" / "images.npz")
    prompts = np.load(FIXTURES / "pickapic" / "prompts.npz")
    image_vec = dict(zip(images["keys"], images["vectors"], strict=True))
    prompt_vec = dict(zip(prompts["keys"], prompts["vectors"], strict=True))
    assert arrays.is_embedded and len(arrays) == 3
    for j in range(len(arrays)):
        chosen = arrays.items[arrays.chosen[j]].removeprefix("image:")
        context = arrays.contexts[arrays.context[j]].removeprefix("prompt:")
        assert np.array_equal(arrays.item_vectors[arrays.chosen[j]], image_vec[chosen])
        assert np.array_equal(arrays.context_vectors[arrays.context[j]], prompt_vec[context])
    rows = read_preferences(paths["train"])
    assert len(rows) == 3
    vectors = np.load(paths["vectors"], allow_pickle=False)
    assert "image:i1" in set(vectors["keys"]) and "prompt:p1" in set(vectors["keys"])


def test_pickapic_refuses_pickle_files_and_the_hub():
    with pytest.raises(DataError, match="unpickling") as info:
        prepare("pickapic", source_dir=FIXTURES / "pickapic-pickled")
    assert info.value.path.endswith(".zip")
    with pytest.raises(DataError, match=r"pickle files.*--from"):
        prepare("pickapic")


# ========================================================================================================
# offline, output files, CLI
# ========================================================================================================
@pytest.mark.parametrize("name", [n for n in RECIPES if n != "pickapic"])
def test_offline_without_a_local_copy_is_one_clear_error(name):
    with pytest.raises(DataError) as info:
        prepare(name)
    message = str(info.value)
    assert "--from" in message and "HF_HUB_OFFLINE" in message and name in message


def test_write_hub_files_read_back_with_license_and_skips(tmp_path):
    data = prepare("summarize-length", source_dir=FIXTURES / "summarize", **LENGTH)
    paths = write_hub(data, tmp_path / "out", format="parquet")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "train.parquet", "test.parquet", "unseen.parquet", "users.csv", "meta.json"
    }  # fmt: skip
    assert len(read_preferences(paths["train"])) == 7
    meta = json.loads(paths["metadata"].read_text())
    assert meta["source"]["repo"] == "openai/summarize_from_feedback"
    assert "Stiennon" in meta["source"]["attribution"]
    assert "App. D.3" in meta["options"]["construction"]
    assert meta["skipped"]["train_equal_length"] == 1 and meta["rows"] == {"train": 7, "test": 2, "unseen": 4}
    assert pd.read_csv(paths["users"])["user_id"].tolist() == ["wA", "wB", "wC", "wE", "wF"]


def test_cli_prepare_on_a_fixture(tmp_path):
    out = tmp_path / "prism"
    result = invoke("datasets", "prepare", "prism", "--from", FIXTURES / "prism", "--out", out)
    assert result.exit_code == 0, result.output
    assert "8 rows" in result.output and "2 tied_pairs" in result.output
    assert len(read_preferences(out / "rows.jsonl")) == 8
    meta = json.loads((out / "meta.json").read_text())
    assert "CC-BY-NC-4.0" in meta["source"]["license"]
    result = invoke("datasets", "prepare", "personalllm", "--from", FIXTURES / "personalllm", "--out",
                    tmp_path / "p", "--n-users", 3, "--pairs-per-user", 2, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["part"] for r in json.loads(result.output)] == ["train", "test"]


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = invoke("datasets", "prepare", "prism", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "--from" in result.output and "Traceback" not in result.output
    result = invoke("datasets", "prepare", "prism", "--from", FIXTURES / "prism-bad", "--out", tmp_path / "y")
    assert result.exit_code == 2 and "utterances.jsonl:3: field 'score'" in result.output
    result = invoke("datasets", "prepare", "prism", "--from", FIXTURES / "prism", "--out", tmp_path / "z",
                    "--alpha", 2)  # fmt: skip
    assert result.exit_code == 2 and "does not take --alpha" in result.output
