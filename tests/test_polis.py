"""The Polis reader: counts on the shipped conversations checked against plain csv code, last vote wins,
errors located by file/line/field, every skipped vote counted, templates, the CLI and the docs' commands."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.data import read_preferences
from pluralign.datasets.polis import (
    ATTRIBUTION,
    ENCODINGS,
    RowTemplate,
    find_conversations,
    read_polis,
    write_polis,
)
from pluralign.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
POLIS = Path(os.environ.get("PLURALIGN_POLIS_DIR", ROOT.parent / "shared" / "data" / "polis"))
needs_polis = pytest.mark.skipif(
    not (POLIS / "SOURCE.md").is_file(), reason=f"the Polis data is not at {POLIS} (set PLURALIGN_POLIS_DIR)"
)
FIXED = {"participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ========================================================================================================
# the shipped conversations, against an independent count
# ========================================================================================================
def source_table() -> dict[str, dict[str, int]]:
    """SOURCE.md's table: conversation -> users, statements, votes, groups."""
    out = {}
    for line in (POLIS / "SOURCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(",", "").isdigit():
            users, statements, votes, groups = (int(c.replace(",", "")) for c in cells[1:])
            out[cells[0]] = {"users": users, "statements": statements, "votes": votes, "groups": groups}
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def independent_count(folder: Path) -> dict[str, int]:
    """Plain csv code: counts from participants-votes.csv and comments.csv, all and without moderated-out."""
    participants = read_rows(folder / "participants-votes.csv")
    columns = [c for c in participants[0] if c not in FIXED]
    moderated = {r["comment-id"]: int(r["moderated"]) for r in read_rows(folder / "comments.csv")}
    kept = [c for c in columns if moderated[c] != -1]
    voted = [[c for c in columns if r[c] in ("1", "-1")] for r in participants]
    voted_kept = [[c for c in cs if moderated[c] != -1] for cs in voted]
    groups = {
        r["group-id"]
        for r in participants
        if r["group-id"] != "" and any(r[c] in ("1", "-1") for c in columns)
    }
    return {
        "users": sum(bool(v) for v in voted),
        "statements": len(columns),
        "votes": sum(map(len, voted)),
        "groups": len(groups),
        "users_kept": sum(bool(v) for v in voted_kept),
        "votes_kept": sum(map(len, voted_kept)),
        "agree_kept": sum(r[c] == "1" for r in participants for c in kept),
        "passes_kept": sum(r[c] == "0" for r in participants for c in kept),
        "moderated_out_votes": sum(r[c] != "" for r in participants for c in columns if moderated[c] == -1),
        "participants": len(participants),
    }


@pytest.fixture(scope="module")
def shipped():
    if not (POLIS / "SOURCE.md").is_file():
        pytest.skip(f"the Polis data is not at {POLIS}")
    return {
        "default": read_polis(POLIS),
        "all": read_polis(POLIS, include_moderated=True),
        "votes": read_polis(POLIS, include_moderated=True, votes_from="votes.csv"),
    }


@needs_polis
def test_reader_matches_an_independent_count_and_the_source_table(shipped):
    table = source_table()
    assert len(table) == 7
    everything, default = shipped["all"].report, shipped["default"].report
    assert [c.name for c in everything.conversations] == sorted(table)
    for conv, kept in zip(everything.conversations, default.conversations, strict=True):
        expected = independent_count(POLIS / conv.name)
        for key in ("users", "statements", "votes", "groups"):
            assert expected[key] == table[conv.name][key], (conv.name, key)
        assert conv.users == expected["users"]
        assert conv.statements_voted == expected["statements"]
        assert conv.rows == conv.agree + conv.disagree == expected["votes"]
        assert conv.groups == expected["groups"]
        assert conv.participants == kept.participants == expected["participants"]
        # the default drops moderated-out statements, and says how many votes that was
        assert kept.users == expected["users_kept"]
        assert kept.rows == expected["votes_kept"] and kept.agree == expected["agree_kept"]
        assert kept.skipped_votes["moderated_out"] == expected["moderated_out_votes"]
        assert kept.skipped_votes["pass"] == expected["passes_kept"]
        assert kept.final_votes == kept.rows + sum(kept.skipped_votes.values())
        assert kept.participants == kept.users + sum(kept.skipped_users.values())
        assert kept.statements == kept.statements_with_rows + sum(kept.skipped_statements.values())
    rows = shipped["default"].rows
    assert len(rows) == default.totals()["rows"] == sum(c.rows for c in default.conversations)
    assert rows["user_id"].str.split("/").str[0].eq(rows["conversation"]).all()


def last_votes(folder: Path) -> dict[tuple[str, str], str]:
    """The last vote per (voter, comment) from votes.csv, with plain Python (stable sort by timestamp)."""
    events = sorted(read_rows(folder / "votes.csv"), key=lambda r: int(r["timestamp"]))
    final = {}
    for event in events:
        final[event["voter-id"], event["comment-id"]] = event["vote"]
    return final


@needs_polis
def test_last_vote_wins_from_votes_csv_equals_participants_votes(shipped):
    for conv in shipped["all"].report.conversations:
        folder = POLIS / conv.name
        matrix = {
            (r["participant"], c): r[c]
            for r in read_rows(folder / "participants-votes.csv")
            for c in r
            if c not in FIXED and r[c] != ""
        }
        assert last_votes(folder) == matrix, conv.name
    key = ["user_id", "comment_id"]
    from_votes = shipped["votes"].rows.sort_values(key).reset_index(drop=True)
    from_matrix = shipped["all"].rows.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(from_votes, from_matrix)
    for via_votes, via_matrix in zip(
        shipped["votes"].report.conversations, shipped["all"].report.conversations, strict=True
    ):
        assert via_votes.votes_from == "votes.csv" and via_matrix.votes_from == "participants-votes.csv"
        assert via_votes.final_votes == via_matrix.final_votes
        assert via_votes.vote_events == via_votes.final_votes + via_votes.superseded
        assert via_votes.superseded > 0 and via_matrix.superseded == 0
    assert shipped["votes"].users["group_id"].isna().all()  # votes.csv has no opinion groups
    assert shipped["all"].users["group_id"].notna().any()


@needs_polis
def test_rows_attribution_and_users_of_the_shipped_data(shipped):
    data = shipped["default"]
    attribution = data.attribution()
    assert attribution["license"] == "CC BY 4.0"
    assert attribution["statement"].startswith("Data was gathered using the Polis software")
    source = (POLIS / "SOURCE.md").read_text(encoding="utf-8")
    assert attribution["statement"].split(". The data")[0] in source.replace("\n  ", " ")
    upstream = (POLIS / "README.upstream.md").read_text(encoding="utf-8")
    assert len(attribution["links"]) == 7 and all(link in upstream for link in attribution["links"])
    prefs = data.to_preferences()
    assert prefs.meta["polis"]["attribution"] == attribution
    assert len(prefs) == len(data.rows) and prefs.n_users == len(data.users)
    assert set(prefs.items) == {"Yes", "No"}
    # users: one line per user with rows, counts consistent with the rows
    per_user = data.rows.groupby("user_id").size()
    users = data.users.set_index("user_id")
    assert per_user.reindex(users.index).tolist() == users["n_votes"].tolist()
    assert (users["n_votes"] == users["n_agree"] + users["n_disagree"]).all()
    assert str(users["group_id"].dtype) == "Int64"


# ========================================================================================================
# small fixture exports
# ========================================================================================================
COMMENTS = [
    ["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees", "moderated", "comment-body"],
    ["1", "d", "0", "0", "3", "1", "1", "Bus lanes should be free."],
    ["2", "d", "1", "1", "1", "1", "-1", "Buy cheap watches here."],
    ["3", "d", "2", "0", "1", "2", "0", 'A statement with a "quote", a comma\nand two lines. '],
    ["4", "d", "3", "2", "1", "0", "1", "   "],
    ["5", "d", "4", "2", "0", "0", "1", "Nobody votes on this one."],
]
PARTICIPANTS_HEADER = ["participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"]
#: participant -> (group-id, {comment-id: final vote})
MATRIX = {
    0: ("0", {0: 1, 1: -1, 2: -1, 3: 1}),
    1: ("1", {0: -1, 2: 0}),
    2: ("", {0: 0}),
    3: ("0", {1: 1}),
    4: ("1", {0: 1, 2: 1}),
}
#: vote events (timestamp, comment-id, voter-id, vote), not in time order; last per pair = MATRIX
EVENTS = [
    (200, 0, 0, 1),
    (100, 0, 0, -1),  # earlier re-vote below a later one: the timestamp decides, not the line
    (110, 1, 0, -1),
    (120, 2, 0, -1),
    (130, 3, 0, 1),
    (140, 0, 1, -1),
    (150, 2, 1, 0),
    (160, 0, 2, 0),
    (170, 1, 3, 1),
    (180, 0, 4, 1),
    (300, 2, 4, -1),
    (300, 2, 4, 1),  # same timestamp: the later line wins
]
SUMMARY = [
    ["topic", "Transit in Springfield"],
    ["url", "https://pol.is/example"],
    ["conversation-description", "How should we, as a city, fund transit?"],
]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def participants_rows() -> list[list[str]]:
    ids = [str(r[2]) for r in COMMENTS[1:] if r[2] != "4"]  # comment 4 has no column, as in real exports
    rows = [PARTICIPANTS_HEADER + ids]
    for participant, (group, votes) in MATRIX.items():
        values = list(votes.values())
        counts = [0, len(values), values.count(1), values.count(-1)]
        rows.append([str(participant), group, *map(str, counts), *(str(votes.get(int(c), "")) for c in ids)])
    return rows


def votes_rows() -> list[list[str]]:
    header = ["timestamp", "datetime", "comment-id", "voter-id", "vote"]
    return [header, *([str(t), "d", str(c), str(v), str(x)] for t, c, v, x in EVENTS)]


def export(folder: Path, *, participants: bool = True, votes: bool = True) -> Path:
    write_csv(folder / "comments.csv", COMMENTS)
    write_csv(folder / "summary.csv", SUMMARY)
    if participants:
        write_csv(folder / "participants-votes.csv", participants_rows())
    if votes:
        write_csv(folder / "votes.csv", votes_rows())
    return folder


def test_every_vote_has_one_fate_on_a_fixture(tmp_path):
    data = read_polis(export(tmp_path / "transit"))
    (conv,) = data.report.conversations
    # rows: p0 c0 agree, p0 c2 disagree, p1 c0 disagree, p4 c0 agree, p4 c2 agree
    assert data.rows[["user_id", "comment_id", "vote"]].values.tolist() == [
        ["transit/0", 0, 1],
        ["transit/0", 2, -1],
        ["transit/1", 0, -1],
        ["transit/4", 0, 1],
        ["transit/4", 2, 1],
    ]
    assert (conv.rows, conv.agree, conv.disagree, conv.final_votes) == (5, 3, 2, 10)
    assert conv.skipped_votes == {"moderated_out": 2, "empty_statement": 1, "pass": 2, "below_min_votes": 0}
    assert conv.skipped_users == {"no_votes": 2, "below_min_votes": 0}
    assert conv.skipped_statements == {"moderated_out": 1, "empty_text": 1, "no_rows": 1}
    assert (conv.participants, conv.users, conv.statements, conv.statements_voted) == (5, 3, 5, 4)
    assert conv.statements_with_rows == 2 and conv.groups == 2 and conv.has_groups
    assert data.users[["user_id", "group_id", "n_votes", "n_agree", "n_disagree", "n_pass"]].astype(
        object
    ).values.tolist() == [
        ["transit/0", 0, 2, 1, 1, 0],
        ["transit/1", 1, 1, 0, 1, 1],
        ["transit/4", 1, 2, 2, 0, 0],
    ]
    statements = data.statements.set_index("comment_id")
    assert statements["skipped"].tolist() == ["", "moderated_out", "", "empty_text", "no_rows"]
    assert statements.loc[2, "text"] == 'A statement with a "quote", a comma\nand two lines.'  # stripped

    moderated = read_polis(tmp_path / "transit", include_moderated=True).report.conversations[0]
    assert (moderated.rows, moderated.users, moderated.skipped_votes["moderated_out"]) == (7, 4, 0)
    assert moderated.skipped_statements["moderated_out"] == 0

    strict = read_polis(tmp_path / "transit", min_votes=2)
    conv = strict.report.conversations[0]
    assert (conv.rows, conv.users) == (4, 2)
    assert conv.skipped_votes["below_min_votes"] == 1
    assert conv.skipped_users == {"no_votes": 2, "below_min_votes": 1}
    assert "transit/1" not in set(strict.rows["user_id"]) | set(strict.users["user_id"])
    table = strict.report.table()
    assert table == [
        {
            "conversation": "transit",
            "users": 2,
            "statements": 2,
            "rows": 4,
            "agree": 0.75,
            "passes": 2,
            "moderated_out": 2,
            "users_skipped": 3,
        }
    ]


def test_last_vote_wins_on_a_fixture(tmp_path):
    export(tmp_path / "transit")
    matrix = read_polis(tmp_path / "transit", votes_from="participants-votes.csv")
    events = read_polis(tmp_path / "transit", votes_from="votes.csv")
    pd.testing.assert_frame_equal(events.rows, matrix.rows)
    conv = events.report.conversations[0]
    assert (conv.vote_events, conv.final_votes, conv.superseded, conv.ties_broken_by_line) == (12, 10, 2, 1)
    assert not conv.has_groups and events.users["group_id"].isna().all()
    # without participants-votes.csv, votes.csv is used
    shutil.copytree(tmp_path / "transit", tmp_path / "only-votes" / "transit")
    (tmp_path / "only-votes" / "transit" / "participants-votes.csv").unlink()
    auto = read_polis(tmp_path / "only-votes")
    assert auto.report.conversations[0].votes_from == "votes.csv"
    assert auto.rows["vote"].tolist() == matrix.rows["vote"].tolist()


def test_a_folder_of_conversations(tmp_path, monkeypatch):
    export(tmp_path / "b-second")
    export(tmp_path / "a-first", votes=False)
    (tmp_path / "notes").mkdir()  # no export file: ignored, and listed as such
    (tmp_path / "README.md").write_text("not a conversation")
    data = read_polis(tmp_path)
    assert [c.name for c in data.report.conversations] == ["a-first", "b-second"]
    assert data.report.ignored == (str(tmp_path / "notes"),)
    assert data.metadata()["ignored_dirs"] == [str(tmp_path / "notes")]
    assert data.rows["user_id"].str.startswith(("a-first/", "b-second/")).all()
    assert data.users["user_id"].is_unique and len(data.users) == 6
    assert data.report.totals()["rows"] == 10
    assert data.attribution()["links"] == ["https://pol.is/example"]  # not an openData name: its pol.is URL
    assert find_conversations(tmp_path / "a-first") == ([tmp_path / "a-first"], [])
    monkeypatch.chdir(tmp_path / "a-first")  # "." is named after the folder it is
    assert read_polis(".").rows["user_id"].str.startswith("a-first/").all()


# --------------------------------------------------------------------------------------------------------
def expect_error(
    folder: Path,
    file: str,
    line: int | None,
    field: str | None,
    match: str,
    *,
    read: Path | None = None,
    **options,
):
    """Reading ``read`` (default: ``folder``) fails at ``folder/file``, ``line``, ``field``."""
    with pytest.raises(DataError, match=match) as info:
        read_polis(folder if read is None else read, **options)
    error = info.value
    assert Path(error.path) == folder / file
    assert (error.line, error.field) == (line, field)
    where = f"{folder / file}" + (f":{line}" if line is not None else "")
    assert str(error).startswith(where + (f": field '{field}'" if field else ""))
    return error


def test_missing_columns_are_located(tmp_path):
    folder = export(tmp_path / "c")
    write_csv(folder / "comments.csv", [row[:-1] for row in COMMENTS])
    expect_error(folder, "comments.csv", 1, "comment-body", "missing column")
    export(folder)
    write_csv(folder / "votes.csv", [row[:4] for row in votes_rows()])
    expect_error(folder, "votes.csv", 1, "vote", "missing column", votes_from="votes.csv")
    rows = participants_rows()
    write_csv(folder / "participants-votes.csv", [[c for i, c in enumerate(r) if i != 1] for r in rows])
    expect_error(folder, "participants-votes.csv", 1, "group-id", "missing column")


def test_bad_values_are_located_by_file_line_field(tmp_path):
    folder = export(tmp_path / "c")
    bad = votes_rows()
    bad[3][4] = "yes"
    write_csv(folder / "votes.csv", bad)
    expect_error(
        folder,
        "votes.csv",
        4,
        "vote",
        r"must be 1 \(agree\), -1 \(disagree\) or 0 \(pass\), got 'yes'",
        votes_from="votes.csv",
    )
    bad[3][4] = "2"
    write_csv(folder / "votes.csv", bad)
    expect_error(folder, "votes.csv", 4, "vote", "got '2'", votes_from="votes.csv")
    bad = votes_rows()
    bad[5][2] = "99"
    write_csv(folder / "votes.csv", bad)
    expect_error(
        folder,
        "votes.csv",
        6,
        "comment-id",
        r"unknown comment-id 99 \(not in comments.csv\)",
        votes_from="votes.csv",
    )
    bad[5][2] = "x1"
    write_csv(folder / "votes.csv", bad)
    expect_error(folder, "votes.csv", 6, "comment-id", "must be an integer, got 'x1'", votes_from="votes.csv")

    rows = participants_rows()
    rows[3][7] = "a"  # participant 2, comment 1
    write_csv(folder / "participants-votes.csv", rows)
    expect_error(folder, "participants-votes.csv", 4, "1", "got 'a'")
    rows = participants_rows()
    rows[0][-1] = "99"
    write_csv(folder / "participants-votes.csv", rows)
    expect_error(folder, "participants-votes.csv", 1, "99", "unknown comment-id 99")
    rows[0][-1] = "votes"
    write_csv(folder / "participants-votes.csv", rows)
    expect_error(folder, "participants-votes.csv", 1, "votes", "neither a participants-votes column")
    rows = participants_rows()
    rows[2][0] = "0"
    write_csv(folder / "participants-votes.csv", rows)
    expect_error(folder, "participants-votes.csv", 3, "participant", "participant 0 appears twice")
    rows = participants_rows()
    rows[2][1] = "one"
    write_csv(folder / "participants-votes.csv", rows)
    expect_error(folder, "participants-votes.csv", 3, "group-id", "must be an integer, got 'one'")

    export(folder)
    comments = [list(r) for r in COMMENTS]
    comments[4][6] = "2"  # after the two-line record: physical line 6
    write_csv(folder / "comments.csv", comments)
    expect_error(folder, "comments.csv", 6, "moderated", r"must be 1 \(accepted\), 0 \(unmoderated\) or -1")
    comments = [list(r) for r in COMMENTS]
    comments[5][2] = "0"
    write_csv(folder / "comments.csv", comments)
    expect_error(folder, "comments.csv", 7, "comment-id", r"comment-id 0 appears twice \(first at line 2\)")
    comments[5][2] = "4"
    write_csv(folder / "comments.csv", [*comments, ["6", "d", "5", "0", "0"]])
    expect_error(folder, "comments.csv", 8, None, "has 5 fields but the header has 8")
    (folder / "comments.csv").write_bytes(b"comment-id,moderated,comment-body\n0,1,caf\xe9\n")
    expect_error(folder, "comments.csv", 2, None, "not valid UTF-8")


def test_missing_files_and_folders(tmp_path):
    folder = export(tmp_path / "c")
    (folder / "summary.csv").unlink()
    expect_error(folder, "summary.csv", None, None, "no such file")
    export(folder, participants=False)
    (folder / "participants-votes.csv").unlink()
    (folder / "votes.csv").unlink()
    expect_error(folder, "participants-votes.csv", None, None, "needs participants-votes.csv or votes.csv")
    export(folder, votes=False)
    expect_error(folder, "votes.csv", None, None, "no such file", votes_from="votes.csv")
    write_csv(folder / "summary.csv", SUMMARY[1:])
    expect_error(folder, "summary.csv", None, "topic", r"no 'topic' line \(the template uses \{topic\}\)")
    write_csv(folder / "summary.csv", [*SUMMARY, ["topic", "again"]])
    expect_error(folder, "summary.csv", 4, "key", "key 'topic' appears twice")
    # a subfolder with votes but no comments.csv is an error, not skipped
    parent = tmp_path / "many"
    export(parent / "ok")
    write_csv(parent / "broken" / "votes.csv", votes_rows())
    expect_error(parent / "broken", "comments.csv", None, None, "needs comments.csv", read=parent)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no Polis export here"):
        read_polis(empty)
    with pytest.raises(DataError, match="no such directory"):
        read_polis(tmp_path / "absent")


# ========================================================================================================
# row encodings
# ========================================================================================================
def test_encodings_and_templates(tmp_path):
    export(tmp_path / "transit")
    question = read_polis(tmp_path / "transit").rows
    first = question.iloc[0]
    assert (
        first["prompt"] == 'On "Transit in Springfield": do you agree with the following statement?\n'
        '"Bus lanes should be free."'
    )
    assert (first["chosen"], first["rejected"]) == ("Yes", "No")  # p0 agreed with c0
    disagree = question.iloc[1]  # p0 disagreed with c2
    assert (disagree["chosen"], disagree["rejected"]) == ("No", "Yes")
    assert question["prompt"].nunique() == 2  # one context per statement

    statement = read_polis(tmp_path / "transit", template="statement").rows
    assert statement["prompt"].unique().tolist() == ['On "Transit in Springfield": where do you stand?']
    assert statement.iloc[1]["chosen"].startswith("I disagree: A statement with")
    assert statement.iloc[1]["rejected"].startswith("I agree: A statement with")
    assert (statement["chosen"] != statement["rejected"]).all()

    custom = RowTemplate(
        prompt="[{conversation} #{comment_id}] {description} {statement}", agree="+", disagree="-"
    )
    rows = read_polis(tmp_path / "transit", template=custom).rows
    assert (
        rows.iloc[0]["prompt"]
        == "[transit #0] How should we, as a city, fund transit? Bus lanes should be free."
    )
    assert set(rows["chosen"]) == {"+", "-"}

    for kwargs, match in [
        ({"prompt": "{nope} {statement}", "agree": "Yes", "disagree": "No"}, r"uses \{nope\}"),
        ({"prompt": "{topic}", "agree": "Yes", "disagree": "No"}, "statement must appear"),
        ({"prompt": "{topic}", "agree": "I agree: {statement}", "disagree": "No"}, "statement must appear"),
        ({"prompt": "{statement}", "agree": "Yes", "disagree": "Yes"}, "are the same"),
        ({"prompt": "{statement", "agree": "Yes", "disagree": "No"}, "not a valid format string"),
        ({"prompt": "{statement}", "agree": " ", "disagree": "No"}, "agree response template is empty"),
        ({"prompt": "{} {statement}", "agree": "Yes", "disagree": "No"}, r"uses \{\}"),
    ]:
        with pytest.raises(ValueError, match=match):
            RowTemplate(**kwargs)
    clash = RowTemplate(prompt="{statement}", agree="{topic}", disagree="Transit in Springfield")
    with pytest.raises(
        ValueError, match=r"comments\.csv:2: the agree and disagree templates give the same text"
    ):
        read_polis(tmp_path / "transit", template=clash)
    empty_description = tmp_path / "no-description"
    export(empty_description)
    write_csv(empty_description / "summary.csv", [*SUMMARY[:2], ["conversation-description", ""]])
    blank = RowTemplate(prompt="{statement}", agree="{description}", disagree="No")
    with pytest.raises(ValueError, match=r"comments\.csv:2: a response template gives an empty text"):
        read_polis(empty_description, template=blank)
    with pytest.raises(ValueError, match="cannot be filled in"):
        read_polis(
            tmp_path / "transit", template=RowTemplate(prompt="{statement:d}", agree="Y", disagree="N")
        )
    with pytest.raises(ValueError, match="unknown encoding 'yesno'"):
        read_polis(tmp_path / "transit", template="yesno")
    with pytest.raises(ValueError, match="min_votes must be an integer >= 1"):
        read_polis(tmp_path / "transit", min_votes=0)
    assert set(ENCODINGS) == {"question", "statement"}


def test_write_polis_files(tmp_path):
    data = read_polis(export(tmp_path / "transit"))
    paths = write_polis(data, tmp_path / "out" / "rows.csv")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"rows.csv", "rows.users.csv", "rows.meta.json"}
    prefs = read_preferences(paths["rows"])
    assert len(prefs) == 5 and prefs.n_users == 3
    users = pd.read_csv(paths["users"], dtype={"group_id": "Int64"})
    assert users.columns.tolist() == [
        "user_id", "conversation", "participant", "group_id", "n_votes", "n_agree", "n_disagree", "n_pass"
    ]  # fmt: skip
    assert users["group_id"].tolist() == [0, 1, 1]
    meta = json.loads(paths["metadata"].read_text())
    assert meta["attribution"]["statement"] == ATTRIBUTION
    assert meta["files"] == {"rows": "rows.csv", "users": "rows.users.csv"}
    assert meta["skipped"]["votes"] == {
        "moderated_out": 2, "empty_statement": 1, "pass": 2, "below_min_votes": 0, "superseded": 0
    }  # fmt: skip
    assert meta["options"]["template"]["agree"] == "Yes" and meta["options"]["min_votes"] == 1
    assert set(meta["sources"][0]["sha256"]) == {"comments.csv", "summary.csv", "participants-votes.csv"}


