"""Question pools for active onboarding: candidate pairs ``{prompt, a, b}`` to ask users about.

``pluralign ask POOL`` and ``pluralign serve --questions POOL`` read them with :func:`read_questions`; a
pool is JSONL (one object a line) or a JSON list of objects. Plain Python (no web stack), so the CLI can read
a pool without the ``serve`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pluralign.errors import DataError

#: longest prompt or response of a question (the service accepts the same in a request)
MAX_TEXT_CHARS = 10_000
#: most questions in a pool
MAX_POOL = 100_000

_FIELDS = ("prompt", "a", "b")


class Question(NamedTuple):
    """One candidate pair: ask the user whether they prefer response ``a`` or ``b`` to ``prompt``."""

    prompt: str
    a: str
    b: str


def read_questions(path: str | Path) -> list[Question]:
    """A pool of candidate pairs: JSONL (one ``{"prompt", "a", "b"}`` a line) or a JSON list of them.

    ``prompt`` may be omitted (empty); ``a`` and ``b`` are required strings, no other keys are allowed, and
    every text is at most :data:`MAX_TEXT_CHARS` characters. Raises :class:`DataError` naming the file, the
    line (JSONL) or position (JSON list, 1-based) and the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read questions file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 ({exc.reason} at byte {exc.start})", path=path) from None
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as exc:
            raise DataError(f"not a JSON list: {exc}", path=path) from None
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"not JSON: {exc}", path=path, line=number) from None
    if not items:
        raise DataError("no questions", path=path)
    if len(items) > MAX_POOL:
        raise DataError(f"{len(items):,} questions (at most {MAX_POOL:,})", path=path)
    return [_question(item, path, where) for where, item in items]


def _question(item: Any, path: Path, where: int) -> Question:
    if not isinstance(item, dict):
        raise DataError(
            f"expected an object {{prompt, a, b}}, got {type(item).__name__}", path=path, line=where
        )
    for key in item:
        if key not in _FIELDS:
            raise DataError("unknown field (expected prompt, a, b)", path=path, line=where, field=str(key))
    values = []
    for name in _FIELDS:
        if name not in item and name != "prompt":
            raise DataError("required", path=path, line=where, field=name)
        value = item.get(name, "")
        if not isinstance(value, str):
            raise DataError(
                f"expected a string, got {type(value).__name__}", path=path, line=where, field=name
            )
        if len(value) > MAX_TEXT_CHARS:
            raise DataError(
                f"is {len(value):,} characters long (at most {MAX_TEXT_CHARS:,})",
                path=path,
                line=where,
                field=name,
            )
        values.append(value)
    return Question(*values)
