"""TRL's conversational preference rows as text: message checks, the implicit prompt, and rendering.

TRL (https://huggingface.co/docs/trl/dataset_formats) has two preference formats, and pluralign reads both:

* **standard**: ``prompt``, ``chosen`` and ``rejected`` are strings (the prompt may be absent: empty);
* **conversational**: they are lists of ``{"role": ..., "content": ...}`` messages; ``prompt`` is the
  conversation so far, ``chosen``/``rejected`` the assistant turn(s) that follow it. With an **implicit
  prompt** there is no ``prompt`` column (or, as TRL's ``maybe_extract_prompt`` treats it, a string one):
  ``chosen`` and ``rejected`` are whole conversations and the prompt is their shared leading messages,
  exactly as ``trl.extract_prompt`` splits them.

A conversation becomes the encoder's text through :func:`render_messages` only; the row checks are in
:func:`render_rows`, which :func:`pluralign.data.validation.validate` calls when a source holds lists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pluralign.data.raw import MISSING, Check

__all__ = ["ROLES", "ChatTemplate", "holds_messages", "render_messages", "render_rows"]

#: The roles a message may have (those of TRL's datasets and the usual chat templates).
ROLES = ("system", "user", "assistant", "tool")
_ROLE_SET = frozenset(ROLES)

#: None (role-tagged lines), a jinja chat-template string, a tokenizer (anything with
#: ``apply_chat_template``), or a callable ``f(messages, add_generation_prompt=...) -> str``.
ChatTemplate = Any

_TEXT = ("prompt", "chosen", "rejected")


def render_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    template: ChatTemplate = None,
    add_generation_prompt: bool = False,
) -> str:
    """The text of one conversation, the one place a message list becomes what the encoder sees.

    * ``template=None`` (the default): one line per message, ``"{role}: {content}"``, joined by ``"\\n"``
      (``[user "Hi", assistant "Hello!"]`` -> ``"user: Hi\\nassistant: Hello!"``); a content's own newlines
      are kept. ``add_generation_prompt`` is ignored.
    * a ``str``: a jinja chat template, rendered as transformers renders ``tokenizer.chat_template``
      (``messages`` and ``add_generation_prompt`` are defined; tokenizer variables such as ``bos_token`` are
      not: pass the tokenizer itself for those);
    * an object with ``apply_chat_template`` (a transformers tokenizer):
      ``template.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``;
    * any other callable: ``template(messages, add_generation_prompt=...)``, which must return a string.

    Messages are passed to a template whole (extra keys such as ``tool_calls`` included); the role tags use
    only ``role`` and ``content``. The messages are not checked here: :func:`render_rows` does that.
    """
    messages = [dict(m) for m in messages]
    if template is None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if isinstance(template, str):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            [messages], chat_template=template, add_generation_prompt=add_generation_prompt
        )
        text = rendered[0]
    elif callable(getattr(template, "apply_chat_template", None)):
        text = template.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    elif callable(template):
        text = template(messages, add_generation_prompt=add_generation_prompt)
    else:
        raise TypeError(
            "chat_template must be None, a jinja template string, a tokenizer or a callable, "
            f"got {type(template).__name__}"
        )
    if not isinstance(text, str):
        raise TypeError(f"the chat template returned {type(text).__name__}, not a string")
    return text


def render_pair(
    prompt: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    template: ChatTemplate = None,
) -> tuple[str, str, str]:
    """Texts of an explicit-prompt conversational row.

    Role tags render the three parts on their own. A chat template renders them as TRL's
    ``apply_chat_template`` does: the prompt with a generation prompt when its last message is the user's,
    each response in context (``prompt + chosen``), the prompt text being what the three renderings share
    and each response the rest of its rendering.
    """
    if template is None:
        return render_messages(prompt), render_messages(chosen), render_messages(rejected)
    generation = prompt[-1]["role"] == "user"
    text = render_messages(prompt, template=template, add_generation_prompt=generation)
    with_chosen = render_messages(prompt + chosen, template=template)
    with_rejected = render_messages(prompt + rejected, template=template)
    shared = os.path.commonprefix([text, with_chosen, with_rejected])  # noqa: RUF071 (text, not paths)
    return shared, with_chosen[len(shared) :], with_rejected[len(shared) :]


def shared_prefix(chosen: Sequence[Any], rejected: Sequence[Any]) -> int:
    """How many leading messages two conversations share (the implicit prompt's length)."""
    count = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        count += 1
    return count


def render_rows(
    columns: Mapping[str, pd.Series], lines: np.ndarray, *, template: ChatTemplate = None
) -> tuple[dict[str, pd.Series], list[Check]] | None:
    """Rendered prompt/chosen/rejected columns and the checks of a source holding message lists.

    None when no prompt, chosen or rejected value is a list (standard rows: nothing to do, and nothing
    costly is done). Otherwise the source's format is that of its first row with a string or list
    ``chosen``: for a standard source the checks refuse every list (and the columns are returned empty,
    the usual text checks doing the rest); for a conversational one every row is checked and rendered in
    one pass, invalid rows getting ``""``.
    """
    if not any(map(_may_hold_lists, (columns[name] for name in _TEXT))):
        return None  # the standard format's fast exit: typed or all-string columns
    values = {name: columns[name].to_numpy(dtype=object) for name in _TEXT}
    is_list = {name: np.frompyfunc(_is_list, 1, 1)(values[name]).astype(bool) for name in _TEXT}
    if not any(mask.any() for mask in is_list.values()):
        return None
    if not (template is None or isinstance(template, str) or callable(template)):
        # checked once here: below, whatever a template raises is the row's problem
        render_messages([], template=template)
    n = len(lines)
    errors: dict[str, dict[int, str]] = {name: {} for name in _TEXT}
    is_str = {name: _strings(values[name]) for name in _TEXT}
    known = is_list["chosen"] | is_str["chosen"]
    first = int(np.argmax(known)) if known.any() else int(np.argmax(is_list["chosen"]))
    line = int(lines[first])
    if not is_list["chosen"][first]:
        _refuse_lists(is_list, is_str, line, errors)
        return {}, _checks(errors, n)

    # conversational: the prompt is explicit (lists) or implicit (strings, or no column), file-wide
    prompt_known = np.flatnonzero(is_list["prompt"] | is_str["prompt"])
    explicit = bool(prompt_known.size) and bool(is_list["prompt"][prompt_known[0]])
    prompt_line = int(lines[prompt_known[0]]) if prompt_known.size else line
    out = {name: np.full(n, "", dtype=object) for name in _TEXT}
    for i in range(n):
        parts: dict[str, list[dict[str, Any]]] = {}
        if is_list["chosen"][i]:  # chosen first: a list of non-messages is its problem, whatever else is
            parts["chosen"], reason = check_messages(values["chosen"][i])
            if reason is not None:
                errors["chosen"][i] = reason
                continue
        if _row_types(i, values, is_list, is_str, explicit, line, prompt_line, errors):
            continue
        for name in ("prompt", "rejected") if explicit else ("rejected",):
            parts[name], reason = check_messages(values[name][i])
            if reason is not None:
                errors[name][i] = reason
        if any(i in errors[name] for name in _TEXT):
            continue
        if not explicit:
            split = _split_implicit(parts["chosen"], parts["rejected"])
            if isinstance(split[0], str):
                errors[split[0]][i] = split[1]
                continue
            parts = dict(zip(_TEXT, split, strict=True))
        try:
            texts = render_pair(parts["prompt"], parts["chosen"], parts["rejected"], template)
        except Exception as exc:  # a template's raise_exception, a callable's error: this row's problem
            errors["chosen"][i] = f"the chat template failed on this row: {type(exc).__name__}: {exc}"
            continue
        for name, text in zip(_TEXT, texts, strict=True):
            out[name][i] = text
    rendered = {name: pd.Series(out[name], dtype=object) for name in _TEXT}
    return rendered, _checks(errors, n)


def holds_messages(columns: Mapping[str, pd.Series]) -> bool:
    """Whether any prompt, chosen or rejected value is a list (a conversational source)."""
    present = [columns[name] for name in _TEXT if name in columns]
    return any(
        np.frompyfunc(_is_list, 1, 1)(s.to_numpy(dtype=object)).any() for s in present if _may_hold_lists(s)
    )


def check_messages(value: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A list value as messages, or the reason it is not one (``"message 2 of 3: ..."``)."""
    messages = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if messages and all(
        type(m) is dict
        and type(m.get("content")) is str
        and type(m.get("role")) is str
        and m["role"] in _ROLE_SET
        for m in messages
    ):
        return messages, None  # the usual case, in one pass; the loop below says what is wrong
    if not messages:
        return [], "is an empty message list (a conversation needs at least one message)"
    out = []
    for j, message in enumerate(messages, start=1):
        at = f"message {j} of {len(messages)}"
        if not isinstance(message, Mapping):
            return [], f"{at} must be an object with 'role' and 'content', got {describe(message)}"
        for key in ("role", "content"):
            if message.get(key, MISSING) is MISSING or message[key] is None:
                return [], f"{at} has no '{key}' ({_shown(dict(message))})"
            if not isinstance(message[key], str):
                hint = " (multimodal content parts are not supported)" if key == "content" else ""
                return [], f"{at}: '{key}' must be a string, got {describe(message[key])}{hint}"
        if message["role"] not in ROLES:
            return [], f"{at}: unknown role {message['role']!r} (expected one of {', '.join(ROLES)})"
        out.append(dict(message))
    return out, None


def describe(value: Any) -> str:
    """``type repr`` of a value, the repr cut to 40 characters."""
    return f"{type(value).__name__} {_shown(value)}"


def _shown(value: Any) -> str:
    shown = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _split_implicit(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] | tuple[str, str]:
    """(prompt, chosen, rejected) as trl.extract_prompt splits them, or (field, reason)."""
    if chosen == rejected:
        return "rejected", "is identical to 'chosen'"
    k = shared_prefix(chosen, rejected)
    if k == 0:
        return "chosen", (
            "shares no leading message with 'rejected', so there is no implicit prompt (without a prompt "
            "column, chosen and rejected are whole conversations that begin with the same messages)"
        )
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if k == len(messages):
            other = "rejected" if name == "chosen" else "chosen"
            return name, (
                f"has nothing after the {k} message{'s' * (k != 1)} it shares with '{other}' "
                "(the implicit prompt)"
            )
    return chosen[:k], chosen[k:], rejected[k:]


def _row_types(
    i: int,
    values: dict[str, np.ndarray],
    is_list: dict[str, np.ndarray],
    is_str: dict[str, np.ndarray],
    explicit: bool,
    line: int,
    prompt_line: int,
    errors: dict[str, dict[int, str]],
) -> bool:
    """Record why row i's values are not those of the file's conversational format; True if any."""
    if is_str["chosen"][i]:  # a standard row in a conversational file: that is the one problem
        errors["chosen"][i] = (
            f"is a string, but line {line} is a conversational row (message lists): one file holds one "
            "format, standard (strings) or conversational"
        )
        return True
    bad = False
    for name in _TEXT:
        value = values[name][i]
        implicit_prompt = name == "prompt" and not explicit
        if is_str[name][i] if implicit_prompt else is_list[name][i]:
            continue
        bad = True
        if value is MISSING:
            errors[name][i] = "is missing"
        elif _is_null(value):
            hint = " (leave the prompt column out for an implicit prompt)" if name == "prompt" else ""
            errors[name][i] = "is null" + hint
        elif name == "rejected":
            errors[name][i] = f"must be a message list, as 'chosen' is, got {describe(value)}"
        elif name == "prompt" and (is_str[name][i] or is_list[name][i]):
            mine, theirs = ("a string", "a message list") if explicit else ("a message list", "a string")
            errors[name][i] = (
                f"is {mine}, but line {prompt_line}'s prompt is {theirs}: one file holds one format "
                "(message lists for an explicit prompt; no prompt column for an implicit one)"
            )
        else:
            errors[name][i] = f"must be a message list, got {describe(value)}"
    return bad


def _refuse_lists(
    is_list: dict[str, np.ndarray],
    is_str: dict[str, np.ndarray],
    line: int,
    errors: dict[str, dict[int, str]],
) -> None:
    """In a standard source, the reason for every list value."""
    for name in _TEXT:
        for i in np.flatnonzero(is_list[name]):
            if name != "chosen" and is_str["chosen"][i]:
                errors[name][int(i)] = (
                    "is a message list but 'chosen' is a string: a row's prompt, chosen and rejected are all "
                    "strings (standard format) or all message lists (conversational)"
                )
            else:
                errors[name][int(i)] = (
                    f"is a message list, but line {line} is a standard row (strings): one file holds one "
                    "format, standard or conversational (message lists)"
                )


def _checks(errors: dict[str, dict[int, str]], n: int) -> list[Check]:
    checks = []
    for name in _TEXT:
        reasons = errors[name]
        if reasons:
            mask = np.zeros(n, dtype=bool)
            mask[list(reasons)] = True
            checks.append(Check(mask, name, reasons.__getitem__))
    return checks


def _may_hold_lists(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.StringDtype) or series.dtype != object:
        return False
    return pd.api.types.infer_dtype(series, skipna=False) != "string"


def _strings(objects: np.ndarray) -> np.ndarray:
    return np.frompyfunc(lambda v: isinstance(v, str), 1, 1)(objects).astype(bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)
