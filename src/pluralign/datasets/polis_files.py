"""The four files of a Polis export, parsed and checked: every problem is a DataError with file, line, field.

A Polis conversation export (https://github.com/compdemocracy/openData) is a folder of CSV files:

- ``comments.csv``: ``timestamp, datetime, comment-id, author-id, agrees, disagrees, moderated,
  comment-body``; ``moderated`` is 1 (accepted), 0 (not moderated yet) or -1 (moderated out).
- ``votes.csv``: ``timestamp, datetime, comment-id, voter-id, vote``, one line per vote event (re-votes
  included); ``vote`` is 1 (agree), -1 (disagree) or 0 (pass).
- ``participants-votes.csv``: ``participant, group-id, n-comments, n-votes, n-agree, n-disagree``, then one
  column per comment id holding the participant's final vote (1 / -1 / 0), empty where there is none.
- ``summary.csv``: ``key,value`` lines without a header (``topic``, ``url``, ``conversation-description``...).

Only the columns pluralign uses are required (the others, e.g. ``datetime`` or ``author-id``, may be absent).
Lines are physical, 1-based lines with the header as line 1; a record whose quoted text spans several lines
is reported at its first line. Integers must be written as integers (``12``, ``-1``), as Polis writes them.
This module is the parsing layer of :mod:`pluralign.datasets.polis`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pluralign.data.raw import csv_records, decode_utf8
from pluralign.errors import DataError

__all__ = [
    "COMMENTS",
    "PARTICIPANTS",
    "PARTICIPANT_COLUMNS",
    "SUMMARY",
    "VOTES",
    "Comments",
    "CsvTable",
    "FinalVotes",
    "read_comments",
    "read_csv_table",
    "read_participants_votes",
    "read_summary",
    "read_votes",
]

COMMENTS = "comments.csv"
VOTES = "votes.csv"
PARTICIPANTS = "participants-votes.csv"
SUMMARY = "summary.csv"

#: the fixed columns of participants-votes.csv; every other column is a comment id
PARTICIPANT_COLUMNS = ("participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree")
VOTE_VALUES = "must be 1 (agree), -1 (disagree) or 0 (pass)"
INTEGER = r"-?[0-9]+"


@dataclass(frozen=True)
class CsvTable:
    """A CSV file as read: the header, each column as an array of strings, and each record's first line."""

    path: str
    header: list[str]
    columns: dict[str, np.ndarray]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class Comments:
    """The statements of a conversation, in file order: ids, moderation state and (stripped) texts."""

    path: str
    ids: np.ndarray  # int64
    moderated: np.ndarray  # int8: 1, 0 or -1
    texts: np.ndarray  # object (str), leading/trailing whitespace removed
    lines: np.ndarray

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Index into this table of each id (-1 where the id is unknown)."""
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        where = np.searchsorted(sorted_ids, ids)
        where = np.minimum(where, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[where] == ids) if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
        return np.where(found, order[where], -1)


@dataclass(frozen=True)
class FinalVotes:
    """One final vote per (participant, statement): parallel arrays, ordered by participant then file order.

    ``statement`` indexes :class:`Comments`. ``participants`` lists every participant of the source (also
    those without any vote) and ``group_ids`` their Polis opinion group (-1: not clustered, or unknown when
    the votes came from votes.csv). ``superseded`` counts earlier vote events replaced by a later one and
    ``ties`` the (participant, statement) pairs whose last two events share a timestamp but differ in vote
    (the later line wins); both are 0 for participants-votes.csv.
    """

    path: str
    participant: np.ndarray  # int64, participant id of each vote
    statement: np.ndarray  # int64, index into Comments
    vote: np.ndarray  # int8
    participants: np.ndarray  # int64, sorted
    group_ids: np.ndarray  # int64, -1 where none
    has_groups: bool
    events: int
    superseded: int = 0
    ties: int = 0


# ========================================================================================================
# CSV
# ========================================================================================================
def read_csv_table(path: Path, required: tuple[str, ...], *, header: bool = True) -> CsvTable:
    """Read a CSV file exactly (quoted newlines, BOM) with the first line of each record.

    Blank lines are skipped. ``required`` columns must be present; a record with more or fewer fields than
    the header is an error. Without ``header`` the columns are named ``0, 1, ...`` by position and records
    must have exactly ``len(required)`` fields.
    """
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", path=where) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=where) from exc
    text = decode_utf8(raw, where)
    records, starts = csv_records(text, where)
    if header:
        if not records:
            raise DataError("the file is empty (expected a header line)", path=where)
        names, body, lines = records[0], records[1:], starts[1:]
        for name in names:
            if names.count(name) > 1:
                raise DataError("column appears more than once", path=where, line=starts[0], field=name)
        for name in required:
            if name not in names:
                found = ", ".join(names) or "none"
                raise DataError(
                    f"missing column (columns found: {found})", path=where, line=starts[0], field=name
                )
    else:
        names, body, lines = list(required), records, starts
    width = len(names)
    for record, line in zip(body, lines, strict=True):
        if len(record) != width:
            expected = f"the header has {width}" if header else f"expected {width} ({','.join(names)})"
            raise DataError(f"has {len(record)} fields but {expected}", path=where, line=line)
    matrix = np.array(body, dtype=object).reshape(len(body), width)
    columns = {name: matrix[:, i] for i, name in enumerate(names)}
    return CsvTable(where, names, columns, np.asarray(lines, dtype=np.int64))


def _integers(table: CsvTable, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The column (or its ``rows``) as int64; the first value that is not an integer is a DataError."""
    values = table.columns[name] if rows is None else table.columns[name][rows]
    lines = table.lines if rows is None else table.lines[rows]
    text = pd.Series(values, dtype=object).astype(str)
    ok = text.str.fullmatch(INTEGER).to_numpy(dtype=bool)
    if not ok.all():
        row = int(np.argmin(ok))
        raise DataError(
            f"must be an integer, got {str(values[row])!r}", path=table.path, line=int(lines[row]), field=name
        )
    try:
        return np.asarray(values, dtype=str).astype(np.int64) if len(values) else np.zeros(0, np.int64)
    except OverflowError as exc:
        raise DataError(f"integer out of range ({exc})", path=table.path, field=name) from exc


