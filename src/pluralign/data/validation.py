"""One vectorized validation of preference rows, whatever the source format.

:func:`validate` checks every row of every column at once and raises :class:`DataError` on the first bad
row in file order (``file:line: field 'name': reason``), with the count of the other bad rows; a clean
source becomes a frame of the canonical columns plus ``_line``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pluralign.data.comparisons import COLUMNS
from pluralign.data.conversation import ChatTemplate, describe, render_rows
from pluralign.data.raw import MISSING, Check, Raw
from pluralign.errors import DataError

# Per-element kinds of an object column, see _kind.
_STR, _INT, _NULL, _ABSENT, _OTHER = range(5)


def validate(raw: Raw, *, chat_template: ChatTemplate = None) -> pd.DataFrame:
    """Check every row of every column at once; raise on the first bad row, else return a clean frame.

    Conversational rows (message lists, see :mod:`pluralign.data.conversation`) are checked and rendered
    to text first, with ``chat_template`` (role-tagged lines by default); standard rows skip that step.
    """
    n = len(raw.lines)
    if n == 0:
        raise DataError("no preference rows (the source is empty)", path=raw.where)
    checks = list(raw.problems)
    failed = np.zeros(n, dtype=bool)
    for check in checks:
        failed |= check.mask
    columns = dict(raw.columns)
    conversational = render_rows(columns, raw.lines, template=chat_template)
    if conversational is not None:
        rendered, format_checks = conversational
        columns.update(rendered)
        for check in format_checks:
            check.mask = check.mask & ~failed
            failed = failed | check.mask
            checks.append(check)
    first_column_check = len(checks)
    clean: dict[str, pd.Series] = {}
    for name in COLUMNS:
        text, column_checks = _check_text(
            columns[name], name, allow_int=name == "user_id", allow_empty=name == "prompt"
        )
        clean[name] = text
        for check in column_checks:
            check.mask = check.mask & ~failed  # pandas may hand out read-only arrays
            checks.append(check)
    usable = ~failed
    for check in checks[first_column_check:]:
        usable = usable & ~check.mask
    same = usable & (clean["chosen"] == clean["rejected"]).to_numpy(dtype=bool)
    checks.append(Check(same, "rejected", lambda i: "is identical to 'chosen'"))

    bad = np.zeros(n, dtype=bool)
    for check in checks:
        bad |= check.mask
    if bad.any():
        row = int(np.argmax(bad))
        check = next(c for c in checks if c.mask[row])
        more = int(bad.sum()) - 1
        suffix = f" (and {more} more invalid row{'s' * (more != 1)})" if more else ""
        raise DataError(
            check.reason(row) + suffix, path=raw.where, line=int(raw.lines[row]), field=check.field
        )
    frame = pd.DataFrame({name: clean[name] for name in COLUMNS})
    frame["_line"] = raw.lines
    return frame


def _check_text(
    values: pd.Series, name: str, *, allow_int: bool, allow_empty: bool
) -> tuple[pd.Series, list[Check]]:
    """Strings of a column ("" where invalid) and the checks of its values."""
    values = values.reset_index(drop=True)
    checks: list[Check] = []
    null_reason = "is null" + (" (use an empty string for no prompt)" if allow_empty else "")
    if isinstance(values.dtype, pd.StringDtype):
        # Typed string column (pyarrow readers, most frames): only nulls can be wrong.
        null = values.isna().to_numpy()
        text = values.fillna("").astype(str)
        if null.any():
            checks.append(Check(null, name, lambda i: null_reason))
    else:
        objects = values.to_numpy(dtype=object)
        inferred = pd.api.types.infer_dtype(objects, skipna=False)
        if inferred == "string":
            kinds = np.full(len(objects), _STR, dtype=np.int8)
        elif inferred == "integer" and allow_int:
            kinds = np.full(len(objects), _INT, dtype=np.int8)
        else:
            kinds = np.frompyfunc(_kind, 1, 1)(objects).astype(np.int8)
        ok = (kinds == _STR) | ((kinds == _INT) & allow_int)
        strings = np.where(ok, objects, "")
        if allow_int and (kinds == _INT).any():
            strings = np.frompyfunc(str, 1, 1)(strings)  # ints -> decimal strings, strings unchanged
        try:
            text = pd.Series(strings, dtype=str)
        except UnicodeEncodeError:  # lone surrogates, from "\ud800"-style escapes json.loads lets through
            encodable = np.frompyfunc(_encodable, 1, 1)(strings).astype(bool)
            checks.append(
                Check(~encodable, name, lambda i: "contains an unpaired surrogate (bad \\u escape)")
            )
            text = pd.Series(np.where(encodable, strings, ""), dtype=str)
        checks.append(Check(kinds == _ABSENT, name, lambda i: "is missing"))
        checks.append(Check(kinds == _NULL, name, lambda i: null_reason))
        wrong = ~ok & (kinds != _ABSENT) & (kinds != _NULL)
        expected = "a string or an integer" if allow_int else "a string"
        checks.append(Check(wrong, name, lambda i: f"must be {expected}, got {describe(objects[i])}"))
        checks = [c for c in checks if c.mask.any()]
    if not allow_empty:
        # str.strip() treats Unicode whitespace as blank too; isspace() is the vectorized equivalent.
        empty = ((text.str.len() == 0) | text.str.isspace()).to_numpy(dtype=bool)
        for check in checks:
            empty = empty & ~check.mask
        if empty.any():
            checks.append(Check(empty, name, lambda i: "is empty or only whitespace"))
    return text, checks


def _kind(value: Any) -> int:
    if type(value) is str or isinstance(value, str):
        return _STR
    if value is MISSING:
        return _ABSENT
    if value is None or value is pd.NA or value is pd.NaT:
        return _NULL
    if isinstance(value, float | np.floating) and math.isnan(value):
        return _NULL
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return _INT
    return _OTHER


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
