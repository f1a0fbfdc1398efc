"""`pluralign explain RUN DATA`: what each prototype favours and disfavours, how users spread over them."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pluralign.cli.common import (
    CacheOpt,
    EncoderOpt,
    JsonOut,
    RunDir,
    Verbose,
    app,
    command,
    console,
    err_console,
    setup,
)
from pluralign.errors import DataError
from pluralign.report.tables import rows_table

if TYPE_CHECKING:
    from pluralign.report.explain import Explanation


class Unit(StrEnum):
    auto = "auto"
    prompt = "prompt"
    response = "response"


@app.command()
@command
def explain(
    run: RunDir,
    data: Annotated[Path, typer.Argument(help="Preferences whose prompts and responses are scored.")],
    users: Annotated[
        Path | None,
        typer.Option(
            help="Users CSV with user_id and a group column (default: DATA's <stem>.users.csv if present, "
            "as `pluralign datasets polis` writes it)."
        ),
    ] = None,
    group_column: Annotated[str, typer.Option(help="The users file's group label column.")] = "group_id",
    top: Annotated[int, typer.Option(help="Units shown per prototype and direction.", min=1)] = 5,
    unit: Annotated[
        Unit,
        typer.Option(help="prompt (one pair of responses per prompt), response, or auto (prompt if it can)."),
    ] = Unit.auto,
    width: Annotated[
        int, typer.Option(help="Text width in the tables (0: whole; --json: always whole).")
    ] = 80,
    encoder: EncoderOpt = None,
    cache: CacheOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """What each prototype stands for: the prompts (or responses) it favours most and least relative to the
    other prototypes, and how users spread over prototypes (with the ARI against group labels, if known).

    score_k = m_k - mean of the other prototypes' m_j, with m_k = r_k(positive) - r_k(negative) per prompt
    (Polis: how much prototype k agrees with the statement) or, per response, its reward centred within its
    prompt; r_k is the reward of a user with weight 1 on prototype k (docs/explain.md).
    """
    setup(verbose)
    from pluralign.estimator import PALEstimator
    from pluralign.report.explain import default_users_file, explain, read_groups

    est = PALEstimator.load(run)
    overrides = {"encoder": encoder, "cache_dir": cache}
    est.set_params(**{k: v for k, v in overrides.items() if v is not None})
    if users is None and (found := default_users_file(data)) is not None:
        try:
            read_groups(found, group_column)
        except DataError as exc:  # a users file we were not asked for: say why it is not used
            err_console.print(f"not using {found} ({exc.reason})", highlight=False, soft_wrap=True)
        else:
            users = found
    result = explain(est, data, users, top=top, unit=unit.value, group_column=group_column)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    _print(result, width)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _print(result: Explanation, width: int) -> None:
    say = _say
    units = "prompts" if result.unit == "prompt" else "prompt-response pairs"
    say(
        f"{result.estimator}, K = {result.n_prototypes}: {result.n_units:,} {units} in {result.n_rows:,} "
        f"rows of {result.source}"
    )
    say(result.definition)
    chose = f"chose {result.positive}" if result.positive else "chose the positive response"
    if result.unit == "response":
        chose = "chose this response"
    say(f"share: of the unit's rows, those that {chose}; rows_k, share_k: the same over users of prototype k")
    for proto in result.prototypes:
        for which, verb in (("favours", "favours most"), ("disfavours", "favours least")):
            table = rows_table(
                result.unit_rows(proto.prototype, which, width), f"prototype {proto.prototype} {verb}"
            )
            for column in table.columns:  # narrow terminals wrap the text instead of cutting it
                column.overflow = "fold"
            console.print(table)
    console.print(rows_table(result.user_rows(), "users by dominant prototype (largest weight), its lean"))
    u = result.users
    if u["n_users"]:
        say(
            f"{u['n_users']:,} users: mean weight entropy {u['entropy']:.3f} of log K, mean distance from "
            f"the mean weight {u['distance']:.3f}, prototypes a user mixes {u['user_effective_k']:.2f} "
            f"(mean exp entropy), prototypes the population uses {u['effective_k']:.2f}"
        )
    groups = result.groups
    if groups is not None:
        if groups["source"]:
            say(f"groups: column {groups['column']} of {groups['source']}")
        say("users by group (rows) and dominant prototype (columns p0, p1, ...):")
        console.print(rows_table(result.contingency_rows()))
        ari = "n/a" if groups["ari"] is None else f"{groups['ari']:.3f}"
        say(
            f"adjusted Rand index of dominant prototype vs group: {ari} ({groups['n_labelled']:,} users "
            f"with a label, {groups['n_unlabelled']:,} without, {groups['n_groups']} groups)"
        )
    for note in result.notes:
        say(f"note: {note}")
