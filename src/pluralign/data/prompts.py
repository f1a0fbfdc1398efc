"""Prompt lists for online RL and generation: ``pluralign rl train RUN PROMPTS``.

A prompt file is plain text (``.txt``: one prompt a line), JSONL (one JSON string, or one object with a
``prompt`` string, a line: a preference file works, its other fields are ignored), or a JSON list of the
same. Repeated prompts are kept once, in first-seen order (a preference file repeats each prompt for every
comparison); how many were repeated is returned so callers can say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pluralign.errors import DataError

__all__ = ["Prompts", "read_prompts"]

#: longest prompt accepted (the service's limit for a text)
MAX_PROMPT_CHARS = 10_000


class Prompts(NamedTuple):
    """The distinct prompts of a file (first-seen order) and how many rows repeated an earlier one."""

    prompts: list[str]
    repeated: int


def read_prompts(path: str | Path) -> Prompts:
    """Read a prompt file (module docstring). Raises :class:`DataError` naming the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read prompts file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 ({exc.reason} at byte {exc.start})", path=path) from None
    if path.suffix.lower() == ".txt":
        items = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif text.lstrip().startswith("["):
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
                raise DataError(
                    f"not JSON: {exc} (a .txt file takes one prompt a line)", path=path, line=number
                ) from None
    if not items:
        raise DataError("no prompts", path=path)
    seen: dict[str, None] = {}
    for where, item in items:
        seen.setdefault(_prompt(item, path, where), None)
    return Prompts(list(seen), len(items) - len(seen))


def _prompt(item: Any, path: Path, where: int) -> str:
    field = None
    if isinstance(item, dict):
        if "prompt" not in item:
            raise DataError(
                "required (an object needs a prompt string)", path=path, line=where, field="prompt"
            )
        item, field = item["prompt"], "prompt"
    if not isinstance(item, str):
        raise DataError(
            f"expected a prompt string, got {type(item).__name__}", path=path, line=where, field=field
        )
    if not item.strip():
        raise DataError("empty prompt", path=path, line=where, field=field)
    if len(item) > MAX_PROMPT_CHARS:
        raise DataError(
            f"{len(item):,} characters (at most {MAX_PROMPT_CHARS:,})", path=path, line=where, field=field
        )
    return item