def _first_repeat(values: np.ndarray) -> int | None:
    """Row of the first value that repeats an earlier one (None when all differ)."""
    repeated = pd.Series(values).duplicated().to_numpy()
    return int(np.argmax(repeated)) if repeated.any() else None


# ========================================================================================================
# the four files
# ========================================================================================================
def read_comments(path: Path) -> Comments:
    """comments.csv: unique integer ``comment-id``, ``moderated`` in {1, 0, -1}, the ``comment-body``."""
    table = read_csv_table(path, ("comment-id", "moderated", "comment-body"))
    ids = _integers(table, "comment-id")
    repeat = _first_repeat(ids)
    if repeat is not None:
        first = int(table.lines[int(np.flatnonzero(ids == ids[repeat])[0])])
        raise DataError(
            f"comment-id {ids[repeat]} appears twice (first at line {first})",
            path=table.path,
            line=int(table.lines[repeat]),
            field="comment-id",
        )
    moderated = _integers(table, "moderated")
    bad = ~np.isin(moderated, (1, 0, -1))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"must be 1 (accepted), 0 (unmoderated) or -1 (moderated out), got {moderated[row]}",
            path=table.path,
            line=int(table.lines[row]),
            field="moderated",
        )
    texts = pd.Series(table.columns["comment-body"], dtype=object).str.strip().to_numpy(dtype=object)
    return Comments(table.path, ids, moderated.astype(np.int8), texts, table.lines)


def _vote_values(table: CsvTable, name: str, values: np.ndarray, lines: np.ndarray) -> np.ndarray:
    ok = np.isin(values, ("1", "-1", "0"))
    if not ok.all():
        row = int(np.argmin(ok))
        raise DataError(
            f"{VOTE_VALUES}, got {str(values[row])!r}", path=table.path, line=int(lines[row]), field=name
        )
    return values.astype(np.int8)