# ========================================================================================================
# the CLI, and the docs
# ========================================================================================================
@needs_polis
def test_cli_end_to_end_and_the_rows_train(tmp_path):
    conversation = shutil.copytree(POLIS / "15-per-hour-seattle", tmp_path / "data" / "15-per-hour-seattle")
    out = tmp_path / "rows.jsonl"
    result = invoke("datasets", "polis", conversation, "--out", out, "--min-votes", 2, "--json")
    assert result.exit_code == 0, result.output
    (line,) = json.loads(result.stdout)
    expected = read_polis(conversation, min_votes=2)
    assert line == expected.report.table()[0]
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "data",
        "rows.jsonl",
        "rows.meta.json",
        "rows.users.csv",
    ]
    prefs = read_preferences(out)
    assert len(prefs) == line["rows"] and prefs.n_users == line["users"]
    meta = json.loads((tmp_path / "rows.meta.json").read_text())
    assert meta["attribution"]["links"] == ["https://compdemocracy.org/case-studies/2014-seattle-15-per-hour"]
    assert meta["conversations"][0]["skipped_users"]["below_min_votes"] > 0
    table = invoke("datasets", "polis", conversation, "--out", out)
    assert table.exit_code == 0 and "15-per" in table.stdout and "attribution: CC BY 4.0" in table.stdout

    run = tmp_path / "run"
    result = invoke("train", out, "--out", run, "--epochs", 3, "--k", 2, "--json")
    assert result.exit_code == 0, result.output
    assert (run / "model").is_dir()
    evaluation = invoke("eval", run, out, "--json")
    assert evaluation.exit_code == 0, evaluation.output
    assert 0.0 <= json.loads(evaluation.stdout)[0]["accuracy"] <= 1.0


