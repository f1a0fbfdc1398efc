"""What every `pluralign` command shares: error handling, logging setup, consoles, tables, common options."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from pluralign.errors import PluralignError
from pluralign.report.tables import rows_table

__all__ = ["JsonOut", "Verbose", "command", "console", "emit", "err_console", "print_table", "setup"]

console = Console()
err_console = Console(stderr=True)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def setup(verbose: bool) -> None:
    """Offline hub access, and logging to stderr (INFO with --verbose, else WARNING)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-facing errors into one clear line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PluralignError, ValueError, FileNotFoundError) as exc:
            # Bad option values reach us as ValueError from config validation.
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    console.print(rows_table(rows, title) if rows else "(no rows)")


def emit(rows: list[dict[str, Any]], as_json: bool, title: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, title)
