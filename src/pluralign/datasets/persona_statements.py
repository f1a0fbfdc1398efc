"""Persona statements: reading and validating the persona files into a pool of distinct statements.

Each ``<persona>.jsonl`` (Anthropic's model-written persona statements, see ``persona_data/SOURCE.md``)
lists statements with ``answer_matching_behavior`` ``" Yes"`` (the set S(ρ)) or ``" No"``. How statements
that occur more than once are counted (the overlap rule) is described in :mod:`pluralign.datasets.persona`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from pluralign.errors import DataError

_TABLE7 = (
    "interest-in-art",
    "interest-in-literature",
    "interest-in-math",
    "interest-in-music",
    "interest-in-science",
    "interest-in-sports",
)
#: PAL Table 7: the personas used for each "true" number of groups K* (file stems of the source data).
PERSONAS_BY_K: dict[int, tuple[str, ...]] = {k: _TABLE7[:k] for k in range(2, 7)}

_YES, _NO = " Yes", " No"  # the source spells answers with a leading space
_REQUIRED = ("question", "statement", "answer_matching_behavior")


@dataclass(frozen=True, eq=False)
class StatementPool:
    """The distinct statements of some persona files and which persona agrees with which.

    Column ``s`` of ``agrees`` ([K, S] bool) is True for persona ``k`` iff statement ``s`` is in S(ρ_k), i.e.
    has ``" Yes"`` in ρ_k's file; ``listed`` ([K, S] bool) says whether it appears in ρ_k's file at all.
    ``questions[s]`` is the prompt shown for ``statements[s]``. ``source`` is the directory read and
    ``n_rows`` the number of (non-blank) lines read.
    """

    personas: tuple[str, ...]
    statements: np.ndarray
    questions: np.ndarray
    agrees: np.ndarray
    listed: np.ndarray
    source: str
    n_rows: int

    def __len__(self) -> int:
        return len(self.statements)

    def members(self, persona: str | int) -> np.ndarray:
        """Indices of S(ρ): the statements persona ``persona`` (name or index) answers "Yes" to."""
        k = persona if isinstance(persona, int) else self.personas.index(persona)
        return np.flatnonzero(self.agrees[k])

    @property
    def n_shared(self) -> int:
        """Statements listed in more than one persona's file."""
        return int((self.listed.sum(axis=0) > 1).sum())

    @property
    def n_conflicting(self) -> int:
        """Statements that one listing file answers " Yes" and another " No"."""
        return int((self.agrees.any(axis=0) & (self.listed & ~self.agrees).any(axis=0)).sum())

    @property
    def n_repeated_rows(self) -> int:
        """Lines repeating a statement already listed in the same file (same answer; counted once)."""
        return self.n_rows - int(self.listed.sum())


def shipped_data_dir() -> Traversable:
    """The directory of persona files shipped with pluralign (the six Table 7 personas)."""
    return importlib.resources.files("pluralign.datasets").joinpath("persona_data")