def test_cli_errors(tmp_path):
    folder = export(tmp_path / "c")
    bad = votes_rows()
    bad[2][4] = "maybe"
    write_csv(folder / "votes.csv", bad)
    result = invoke("datasets", "polis", folder, "--out", tmp_path / "r.jsonl", "--votes-from", "votes.csv")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{folder / 'votes.csv'}:3: field 'vote'" in result.output
    result = invoke("datasets", "polis", folder, "--out", tmp_path / "r.jsonl", "--template", "{topic}")
    assert result.exit_code == 2 and "statement must appear" in result.output
    assert not (tmp_path / "r.jsonl").exists()
    result = invoke(
        "datasets",
        "polis",
        folder,
        "--out",
        tmp_path / "r.jsonl",
        "--encoding",
        "statement",
        "--agree",
        "+{statement}",
    )
    assert result.exit_code == 0, result.output
    assert read_preferences(tmp_path / "r.jsonl").items.tolist()[0].startswith("+")


DOC = ROOT / "docs" / "datasets" / "polis.md"


def doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@needs_polis
def test_every_command_in_the_docs_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    os.symlink(POLIS, tmp_path / "shared" / "data" / "polis")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the docs use ../shared/data/polis, as from the repository
    commands = [
        line[2:] for block in doc_blocks("console") for line in block.splitlines() if line.startswith("$ ")
    ]
    assert len(commands) >= 4
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "pluralign", command
        result = runner.invoke(app, args[1:], catch_exceptions=False)
        assert result.exit_code == 0, (command, result.output)
    python = doc_blocks("python")
    assert python
    for block in python:
        exec(compile(block, str(DOC), "exec"), {})


