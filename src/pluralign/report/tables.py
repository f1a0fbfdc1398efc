"""Lists of flat dicts as rich tables: one formatting rule for the CLI and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table


def format_cell(value: Any) -> str:
    """None as '-'; floats up to 1 in size with 4 decimals (accuracies, weights: 0.8100, 1.0000), larger ones
    with at most 4 and no trailing zeros (69.8 epochs, 147.36 s), thousands separators past 1,000; the rest
    as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        text = f"{value:.4f}"
        return text if abs(value) <= 1 else text.rstrip("0").rstrip(".")
    return str(value)


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """A table with one column per key of the first row; numbers right-aligned."""
    table = Table(title=title)
    for key, value in (rows[0] if rows else {}).items():
        table.add_column(str(key), justify="right" if isinstance(value, int | float) else "left")
    for row in rows:
        table.add_row(*(format_cell(v) for v in row.values()))
    return table
