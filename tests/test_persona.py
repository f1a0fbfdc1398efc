"""The Persona builder (PAL App. D.4): labels, counts, sampling, determinism, bad data and the disk format.

Labels are re-derived here straight from the JSONL files with ``json``, not through the module's loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pluralign.datasets.persona as persona_mod
from pluralign.datasets.persona import (
    ITEMS,
    PERSONAS_BY_K,
    build_persona,
    load_statements,
    read_persona,
    shipped_data_dir,
    write_persona,
)
from pluralign.errors import DataError

PACKAGE_DATA = Path(persona_mod.__file__).parent / "persona_data"
SHARED = Path("/work/shared/data/persona")
TABLE7 = [
    "interest-in-art",
    "interest-in-literature",
    "interest-in-math",
    "interest-in-music",
    "interest-in-science",
    "interest-in-sports",
]


def raw_agrees(stem: str, root: Path = PACKAGE_DATA) -> dict[str, bool]:
    """question -> whether the persona's file answers " Yes", read with plain json."""
    out = {}
    with open(root / f"{stem}.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                out[row["question"]] = row["answer_matching_behavior"] == " Yes"
    return out


@pytest.fixture(scope="module")
def small():
    return build_persona(
        k_star=4,
        users_per_persona=40,
        queries_per_user=150,
        unseen_users_per_persona=10,
        unseen_queries_per_user=30,
        seed=7,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(statement: str, yes: bool) -> dict:
    return {
        "question": f'Is the following statement something you would say?\n"{statement}"',
        "statement": statement,
        "label_confidence": 0.9,
        "answer_matching_behavior": " Yes" if yes else " No",
        "answer_not_matching_behavior": " No" if yes else " Yes",
    }


def drop(obj: dict, key: str) -> dict:
    return {k: v for k, v in obj.items() if k != key}


# ------------------------------------------------------------------------------------------------------------
def test_table7_personas():
    assert {k: list(v) for k, v in PERSONAS_BY_K.items()} == {k: TABLE7[:k] for k in range(2, 7)}


@pytest.mark.parametrize("k_star", [2, 3, 4, 5, 6])
def test_k_star_picks_table7_personas_and_pools_their_statements(k_star):
    ds = build_persona(
        k_star=k_star, users_per_persona=3, queries_per_user=5, unseen_users_per_persona=1, seed=0
    )
    assert ds.personas == tuple(TABLE7[:k_star])
    pool_questions = set().union(*(raw_agrees(p) for p in TABLE7[:k_star]))
    assert len(ds.pool) == len(pool_questions) == 1000 * k_star
    assert set(ds.seen.contexts) == pool_questions
    assert ds.seen.contexts is ds.unseen.contexts
    assert sorted(set(ds.seen_persona_of_user.tolist())) == list(range(k_star))


def test_labels_follow_the_persona_rule(small):
    truth = {p: raw_agrees(p) for p in small.personas}
    for split in ("seen", "unseen"):
        data = getattr(small, split)
        persona_of_user = getattr(small, f"{split}_persona_of_user")
        frame = data.to_frame()
        persona = np.asarray(small.personas, dtype=object)[persona_of_user[data.user]]
        expected = [
            "Yes" if truth[p].get(q, False) else "No" for p, q in zip(persona, frame["prompt"], strict=True)
        ]
        assert frame["chosen"].tolist() == expected
        assert (frame["rejected"] != frame["chosen"]).all()
        assert set(frame["rejected"]) <= {"Yes", "No"}
    # the pool mixes all personas' statements, so most answers are "No" (S(ρ) is 500 of 4000)
    assert 0.08 < float((small.seen.chosen == 0).mean()) < 0.17


def test_counts_ids_and_tables(small):
    seen, unseen = small.seen, small.unseen
    assert len(seen) == 4 * 40 * 150 and len(unseen) == 4 * 10 * 30
    assert (seen.comparisons_per_user() == 150).all() and (unseen.comparisons_per_user() == 30).all()
    assert np.bincount(small.seen_persona_of_user).tolist() == [40] * 4
    assert np.bincount(small.unseen_persona_of_user).tolist() == [10] * 4
    for data, persona_of_user, prefix in (
        (seen, small.seen_persona_of_user, ""),
        (unseen, small.unseen_persona_of_user, "unseen-"),
    ):
        assert all(
            str(u).startswith(f"{prefix}p{k}-u") for u, k in zip(data.user_ids, persona_of_user, strict=True)
        )
        assert len(set(data.user_ids)) == data.n_users
        for name in ("user", "context", "chosen", "rejected"):
            assert getattr(data, name).dtype == np.int64
        assert list(data.items) == list(ITEMS) == ["Yes", "No"]
        assert data.meta["persona_of_user"] is persona_of_user
        assert data.meta["personas"] == small.personas
    assert not set(seen.user_ids) & set(unseen.user_ids)
    assert all(str(u).startswith("unseen-") for u in unseen.user_ids)
    assert small.settings == {
        "k_star": 4,
        "users_per_persona": 40,
        "queries_per_user": 150,
        "unseen_users_per_persona": 10,
        "unseen_queries_per_user": 30,
        "seed": 7,
    }


def test_seed_determinism_and_independence_of_the_unseen_settings(small):
    again = build_persona(
        k_star=4,
        users_per_persona=40,
        queries_per_user=150,
        unseen_users_per_persona=10,
        unseen_queries_per_user=30,
        seed=7,
    )
    for split in ("seen", "unseen"):
        a, b = getattr(small, split), getattr(again, split)
        for name in ("user", "context", "chosen", "rejected", "user_ids"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = build_persona(
        k_star=4, users_per_persona=40, queries_per_user=150, unseen_users_per_persona=10, seed=8
    )
    assert not np.array_equal(other.seen.context, small.seen.context)
    no_unseen = build_persona(
        k_star=4, users_per_persona=40, queries_per_user=150, unseen_users_per_persona=0, seed=7
    )
    np.testing.assert_array_equal(no_unseen.seen.context, small.seen.context)
    assert len(no_unseen.unseen) == 0 and no_unseen.unseen.n_users == 0


def test_sampling_without_replacement_per_user(small):
    per_user = np.sort(small.seen.context.reshape(small.seen.n_users, 150), axis=1)
    assert (np.diff(per_user, axis=1) > 0).all()
    # exactly the pool size: every user sees every statement once
    full = build_persona(k_star=2, users_per_persona=3, queries_per_user=2000, unseen_users_per_persona=0)
    np.testing.assert_array_equal(
        np.sort(full.seen.context.reshape(6, 2000), axis=1), np.tile(np.arange(2000), (6, 1))
    )
    # more queries than statements: with replacement, so repeats must occur
    over = build_persona(k_star=2, users_per_persona=2, queries_per_user=2500, unseen_users_per_persona=0)
    assert (over.seen.comparisons_per_user() == 2500).all()
    assert len(np.unique(over.seen.context[:2500])) < 2500
    assert over.seen.context.min() >= 0 and over.seen.context.max() < 2000


def test_queries_are_uniform_over_the_pool():
    ds = build_persona(k_star=2, users_per_persona=200, queries_per_user=250, unseen_users_per_persona=0)
    counts = np.bincount(ds.seen.context, minlength=2000)  # 100,000 draws, 50 expected per statement
    assert counts.min() > 15 and counts.max() < 95
    first = ds.seen.context.reshape(400, 250)[:, 0]  # the order within a user is random too
    assert abs(first.mean() - 999.5) < 120


# ------------------------------------------------------------------------------------------------------------
def test_shipped_data_is_inside_the_package_and_unchanged():
    root = Path(str(shipped_data_dir()))
    assert root.resolve() == PACKAGE_DATA.resolve()
    assert "/work/shared" not in str(root.resolve())
    pool = load_statements(TABLE7)
    assert Path(pool.source).resolve() == PACKAGE_DATA.resolve()
    assert len(pool) == 6000 and pool.n_rows == 6000
    assert pool.n_shared == pool.n_conflicting == pool.n_repeated_rows == 0
    assert pool.agrees.sum(axis=1).tolist() == [500] * 6
    assert (pool.listed.sum(axis=0) == 1).all()
    assert "Attribution 4.0 International" in (root / "LICENSE").read_text(encoding="utf-8")
    source = (root / "SOURCE.md").read_text(encoding="utf-8")
    assert "84fcc677e52e1902d696c32cd1a6b663e70d3993" in source and "CC BY 4.0" in source
    if SHARED.is_dir():
        for name in [*(f"{p}.jsonl" for p in TABLE7), "LICENSE"]:
            assert (root / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_overlapping_statements_are_one_context_labelled_per_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("shared", True), row("only a", True), row("only a", True)])
    write_jsonl(tmp_path / "b.jsonl", [row("shared", False), row("only b", True)])
    pool = load_statements(["a", "b"], tmp_path)
    assert list(pool.statements) == ["shared", "only a", "only b"]
    assert pool.agrees.tolist() == [[True, True, False], [False, False, True]]
    assert pool.listed.tolist() == [[True, True, False], [True, False, True]]
    assert (pool.n_shared, pool.n_conflicting, pool.n_repeated_rows) == (1, 1, 1)
    ds = build_persona(personas=["a", "b"], users_per_persona=5, queries_per_user=3, data_dir=tmp_path)
    said_yes = ds.seen.chosen == 0
    persona = ds.seen_persona_of_user[ds.seen.user]
    np.testing.assert_array_equal(said_yes, pool.agrees[persona, ds.seen.context])
    assert ds.settings["k_star"] == 2


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"),
    [
        ([row("x", True), "{not json", row("y", False)], 2, None, "invalid JSON"),
        ([row("x", True), "[1, 2]"], 2, None, "expected a JSON object"),
        ([row("x", True), drop(row("y", True), "statement")], 2, "statement", "missing"),
        ([{**row("x", True), "answer_matching_behavior": "Yes"}], 1, "answer_matching_behavior", "' Yes'"),
        ([row("x", True), {**row("z", True), "statement": "  "}], 2, "statement", "empty"),
        ([row("x", True), {**row("y", True), "answer_not_matching_behavior": " Yes"}], 2,
         "answer_not_matching_behavior", "opposite"),
        ([row("x", True), row("y", True), row("x", False)], 3, "answer_matching_behavior", "line 1"),
        ([row("x", True), {**row("x", True), "question": "other?"}], 2, "question", "different question"),
        ([row("x", True), {**row("y", True), "question": row("x", True)["question"]}], 2, "question", "same"),
    ],
)  # fmt: skip
def test_malformed_lines_raise_data_error_with_file_line_and_field(tmp_path, lines, line, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    write_jsonl(tmp_path / "good.jsonl", [row("g", True)])
    with pytest.raises(DataError) as info:
        build_persona(personas=["good", "bad"], users_per_persona=1, queries_per_user=1, data_dir=tmp_path)
    err = info.value
    assert (Path(err.path), err.line, err.field) == (path, line, field)
    assert message in str(err) and "bad.jsonl" in str(err)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        json.dumps(row("x", True)) + "\n\n" + json.dumps(row("y", True))[:-1] + "\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as info:
        load_statements(["p"], tmp_path)
    assert info.value.line == 3


def test_missing_persona_file_and_directory(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("x", True)])
    with pytest.raises(DataError) as info:
        load_statements(["a", "nope"], tmp_path)
    assert "nope.jsonl" in str(info.value) and str(tmp_path) in str(info.value)
    assert "1 persona(s): a" in str(info.value)  # says what the directory has
    with pytest.raises(DataError, match="pass data_dir="):
        load_statements(["interest-in-art", "politically-liberal"])
    with pytest.raises(DataError, match="does not exist"):
        load_statements(["a"], tmp_path / "missing")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no statements"):
        load_statements(["empty"], tmp_path)


def test_argument_errors():
    with pytest.raises(ValueError, match="k_star"):
        build_persona(k_star=7)
    with pytest.raises(ValueError, match="k_star=3"):
        build_persona(k_star=3, personas=TABLE7[:2])
    with pytest.raises(ValueError, match="users_per_persona"):
        build_persona(users_per_persona=0)
    with pytest.raises(ValueError, match="seed"):
        build_persona(seed=-1)
    with pytest.raises(TypeError):
        build_persona(personas="interest-in-art")
    with pytest.raises(ValueError, match="more than once"):
        build_persona(personas=["interest-in-art", "interest-in-art"])
    with pytest.raises(ValueError, match="file stems"):
        load_statements(["../interest-in-art"])


# ------------------------------------------------------------------------------------------------------------
def test_write_read_round_trip(small, tmp_path):
    out = write_persona(small, tmp_path / "ds")
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "seen.parquet",
        "seen_users.parquet",
        "statements.parquet",
        "unseen.parquet",
        "unseen_users.parquet",
    ]
    back = read_persona(out)
    for split in ("seen", "unseen"):
        a, b = getattr(small, split), getattr(back, split)
        for name in ("user", "context", "chosen", "rejected", "user_ids", "contexts", "items"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(b, name).dtype == getattr(a, name).dtype
        np.testing.assert_array_equal(
            getattr(small, f"{split}_persona_of_user"), getattr(back, f"{split}_persona_of_user")
        )
    np.testing.assert_array_equal(back.pool.agrees, small.pool.agrees)
    np.testing.assert_array_equal(back.pool.statements, small.pool.statements)
    assert back.personas == small.personas and back.settings == small.settings
    # rewriting in place works and leaves no temporary files
    write_persona(small, out)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_read_rejects_incomplete_or_corrupt_directories(small, tmp_path):
    out = write_persona(small, tmp_path / "ds")
    table = pq.read_table(out / "seen.parquet")
    chosen = table.column("chosen").to_numpy().copy()
    chosen[5] = 1 - chosen[5]
    pq.write_table(table.set_column(2, "chosen", pa.array(chosen)), out / "seen.parquet")
    with pytest.raises(DataError) as info:
        read_persona(out)
    assert (Path(info.value.path).name, info.value.line, info.value.field) == ("seen.parquet", 6, "chosen")

    context = table.column("context").to_numpy().copy()
    context[2] = 10**6
    pq.write_table(table.set_column(1, "context", pa.array(context)), out / "seen.parquet")
    with pytest.raises(DataError, match="out of range") as info:
        read_persona(out)
    assert (info.value.line, info.value.field) == (3, "context")

    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest"):
        read_persona(out)