@needs_polis
def test_the_docs_table_is_what_the_reader_gives(shipped):
    text = DOC.read_text(encoding="utf-8")
    for line in shipped["default"].report.table():
        cells = [line["conversation"], *(f"{line[k]:,}" for k in ("users", "statements", "rows"))]
        cells += [f"{line['passes']:,}", f"{line['moderated_out']:,}", f"{line['users_skipped']:,}"]
        assert "| " + " | ".join(cells) + " |" in text, cells
    assert ATTRIBUTION in re.sub(r"\n(> ?)?", " ", text)  # the full statement, across the quote's lines
    for link in shipped["default"].attribution()["links"]:
        assert link in text
    everything = shipped["all"].report.totals()
    assert f"{everything['users']:,} users, {everything['rows']:,} rows" in text


@needs_polis
def test_the_error_messages_in_the_docs_are_the_readers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("data/polis/brexit-consensus")
    shown = [line.removeprefix("error: ") for line in doc_blocks("text")[0].splitlines() if line]
    assert len(shown) == 3

    def message(*options) -> str:
        result = invoke("datasets", "polis", folder, "--out", "rows.jsonl", *options)
        assert result.exit_code == 2
        return " ".join(result.output.removeprefix("error: ").split())  # undo the console's line wrapping

    shutil.copytree(POLIS / folder.name, folder)
    votes = read_rows(folder / "votes.csv")
    votes[2]["vote"] = "yes"
    with open(folder / "votes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(votes[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(votes)
    assert message("--votes-from", "votes.csv") == shown[0]
    matrix = (folder / "participants-votes.csv").read_text(encoding="utf-8").split("\n", 1)
    (folder / "participants-votes.csv").write_text(matrix[0] + ",999\n" + matrix[1].replace("\n", ",\n"))
    assert message() == shown[1]
    comments = read_rows(folder / "comments.csv")
    write_csv(folder / "comments.csv", [list(comments[0])[:-1], *([*r.values()][:-1] for r in comments)])
    assert message() == shown[2]
