"""What every `pluralign` command shares: the Typer apps, consoles, error handling, output, common options,
and the hyperparameter options derived from ``pluralign.estimator.params`` (never written by hand)."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pluralign.errors import PluralignError
from pluralign.estimator.params import Param
from pluralign.report.tables import rows_table

app = typer.Typer(
    help="pluralign: personalized reward models from heterogeneous preferences (PAL, BTL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Reproducible experiments and benchmarks (JSON + table + plots).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
persona_app = typer.Typer(help="The PAL paper's Persona dataset (App. D.4).", no_args_is_help=True)
app.add_typer(persona_app, name="persona")


def _console(stderr: bool = False) -> Console:
    """A console for stdout or stderr. On a terminal, rich fits tables to its width; piped into a file,
    it would cut them to 80 columns (``unsee...``): there, nothing is cut or wrapped."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


#: the width of output that goes into a pipe or file (wide enough that no table is ever cut)
PIPE_WIDTH = 1000
console = _console()
err_console = _console(stderr=True)


def show_progress() -> bool:
    """Progress bars only when stderr is a terminal: piped into a log, they would be kilobytes of
    carriage returns."""
    return err_console.is_terminal


class ModelKind(StrEnum):
    pal_a = "pal-a"
    pal_b = "pal-b"
    btl = "btl"
    #: the peer methods (pluralign.estimator.peers)
    lore = "lore"
    mf = "mf"
    per_user = "per-user"


class Loss(StrEnum):
    logistic = "logistic"
    hinge = "hinge"
    cumulative = "cumulative"
    cumulative_mean = "cumulative-mean"


def setup(verbose: bool) -> None:
    """Offline hub, and logging to stderr (INFO with --verbose)."""
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
        except PluralignError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (ValueError, FileNotFoundError) as exc:
            # Bad option values reach us as ValueError from config validation.
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    console.print(rows_table(rows, title) if rows else "(no rows)")


def emit(rows: list[dict[str, Any]], as_json: bool, title: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, title)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Threads = Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")]


def set_threads(n: int) -> None:
    """``--threads``: torch's CPU threads for this process (0 leaves torch's default)."""
    if n < 0:
        raise ValueError(f"--threads must be >= 0, got {n}")
    if n:
        import torch

        torch.set_num_threads(n)


EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        help="Sentence-transformers/HF model directory, or a .npz/.parquet file of precomputed vectors "
        "keyed by text. Default: all-MiniLM-L6-v2 (offline).",
    ),
]
RunDir = Annotated[Path, typer.Argument(help="Run directory (or its model/ directory).")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Embedding cache directory.")]


# --------------------------------------------------------------------------------------------------------
# hyperparameter options, derived from the estimators' table
def _annotation(param: Param) -> Any:
    """The option of one hyperparameter: its flag (plus aliases), help, group panel and type."""
    names = [param.flag, *param.aliases]
    default = param.default
    info = {"help": param.help, "rich_help_panel": f"Hyperparameters: {param.group}"}
    if param.type is bool:
        return Annotated[bool, typer.Option(f"{param.flag}/--no-{param.flag[2:]}", *param.aliases, **info)]
    base = [t for t in typing.get_args(param.type) if t is not type(None)] or [param.type]
    if type(None) in typing.get_args(param.type) and default is not None:
        # a value or "none": parsed by _parse (typer cannot take None for an option that has a default)
        return Annotated[str, typer.Option(*names, metavar=base[0].__name__.upper() + "|none", **info)]
    return Annotated[base[0] | None if default is None else base[0], typer.Option(*names, **info)]


def _default(param: Param) -> Any:
    """The option's default as typer holds it (a string where the value may also be "none")."""
    if type(None) in typing.get_args(param.type) and param.default is not None:
        return str(param.default)
    return param.default


def _parse(param: Param, value: Any) -> Any:
    if isinstance(value, str) and type(None) in typing.get_args(param.type):
        if value.strip().lower() == "none":
            return None
        base = next(t for t in typing.get_args(param.type) if t is not type(None))
        try:
            return base(value)
        except ValueError:
            raise typer.BadParameter(f"expected {base.__name__} or 'none', got {value!r}") from None
    return value


#: the name under which typer hands the click context to a command with derived options
CONTEXT = "hyperparameter_context"


def with_hyperparameters(
    params: Sequence[Param], exclude: Sequence[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an option for every CLI hyperparameter of ``params`` (but ``exclude``) to a command.

    The command receives ``hyper``: the hyperparameters given on the command line (name -> value), so the
    estimator's own defaults apply to the rest (PAL-Large's differ from Tiny's). ``--help`` shows the Tiny
    defaults, grouped as in ``pluralign.estimator.params``.
    """
    chosen = [p for p in params if p.cli and p.name not in exclude]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != "hyper"]
        added = [
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=_default(p), annotation=_annotation(p)
            )
            for p in chosen
        ]
        clash = {p.name for p in kept} & {p.name for p in added}
        if clash:
            raise TypeError(f"{func.__name__}: options {sorted(clash)} are also hyperparameters")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(CONTEXT)
            hyper = {}
            for param in chosen:
                value = kwargs.pop(param.name)
                # typer's context (its own click): compare the source by name, not by enum identity
                if getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT") != "DEFAULT":
                    hyper[param.name] = _parse(param, value)
            return func(*args, hyper=hyper, **kwargs)

        positional = [p for p in kept if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in kept if p.kind is inspect.Parameter.KEYWORD_ONLY]
        context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = [*positional, *keyword, *added, context]
        wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return wrapper

    return decorate
