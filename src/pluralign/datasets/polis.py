"""Polis conversations (real people's agree/disagree votes on statements) as pluralign preference rows.

``read_polis(DIR)`` reads one Polis export folder (``comments.csv``, ``summary.csv``, and
``participants-votes.csv`` and/or ``votes.csv``; see :mod:`pluralign.datasets.polis_files`) or a folder of
such folders, one per conversation (e.g. https://github.com/compdemocracy/openData). Each agree or
disagree vote becomes one comparison of user ``<conversation>/<participant>``; ``write_polis`` writes the
rows, a users file and a metadata JSON. The CLI is ``pluralign datasets polis DIR --out rows.jsonl``.

**Final votes.** From ``participants-votes.csv`` (Polis's final vote matrix) when present, else from
``votes.csv``, where the last vote per (voter, comment) by ``timestamp`` wins (ties: the later line). On
the seven openData conversations both give the same votes (tested).

**Row encoding (why the statement goes into the prompt).** A PAL-B reward is
``r_u(x, c) = s <f(x), sum_k w_uk g_k(c)>``, with ``x`` the embedded response and ``c`` the embedded prompt.
The default encoding, ``question``, asks the statement as a question and answers it with two fixed
responses: ``prompt = 'On "<topic>": do you agree with the following statement?\\n"<statement>"'``,
``chosen``/``rejected`` = ``"Yes"``/``"No"`` by the vote (``"No"``/``"Yes"`` for a disagree vote). Then
the item embedding carries no statement information (there are two items), and a row's margin is
``s <sum_k w_uk g_k(c), f(Yes) - f(No)>``: each prototype ``g_k`` is a function of the statement's
embedding, its stance on that statement, and a user is a mixture of K stances, which is what Polis's opinion
groups are. The statement is read through the context encoder, so a model must use contexts (PAL-A's joint
map and PAL-B's ``g_k`` do; BTL scores the pair ``[x; c]``). This is also the shape of the PAL paper's
Persona task (``pluralign.datasets.persona``: a statement question answered "Yes"/"No"), so the same
models and settings apply. The alternative, ``statement``, puts the statement into the responses
(``prompt = 'On "<topic>": where do you stand?'``, responses ``"I agree: <statement>"`` /
``"I disagree: <statement>"``): there is one context per conversation, so PAL-B's ``z_u`` is one fixed
vector per user and the whole signal must come from ``f(I agree: s) - f(I disagree: s)``, the difference of
two embeddings that differ by a couple of words (for all-MiniLM-L6-v2 their cosine similarity is 0.98 on
average). docs/datasets/polis.md gives a small measurement of both. Both, and any other
:class:`RowTemplate` (Python format strings over ``{statement}``, ``{topic}``, ``{description}``,
``{conversation}``, ``{comment_id}``), are options; the statement must appear in the prompt or in both
responses.

**Nothing is dropped silently.** Every final vote ends up in exactly one of: a row, or a skip reason:
``moderated_out`` (a statement with ``moderated = -1``; kept with ``include_moderated=True``),
``empty_statement`` (no text), ``pass`` (vote 0: no preference between the answers), ``below_min_votes``
(the user has fewer than ``min_votes`` agree/disagree votes left). Re-votes replaced by a later one
(``superseded``, votes.csv only) are counted too, as are skipped users and statements. The counts per
conversation are in :class:`PolisReport` and in the metadata JSON. Statement texts are stripped of
leading/trailing whitespace; nothing else is changed.

**Attribution.** Polis data is CC BY 4.0; the attribution statement with each conversation's case-study URL
(or its pol.is URL for conversations not in the openData list) travels in ``PolisData.metadata()``, in the
metadata JSON and in ``PreferenceData.meta``.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.atomic import atomic_write_json, atomic_write_text
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import write_preferences
from pluralign.datasets.polis_files import (
    COMMENTS,
    PARTICIPANTS,
    SUMMARY,
    VOTES,
    Comments,
    read_comments,
    read_participants_votes,
    read_summary,
    read_votes,
)
from pluralign.datasets.polis_report import (
    ATTRIBUTION,
    CASE_STUDIES,
    LICENSE,
    LICENSE_URL,
    STATEMENT_REASONS,
    ConversationReport,
    PolisReport,
)
from pluralign.errors import DataError
from pluralign.version import __version__

__all__ = [
    "ATTRIBUTION",
    "CASE_STUDIES",
    "ENCODINGS",
    "LICENSE",
    "LICENSE_URL",
    "ConversationReport",
    "PolisData",
    "PolisReport",
    "RowTemplate",
    "find_conversations",
    "read_polis",
    "write_polis",
]

#: the names a template may use
FIELDS = ("statement", "topic", "description", "conversation", "comment_id")
VOTES_FROM = ("auto", PARTICIPANTS, VOTES)


# ========================================================================================================
# row templates
# ========================================================================================================
@dataclass(frozen=True)
class RowTemplate:
    """How a vote becomes text: Python format strings for the prompt and the agree/disagree responses.

    They may use ``{statement}``, ``{topic}`` (summary.csv), ``{description}`` (summary.csv's
    ``conversation-description``), ``{conversation}`` (folder name) and ``{comment_id}``; write ``{{``/``}}``
    for literal braces. An agree vote is ``chosen = agree, rejected = disagree``, a disagree vote the reverse.
    """

    prompt: str
    agree: str
    disagree: str

    def __post_init__(self) -> None:
        used = {name: _fields(getattr(self, name), name) for name in ("prompt", "agree", "disagree")}
        for name in ("agree", "disagree"):
            if not getattr(self, name).strip():
                raise ValueError(f"the {name} response template is empty")
        if self.agree == self.disagree:
            raise ValueError(f"the agree and disagree templates are the same ({self.agree!r})")
        in_responses = "statement" in used["agree"] and "statement" in used["disagree"]
        if "statement" not in used["prompt"] and not in_responses:
            raise ValueError(
                "the statement must appear in the prompt template or in both response templates "
                "(write {statement}): otherwise the rows of a conversation cannot tell statements apart"
            )

    @property
    def fields(self) -> set[str]:
        return set().union(*(_fields(t, "") for t in (self.prompt, self.agree, self.disagree)))

    def render(self, texts: np.ndarray, comment_ids: np.ndarray, **context: str) -> tuple[list[str], ...]:
        """Prompt, agree and disagree texts per statement (``context``: topic, description, conversation)."""
        out: tuple[list[str], ...] = ([], [], [])
        for text, comment_id in zip(texts.tolist(), comment_ids.tolist(), strict=True):
            values = {"statement": text, "comment_id": comment_id, **context}
            for texts_out, template in zip(out, (self.prompt, self.agree, self.disagree), strict=True):
                try:
                    texts_out.append(template.format(**values))
                except (ValueError, TypeError, KeyError, IndexError) as exc:  # e.g. "{statement:d}"
                    raise ValueError(f"the template {template!r} cannot be filled in: {exc}") from None
        return out


def _fields(template: str, name: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"the {name} template {template!r} is not a valid format string: {exc}") from None
    found = {field_name for _, field_name, _, _ in parsed if field_name is not None}
    unknown = sorted(found - set(FIELDS))
    if unknown:
        raise ValueError(
            f"the {name} template {template!r} uses {{{unknown[0]}}}; known fields: "
            + ", ".join(f"{{{f}}}" for f in FIELDS)
        )
    return found


#: the preset encodings (see the module docstring for why ``question`` is the default)
ENCODINGS = {
    "question": RowTemplate(
        prompt='On "{topic}": do you agree with the following statement?\n"{statement}"',
        agree="Yes",
        disagree="No",
    ),
    "statement": RowTemplate(
        prompt='On "{topic}": where do you stand?',
        agree="I agree: {statement}",
        disagree="I disagree: {statement}",
    ),
}


# ========================================================================================================
# the dataset
# ========================================================================================================
@dataclass(frozen=True)
class PolisData:
    """The rows, the users (with Polis's ``group_id``, nullable) and statements of the conversations read.

    ``rows``: user_id, prompt, chosen, rejected, conversation, comment_id, vote (1 agree / -1 disagree).
    ``users``: user_id, conversation, participant, group_id, n_votes (= rows), n_agree, n_disagree, n_pass.
    ``statements``: conversation, comment_id, moderated, text, prompt, n_agree, n_disagree, n_pass, skipped
    (the statement's skip reason, or "" when it has rows).
    """

    rows: pd.DataFrame
    users: pd.DataFrame
    statements: pd.DataFrame
    report: PolisReport
    template: RowTemplate
    sources: list[dict[str, Any]] = field(default_factory=list)

    def attribution(self) -> dict[str, Any]:
        """The CC BY 4.0 attribution: statement, links (one per conversation) and the full text to show."""
        links = [c.case_study_url or c.url for c in self.report.conversations]
        links = [link for link in dict.fromkeys(links) if link]
        return {
            "license": LICENSE,
            "license_url": LICENSE_URL,
            "statement": ATTRIBUTION,
            "links": links,
            "text": "\n".join([ATTRIBUTION, *links]),
        }

    def metadata(self) -> dict[str, Any]:
        """Everything needed to cite and reproduce the rows (written as the metadata JSON)."""
        return {
            "format": "pluralign.polis/1",
            "pluralign_version": __version__,
            "attribution": self.attribution(),
            "options": {**self.report.options, "template": asdict(self.template)},
            "sources": self.sources,
            "ignored_dirs": list(self.report.ignored),
            "totals": self.report.totals(),
            "skipped": self.report.skipped(),
            "conversations": [c.as_dict() for c in self.report.conversations],
        }

    def to_preferences(self) -> PreferenceData:
        """The rows as :class:`PreferenceData`, with the metadata in ``meta['polis']``."""
        data = PreferenceData.from_frame(self.rows, source=",".join(s["path"] for s in self.sources) or None)
        return replace(data, meta={"polis": self.metadata()})


def find_conversations(path: str | Path) -> tuple[list[Path], list[Path]]:
    """The conversation folders under ``path`` (itself, or its subfolders) and the subfolders ignored.

    A folder is a conversation when it holds ``comments.csv``. A subfolder holding other export files but no
    comments.csv is an error; subfolders without any export file (and hidden ones) are returned as ignored.
    """
    root = Path(path)
    if not root.exists():
        raise DataError("no such directory", path=root)
    if not root.is_dir():
        raise DataError("expected a Polis export folder (with comments.csv) or a folder of them", path=root)
    if (root / COMMENTS).is_file():
        return [root], []
    found, ignored = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / COMMENTS).is_file():
            found.append(sub)
        elif any((sub / name).exists() for name in (VOTES, PARTICIPANTS, SUMMARY)):
            raise DataError(f"no such file: a Polis export folder needs {COMMENTS}", path=sub / COMMENTS)
        else:
            ignored.append(sub)
    if not found:
        raise DataError(f"no Polis export here: no {COMMENTS} in the folder or its subfolders", path=root)
    return found, ignored


def read_polis(
    path: str | Path,
    *,
    template: RowTemplate | str = "question",
    min_votes: int = 1,
    include_moderated: bool = False,
    votes_from: str = "auto",
) -> PolisData:
    """Read one Polis export folder or a folder of them (one subfolder per conversation, sorted by name).

    ``template``: a :class:`RowTemplate` or the name of one of :data:`ENCODINGS`. ``min_votes``: users
    with fewer agree/disagree votes (after the other filters) are skipped (counted). ``include_moderated``:
    keep votes on moderated-out statements. ``votes_from``: ``"auto"`` (participants-votes.csv when present,
    else votes.csv), ``"participants-votes.csv"`` or ``"votes.csv"``.
    """
    if isinstance(template, str):
        if template not in ENCODINGS:
            raise ValueError(f"unknown encoding {template!r}; choose one of {', '.join(ENCODINGS)}")
        template = ENCODINGS[template]
    if isinstance(min_votes, bool) or not isinstance(min_votes, int | np.integer) or min_votes < 1:
        raise ValueError(f"min_votes must be an integer >= 1, got {min_votes!r}")
    if votes_from not in VOTES_FROM:
        raise ValueError(f"votes_from must be one of {', '.join(VOTES_FROM)}, got {votes_from!r}")
    folders, ignored = find_conversations(path)
    parts = [_read_conversation(f, template, int(min_votes), include_moderated, votes_from) for f in folders]
    options = {"min_votes": int(min_votes), "include_moderated": include_moderated, "votes_from": votes_from}
    report = PolisReport(tuple(p[0] for p in parts), options, tuple(str(p) for p in ignored))
    return PolisData(
        rows=pd.concat([p[1] for p in parts], ignore_index=True),
        users=pd.concat([p[2] for p in parts], ignore_index=True),
        statements=pd.concat([p[3] for p in parts], ignore_index=True),
        report=report,
        template=template,
        sources=[p[4] for p in parts],
    )


def write_polis(data: PolisData, out: str | Path) -> dict[str, Path]:
    """Write the rows to ``out`` (.jsonl, .json, .csv or .parquet), and beside it ``<stem>.users.csv`` and
    ``<stem>.meta.json``; each file atomically, the metadata last. Returns the paths by kind."""
    out = Path(out)
    paths = {
        "rows": out,
        "users": out.with_name(f"{out.stem}.users.csv"),
        "metadata": out.with_name(f"{out.stem}.meta.json"),
    }
    write_preferences(data.rows, out)
    atomic_write_text(paths["users"], data.users.to_csv(index=False, lineterminator="\n"))
    meta = data.metadata()
    meta["files"] = {kind: p.name for kind, p in paths.items() if kind != "metadata"}
    atomic_write_json(paths["metadata"], meta)
    return paths


# ========================================================================================================
# one conversation
# ========================================================================================================
def _read_conversation(
    folder: Path, template: RowTemplate, min_votes: int, include_moderated: bool, votes_from: str
) -> tuple[ConversationReport, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    name = folder.resolve().name  # "." names the folder it is
    for required in (COMMENTS, SUMMARY):
        if not (folder / required).is_file():
            raise DataError("no such file (a Polis export folder needs it)", path=folder / required)
    source = _votes_source(folder, votes_from)
    summary = read_summary(folder / SUMMARY)
    needed = {"topic": "topic", "description": "conversation-description"}
    for key in sorted(template.fields & set(needed)):
        if needed[key] not in summary:
            raise DataError(
                f"no '{needed[key]}' line (the template uses {{{key}}})",
                path=folder / SUMMARY,
                field=needed[key],
            )
    comments = read_comments(folder / COMMENTS)
    final = (read_participants_votes if source == PARTICIPANTS else read_votes)(folder / source, comments)

    # ---- every final vote gets one fate: a row or the first skip reason that applies ----------------------
    statement, vote = final.statement, final.vote
    moderated_out_statement = (comments.moderated == -1) & (not include_moderated)
    empty_statement = (comments.texts == "") & ~moderated_out_statement
    moderated_out = moderated_out_statement[statement]
    empty = empty_statement[statement]
    passed = (vote == 0) & ~moderated_out & ~empty
    candidate = ~(moderated_out | empty | passed)
    user = np.searchsorted(final.participants, final.participant)
    n_participants = len(final.participants)
    n_candidate = np.bincount(user[candidate], minlength=n_participants)
    kept_user = n_candidate >= min_votes
    below = candidate & ~kept_user[user]
    keep = candidate & kept_user[user]

    # ---- rows ---------------------------------------------------------------------------------------------
    context = {
        "topic": summary.get("topic", ""),
        "description": summary.get("conversation-description", ""),
        "conversation": name,
    }
    prompts, agree_texts, disagree_texts = (
        np.asarray(t, dtype=object) for t in template.render(comments.texts, comments.ids, **context)
    )
    blank = pd.Series(agree_texts).str.strip().eq("") | pd.Series(disagree_texts).str.strip().eq("")
    for bad, what in (
        ((agree_texts == disagree_texts), "the agree and disagree templates give the same text"),
        (blank.to_numpy(dtype=bool), "a response template gives an empty text"),
    ):
        bad = bad & ~empty_statement
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{folder / COMMENTS}:{comments.lines[row]}: {what} ({agree_texts[row]!r} / "
                f"{disagree_texts[row]!r}) for comment-id {comments.ids[row]}"
            )
    s, agreed = statement[keep], vote[keep] == 1
    user_ids = np.char.add(f"{name}/", final.participants.astype(str)).astype(object)
    rows = pd.DataFrame(
        {
            "user_id": user_ids[user[keep]],
            "prompt": prompts[s],
            "chosen": np.where(agreed, agree_texts[s], disagree_texts[s]),
            "rejected": np.where(agreed, disagree_texts[s], agree_texts[s]),
            "conversation": name,
            "comment_id": comments.ids[s],
            "vote": vote[keep].astype(np.int64),
        }
    )

    # ---- users and statements -----------------------------------------------------------------------------
    n_agree = np.bincount(user[keep & (vote == 1)], minlength=n_participants)
    n_disagree = np.bincount(user[keep & (vote == -1)], minlength=n_participants)
    n_pass = np.bincount(user[passed], minlength=n_participants)
    groups = pd.Series(final.group_ids).where(final.group_ids >= 0).astype("Int64")
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "conversation": name,
            "participant": final.participants,
            "group_id": groups,
            "n_votes": n_agree + n_disagree,
            "n_agree": n_agree,
            "n_disagree": n_disagree,
            "n_pass": n_pass,
        }
    )[kept_user].reset_index(drop=True)
    statements = _statements(name, comments, prompts, statement, vote, keep, passed, moderated_out_statement)
    skip = statements["skipped"].to_numpy()

    report = ConversationReport(
        name=name,
        path=str(folder),
        votes_from=source,
        topic=summary.get("topic", ""),
        url=summary.get("url") or None,
        case_study_url=CASE_STUDIES.get(name),
        participants=n_participants,
        users=int(kept_user.sum()),
        statements=len(comments.ids),
        statements_voted=len(np.unique(statement)),
        statements_with_rows=int((skip == "").sum()),
        vote_events=final.events,
        final_votes=len(vote),
        rows=len(rows),
        agree=int(n_agree.sum()),
        disagree=int(n_disagree.sum()),
        superseded=final.superseded,
        ties_broken_by_line=final.ties,
        has_groups=final.has_groups,
        groups=int(users["group_id"].nunique()),
        skipped_votes={
            "moderated_out": int(moderated_out.sum()),
            "empty_statement": int(empty.sum()),
            "pass": int(passed.sum()),
            "below_min_votes": int(below.sum()),
        },
        skipped_users={
            "no_votes": int((n_candidate == 0).sum()),
            "below_min_votes": int(((n_candidate > 0) & ~kept_user).sum()),
        },
        skipped_statements={r: int((skip == r).sum()) for r in STATEMENT_REASONS},
        files={f: str(folder / f) for f in (COMMENTS, SUMMARY, source)},
    )
    source_info = {
        "conversation": name,
        "path": str(folder),
        "votes_from": source,
        "sha256": {f: _sha256(folder / f) for f in (COMMENTS, SUMMARY, source)},
    }
    return report, rows, users, statements, source_info


def _votes_source(folder: Path, votes_from: str) -> str:
    if votes_from == "auto":
        for name in (PARTICIPANTS, VOTES):
            if (folder / name).is_file():
                return name
        raise DataError(
            f"no such file: a Polis export folder needs {PARTICIPANTS} or {VOTES}", path=folder / PARTICIPANTS
        )
    if not (folder / votes_from).is_file():
        raise DataError(f"no such file (votes_from={votes_from!r})", path=folder / votes_from)
    return votes_from


def _statements(
    name: str,
    comments: Comments,
    prompts: np.ndarray,
    statement: np.ndarray,
    vote: np.ndarray,
    keep: np.ndarray,
    passed: np.ndarray,
    moderated_out: np.ndarray,
) -> pd.DataFrame:
    n = len(comments.ids)
    n_agree = np.bincount(statement[keep & (vote == 1)], minlength=n)
    n_disagree = np.bincount(statement[keep & (vote == -1)], minlength=n)
    skipped = np.where(
        moderated_out,
        "moderated_out",
        np.where(comments.texts == "", "empty_text", np.where(n_agree + n_disagree == 0, "no_rows", "")),
    )
    return pd.DataFrame(
        {
            "conversation": name,
            "comment_id": comments.ids,
            "moderated": comments.moderated.astype(np.int64),
            "text": comments.texts,
            "prompt": prompts,
            "n_agree": n_agree,
            "n_disagree": n_disagree,
            "n_pass": np.bincount(statement[passed], minlength=n),
            "skipped": skipped,
        }
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
