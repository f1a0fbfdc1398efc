"""`pluralign datasets ...`: turn public datasets into preference rows (Polis conversations, hub recipes)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import JsonOut, Verbose, app, command, console, emit, setup
from pluralign.report.tables import rows_table

datasets_app = typer.Typer(
    help="Public datasets as preference rows (Polis; PRISM, summarize, PersonalLLM, Pick-a-Pic).",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")


class Encoding(StrEnum):
    question = "question"
    statement = "statement"


class VotesFrom(StrEnum):
    auto = "auto"
    participants_votes = "participants-votes.csv"
    votes = "votes.csv"


@datasets_app.command("polis")
@command
def polis(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="A Polis export folder (comments.csv, votes.csv, ...) or a folder of them."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Rows file (.jsonl, .csv, .parquet); <stem>.users.csv and <stem>.meta.json "
            "are written beside it.",
        ),
    ],
    encoding: Annotated[
        Encoding,
        typer.Option(
            help="question: prompt = the statement as a question, responses Yes/No; statement: responses "
            "'I agree: <statement>' / 'I disagree: <statement>'."
        ),
    ] = Encoding.question,
    template: Annotated[
        str | None,
        typer.Option(
            help="Prompt template replacing the encoding's, a Python format string over {statement}, "
            "{topic}, {description}, {conversation}, {comment_id}."
        ),
    ] = None,
    agree: Annotated[str | None, typer.Option(help="Response template of an agree vote.")] = None,
    disagree: Annotated[str | None, typer.Option(help="Response template of a disagree vote.")] = None,
    min_votes: Annotated[
        int, typer.Option(help="Skip users with fewer agree/disagree votes (counted).", min=1)
    ] = 1,
    include_moderated: Annotated[
        bool, typer.Option("--include-moderated", help="Keep votes on moderated-out statements.")
    ] = False,
    votes_from: Annotated[
        VotesFrom,
        typer.Option(help="Where final votes come from (auto: participants-votes.csv if present)."),
    ] = VotesFrom.auto,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Polis votes as comparisons: agree/disagree -> chosen/rejected; passes and the rest skipped, counted.

    Data gathered with Polis is CC BY 4.0: the attribution goes into <stem>.meta.json.
    """
    setup(verbose)
    from dataclasses import replace

    from pluralign.datasets.polis import ENCODINGS, read_polis, write_polis

    overrides = {"prompt": template, "agree": agree, "disagree": disagree}
    row_template = replace(ENCODINGS[encoding.value], **{k: v for k, v in overrides.items() if v is not None})
    data = read_polis(
        directory,
        template=row_template,
        min_votes=min_votes,
        include_moderated=include_moderated,
        votes_from=votes_from.value,
    )
    paths = write_polis(data, out)
    lines = data.report.table()
    title = f"Polis: {data.report.totals()['rows']:,} rows in {out}"
    if as_json:
        emit(lines, as_json=True)
    else:
        table = rows_table(lines, title)
        for column in table.columns:  # long names wrap instead of being cut off in narrow terminals
            column.overflow = "fold"
        console.print(table)
        skipped = data.report.skipped()
        reasons = "; ".join(
            f"{kind}: " + ", ".join(f"{n:,} {reason}" for reason, n in counts.items() if n)
            for kind, counts in skipped.items()
            if any(counts.values())
        )
        console.print(f"skipped ({reasons or 'nothing'})", highlight=False, soft_wrap=True)
        console.print(
            f"wrote {paths['users']} and {paths['metadata']} (attribution: CC BY 4.0, "
            "The Computational Democracy Project)",
            highlight=False,
            soft_wrap=True,
        )


class HubName(StrEnum):
    prism = "prism"
    summarize = "summarize"
    summarize_length = "summarize-length"
    personalllm = "personalllm"
    pickapic = "pickapic"


class RowsFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


@datasets_app.command("prepare")
@command
def prepare(
    name: Annotated[HubName, typer.Argument(help="The dataset recipe (docs/datasets/hub.md).")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output directory: <part>.<format> rows, users.csv, meta.json."),
    ],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="A local copy of the dataset (its files as the hub ships them); without it the hub is used "
            "through datasets.load_dataset (not offline).",
        ),
    ] = None,
    rows_format: Annotated[
        RowsFormat, typer.Option("--format", help="Format of the rows files.")
    ] = RowsFormat.jsonl,
    seed: Annotated[int | None, typer.Option(help="summarize-length, personalllm: the seed.")] = None,
    n_users: Annotated[int | None, typer.Option(help="personalllm: simulated users.", min=1)] = None,
    alpha: Annotated[float | None, typer.Option(help="personalllm: Dirichlet concentration.")] = None,
    pairs_per_user: Annotated[
        int | None, typer.Option(help="personalllm: comparisons per user and split.", min=1)
    ] = None,
    prompt_format: Annotated[
        str | None,
        typer.Option(help="summarize, summarize-length: 'tldr' (subreddit, title, post) or 'post'."),
    ] = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Build preference rows from a hub dataset: rows per part, users.csv and meta.json (license,
    attribution, and every skipped record by reason)."""
    setup(verbose)
    from pluralign.datasets.hub import RECIPES, write_hub
    from pluralign.datasets.hub import prepare as prepare_hub

    given = {
        "seed": seed,
        "n_users": n_users,
        "alpha": alpha,
        "pairs_per_user": pairs_per_user,
        "prompt_format": prompt_format,
    }
    given = {k: v for k, v in given.items() if v is not None}
    takes = RECIPES[name.value].options
    unknown = sorted(set(given) - set(takes))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{name.value} does not take {flags}")
    data = prepare_hub(name.value, source_dir=source, **given)
    paths = write_hub(data, out, format=rows_format.value)
    lines = data.table()
    if as_json:
        emit(lines, as_json=True)
        return
    console.print(
        rows_table(lines, f"{name.value}: {data.rows():,} rows, {len(data.users):,} users in {out}")
    )
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in data.skipped.items() if n) or "nothing"
    console.print(f"skipped: {skipped}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {', '.join(p.name for p in paths.values())}; license: {data.card.license}",
        highlight=False,
        soft_wrap=True,
    )