def read_votes(path: Path, comments: Comments) -> FinalVotes:
    """votes.csv reduced to the final vote per (voter, comment): the latest ``timestamp`` wins.

    Events with equal timestamps keep file order (the later line wins); ``FinalVotes.ties`` counts those
    pairs whose tied events disagree. Every ``comment-id`` must be in comments.csv.
    """
    table = read_csv_table(path, ("timestamp", "comment-id", "voter-id", "vote"))
    timestamp = _integers(table, "timestamp")
    comment_ids = _integers(table, "comment-id")
    voter = _integers(table, "voter-id")
    vote = _vote_values(table, "vote", table.columns["vote"].astype(str), table.lines)
    statement = comments.positions(comment_ids)
    unknown = statement < 0
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DataError(
            f"unknown comment-id {comment_ids[row]} (not in {COMMENTS})",
            path=table.path,
            line=int(table.lines[row]),
            field="comment-id",
        )
    # Sort by (voter, statement, timestamp, line); the last event of each (voter, statement) is final.
    order = np.lexsort((np.arange(len(table)), timestamp, statement, voter))
    v, s, t, x = voter[order], statement[order], timestamp[order], vote[order]
    last = np.ones(len(order), dtype=bool)
    if len(order):
        last[:-1] = (v[1:] != v[:-1]) | (s[1:] != s[:-1])
    # A tie: the final event and the one before it are of the same pair, at the same time, with other votes.
    before = np.flatnonzero(last[1:] & ~last[:-1]) if len(order) > 1 else np.zeros(0, dtype=np.int64)
    ties = int(((t[before] == t[before + 1]) & (x[before] != x[before + 1])).sum())
    keep = order[last]
    keep = keep[np.lexsort((keep, voter[keep]))]  # by voter, then file order
    participants = np.unique(voter)
    return FinalVotes(
        path=table.path,
        participant=voter[keep],
        statement=statement[keep],
        vote=vote[keep],
        participants=participants,
        group_ids=np.full(len(participants), -1, dtype=np.int64),
        has_groups=False,
        events=len(table),
        superseded=len(table) - len(keep),
        ties=ties,
    )


def read_participants_votes(path: Path, comments: Comments) -> FinalVotes:
    """participants-votes.csv: the final vote matrix, one row per participant, one column per comment id.

    Columns other than the fixed ones (PARTICIPANT_COLUMNS; only ``participant`` and ``group-id`` are
    required) must be comment ids from comments.csv; cells are empty or 1 / -1 / 0; ``group-id`` is empty
    (not clustered) or an integer; participants are unique.
    """
    table = read_csv_table(path, ("participant", "group-id"))
    header_line = 1
    comment_columns = [name for name in table.header if name not in PARTICIPANT_COLUMNS]
    ids = []
    for name in comment_columns:
        if not re.fullmatch(INTEGER, name):
            raise DataError(
                f"is neither a participants-votes column ({', '.join(PARTICIPANT_COLUMNS)}) nor a comment id",
                path=table.path,
                line=header_line,
                field=name,
            )
        ids.append(int(name))
    positions = comments.positions(np.asarray(ids, dtype=np.int64))
    if (positions < 0).any():
        name = comment_columns[int(np.argmax(positions < 0))]
        raise DataError(
            f"unknown comment-id {name} (a column of {PARTICIPANTS}, not in {COMMENTS})",
            path=table.path,
            line=header_line,
            field=name,
        )
    participant = _integers(table, "participant")
    repeat = _first_repeat(participant)
    if repeat is not None:
        raise DataError(
            f"participant {participant[repeat]} appears twice",
            path=table.path,
            line=int(table.lines[repeat]),
            field="participant",
        )
    groups_text = table.columns["group-id"].astype(str)
    clustered = groups_text != ""
    group_ids = np.full(len(table), -1, dtype=np.int64)
    if clustered.any():
        group_ids[clustered] = _integers(table, "group-id", np.flatnonzero(clustered))
    n_rows, n_cols = len(table), len(comment_columns)
    cells = (
        np.stack([table.columns[name].astype(str) for name in comment_columns], axis=1)
        if n_cols
        else np.zeros((n_rows, 0), dtype=str)
    )
    ok = np.isin(cells, ("", "1", "-1", "0"))
    if not ok.all():
        row, col = np.unravel_index(int(np.argmin(ok.ravel())), ok.shape)
        raise DataError(
            f"{VOTE_VALUES}, or empty for no vote, got {str(cells[row, col])!r}",
            path=table.path,
            line=int(table.lines[row]),
            field=comment_columns[col],
        )
    order = np.argsort(participant, kind="stable")
    cells, participant, group_ids = cells[order], participant[order], group_ids[order]
    rows, cols = np.nonzero(cells != "")  # row-major: by participant, then column order
    return FinalVotes(
        path=table.path,
        participant=participant[rows],
        statement=positions[cols],
        vote=cells[rows, cols].astype(np.int8),
        participants=participant,
        group_ids=group_ids,
        has_groups=True,
        events=len(rows),
    )


def read_summary(path: Path) -> dict[str, str]:
    """summary.csv: ``key,value`` lines (no header) as a dict; a repeated key is an error."""
    table = read_csv_table(path, ("key", "value"), header=False)
    keys = table.columns["key"]
    repeat = _first_repeat(keys)
    if repeat is not None:
        raise DataError(
            f"key {keys[repeat]!r} appears twice", path=table.path, line=int(table.lines[repeat]), field="key"
        )
    values = pd.Series(table.columns["value"], dtype=object).str.strip()
    return dict(zip(keys.tolist(), values.tolist(), strict=True))
