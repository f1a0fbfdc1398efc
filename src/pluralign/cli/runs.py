"""End-to-end runs: `pluralign demo`, `pluralign report` and `pluralign bench NAME`."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import (
    Verbose,
    app,
    bench_app,
    command,
    console,
    setup,
)
from pluralign.errors import PluralignError


@app.command()
@command
def demo(
    which: Annotated[
        str, typer.Argument(help="persona (App. D.4, the default) or synthetic (Sec. 4.2).")
    ] = "persona",
    out: Annotated[Path, typer.Option("--out", help="Where runs and the results go.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: Verbose = False,
) -> None:
    """End to end: build data, embed (cached), train BTL and PAL, evaluate seen and new users."""
    setup(verbose)
    from pluralign.demo import run_persona_demo, run_synthetic_demo

    demos = {"persona": run_persona_demo, "synthetic": run_synthetic_demo}
    if which not in demos:
        raise PluralignError(f"unknown demo '{which}': choose persona or synthetic")
    demos[which](out / which, seed=seed, console=console)


@app.command()
@command
def report(
    run: Annotated[Path, typer.Argument(help="Run directory (results.json, metrics.jsonl, model/).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file to write (default: RUN/report.html).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Data whose prompts explain the prototypes (default: the run's training file)."),
    ] = None,
    users: Annotated[
        Path | None,
        typer.Option(help="Users CSV with group labels (default: the data's <stem>.users.csv if present)."),
    ] = None,
    group_column: Annotated[str, typer.Option(help="The users file's group label column.")] = "group_id",
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML page (plots inline) summarizing a run: metrics, curves, user weights, and
    what the prototypes stand for when the run's data is known."""
    setup(verbose)
    from pluralign.report.html import write_report

    path = write_report(run, out, data=data, users=users, group_column=group_column)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


BENCHMARKS = {
    "synthetic": "PAL Sec. 4.2: seen-user accuracy for K = 1..5 (K* = 3) and the few-shot curve.",
    "few-shot": "Exact batched few-shot solver vs batched Adam and per-user SLSQP.",
    "train-speed": "Training comparisons/s and peak RSS: index-based fit vs a naive DataLoader pipeline.",
    "persona": "PAL App. D.4: `full` (40M comparisons) or `sweeps` (K* x K, n_p, d, few-shot).",
    "serve-load": "`pluralign serve` under load: score/feedback throughput, p50/p99 latency, paced p99.",
    "pal-large": "PAL-B Tiny vs Large (MiniLM fine-tuned), logistic vs cumulative loss, on Persona subsets.",
    "limits": "Memory per million comparisons (RSS, anonymous), in RAM vs memory-mapped arrays, by size.",
    "grow": "Growing a prototype for an unseen persona group vs retraining from scratch (Persona, synth.).",
    "active-onboarding": "New users: answers needed to reach seen-user accuracy, active vs random questions.",
    "select-k": "Choosing K: how often select-k picks K* over seeds (synthetic, Persona) vs argmax accuracy.",
    "dpo-heterogeneous": "DPO vs MixDPO vs EM-DPO (+ MMRA) on planted user types, SmolLM2-135M.",
    "personal-policy": "Rewards to policies (SmolLM2): best-of-n, GRPO pooled vs per prototype, DPO, MMRA.",
    "defaults": "Default training settings vs a batch x lr grid, 12 rows to 4M, on 1 and 2 threads.",
    "real-data": "Leaderboard on real votes (Polis), Persona and synthetic data: every method, seen/unseen.",
}


def _register_benchmark(name: str, summary: str) -> None:
    """`pluralign bench NAME [ARGS]` runs benchmarks/NAME.py with ARGS (its own --help lists them)."""
    settings = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

    @bench_app.command(
        name, help=f"{summary} Options go to the script: see `... {name} --help`.", context_settings=settings
    )
    @command
    def run(ctx: typer.Context) -> None:
        script = Path(__file__).resolve().parents[3] / "benchmarks" / f"{name.replace('-', '_')}.py"
        if not script.is_file():
            raise PluralignError(
                f"benchmark script {script} not found: benchmarks ship with the source checkout"
            )
        sys.argv = [str(script), *ctx.args]
        runpy.run_path(str(script), run_name="__main__")


for _name, _summary in BENCHMARKS.items():
    _register_benchmark(_name, _summary)