def load_statements(
    personas: Sequence[str], data_dir: str | os.PathLike[str] | Traversable | None = None
) -> StatementPool:
    """Read ``<data_dir>/<persona>.jsonl`` for each persona into a :class:`StatementPool`.

    ``data_dir`` defaults to the shipped data (:func:`shipped_data_dir`); point it at a copy of the source's
    ``persona/`` folder for the other personas. Every line is validated: it must be a JSON object with a
    non-empty string ``question`` and ``statement`` and ``answer_matching_behavior`` exactly ``" Yes"`` or
    ``" No"`` (``answer_not_matching_behavior``, if present, must be the other one); blank lines are
    skipped. Problems raise :class:`DataError` with the file, 1-based line and field. Duplicates follow the
    overlap rule of :mod:`pluralign.datasets.persona`.
    """
    names = check_persona_names(personas)
    root = shipped_data_dir() if data_dir is None else data_dir
    if not isinstance(root, Traversable):
        root = Path(root)
    if not root.is_dir():
        raise DataError("persona data directory does not exist", path=str(root))

    statements: list[str] = []
    questions: list[str] = []
    by_statement: dict[str, int] = {}
    by_question: dict[str, int] = {}
    first_at: list[str] = []  # "file:line" of each statement's first occurrence, for messages
    agrees: list[dict[int, bool]] = []
    n_rows = 0
    for persona in names:
        path = root.joinpath(f"{persona}.jsonl")
        if not path.is_file():
            raise DataError(_missing_file_message(persona, root), path=str(path))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read persona file: {exc.strerror or exc}", path=str(path)) from exc
        answers: dict[int, bool] = {}
        line_of: dict[int, int] = {}
        for line, (question, statement, yes) in _records(raw, str(path)):
            n_rows += 1
            s = by_statement.get(statement)
            if s is None:
                other = by_question.get(question)
                if other is not None:
                    raise DataError(
                        f"a different statement at {first_at[other]} has the same question",
                        path=str(path),
                        line=line,
                        field="question",
                    )
                s = len(statements)
                statements.append(statement)
                questions.append(question)
                by_statement[statement] = by_question[question] = s
                first_at.append(f"{path}:{line}")
            elif questions[s] != question:
                raise DataError(
                    f"the same statement at {first_at[s]} has a different question",
                    path=str(path),
                    line=line,
                    field="question",
                )
            if s in answers:
                if answers[s] != yes:
                    raise DataError(
                        f"the statement is repeated from line {line_of[s]} with the opposite answer",
                        path=str(path),
                        line=line,
                        field="answer_matching_behavior",
                    )
                continue
            answers[s] = yes
            line_of[s] = line
        if not answers:
            raise DataError("persona file has no statements", path=str(path))
        agrees.append(answers)

    n = len(statements)
    agree = np.zeros((len(names), n), dtype=bool)
    listed = np.zeros((len(names), n), dtype=bool)
    for k, answers in enumerate(agrees):
        idx = np.fromiter(answers.keys(), dtype=np.int64, count=len(answers))
        listed[k, idx] = True
        agree[k, idx] = np.fromiter(answers.values(), dtype=bool, count=len(answers))
    return StatementPool(
        personas=names,
        statements=np.asarray(statements, dtype=object),
        questions=np.asarray(questions, dtype=object),
        agrees=agree,
        listed=listed,
        source=str(root),
        n_rows=n_rows,
    )


def check_persona_names(personas: Sequence[str]) -> tuple[str, ...]:
    """The persona names as a tuple, after checking they are distinct file stems."""
    if isinstance(personas, str):
        raise TypeError("personas must be a sequence of persona names, not a single string")
    names = tuple(personas)
    if not names:
        raise ValueError("at least one persona is needed")
    for name in names:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"persona names are file stems such as 'interest-in-art', got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"persona(s) listed more than once: {', '.join(repeated)}")
    return names


def _missing_file_message(persona: str, root: Path | Traversable) -> str:
    available = sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))
    shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
    message = (
        f"no file for persona '{persona}' ({persona}.jsonl) in {root}; it has {len(available)} persona(s)"
    )
    message += f": {shown}" if available else ""
    if str(root) == str(shipped_data_dir()):
        message += "; the shipped data holds only the Table 7 personas, pass data_dir= for the others"
    return message


def _records(raw: bytes, path: str) -> list[tuple[int, tuple[str, str, bool]]]:
    """Validated (line, (question, statement, agrees)) of each non-blank line."""
    out = []
    for line, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-8 ({exc.reason})", path=path, line=line) from exc
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=line) from exc
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
        for key in _REQUIRED:
            if key not in obj:
                raise DataError("missing", path=path, line=line, field=key)
        for key in ("question", "statement"):
            value = obj[key]
            if not isinstance(value, str):
                raise DataError(f"expected a string, got {value!r}", path=path, line=line, field=key)
            if not value.strip():
                raise DataError("empty", path=path, line=line, field=key)
        answer = obj["answer_matching_behavior"]
        if answer not in (_YES, _NO):
            raise DataError(
                f"expected ' Yes' or ' No', got {answer!r}",
                path=path,
                line=line,
                field="answer_matching_behavior",
            )
        if "answer_not_matching_behavior" in obj and obj["answer_not_matching_behavior"] != (
            _NO if answer == _YES else _YES
        ):
            raise DataError(
                f"must be the opposite of answer_matching_behavior ({answer!r}), "
                f"got {obj['answer_not_matching_behavior']!r}",
                path=path,
                line=line,
                field="answer_not_matching_behavior",
            )
        out.append((line, (obj["question"], obj["statement"], answer == _YES)))
    return out
