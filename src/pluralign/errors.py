"""Errors that pluralign reports to users instead of tracebacks."""

from __future__ import annotations

from pathlib import Path


class PluralignError(Exception):
    """Base class for errors with a message meant for the user (the CLI exits with code 2)."""


class DataError(PluralignError, ValueError):
    """Bad input data, located by file, line and field where known.

    ``line`` is 1-based: a JSONL/CSV line number (CSV counts the header as line 1), or the row number
    (1-based) for Parquet and HF datasets.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = ":".join(str(p) for p in (self.path, line) if p is not None)
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class CheckpointError(PluralignError):
    """A checkpoint directory is missing, corrupt, or of the wrong kind."""
