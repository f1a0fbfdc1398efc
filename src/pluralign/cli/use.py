"""Using a trained run: `pluralign eval`, `adapt`, `grow`, `score`, `ask`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import (
    EncoderOpt,
    JsonOut,
    RunDir,
    Verbose,
    app,
    command,
    console,
    emit,
    print_table,
    setup,
)
from pluralign.errors import PluralignError


def _load(run: Path, encoder: str | None = None):
    from pluralign.estimator import PALEstimator

    est = PALEstimator.load(run)
    if encoder is not None:
        est.encoder = encoder
    return est


@app.command("eval")
@command
def evaluate(
    run: RunDir,
    data: Annotated[list[Path], typer.Argument(help="Preference files to score.")],
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Accuracy of a trained model on preference files (unknown users get zero-shot weights)."""
    setup(verbose)
    from pluralign.data import read_preferences

    est = _load(run, encoder)
    rows = []
    for path in data:
        prefs = read_preferences(path)
        known = est.users_.get_indexer(prefs.user_ids.astype(str))[prefs.user] >= 0
        rows.append(
            {
                "file": str(path),
                "comparisons": len(prefs),
                "known_users": float(known.mean()),
                "accuracy": est.score(prefs),
            }
        )
    emit(rows, as_json, title="evaluation")


@app.command()
@command
def adapt(
    run: RunDir,
    data: Annotated[Path, typer.Argument(help="Comparisons of the (new) users to fit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the adapted model.")],
    test: Annotated[Path | None, typer.Option(help="Held-out comparisons of these users to score.")] = None,
    ridge: Annotated[float | None, typer.Option(help="Pull toward the zero-shot weights.")] = None,
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Few-shot: fit only the K weights of the users in DATA (shared maps frozen); save the model."""
    setup(verbose)
    est = _load(run, encoder)
    zero_shot = est.score(test) if test is not None else None
    weights = est.adapt(data, ridge=ridge)
    est.save(out if out.name == "model" else out / "model")
    summary = {"users_fitted": len(weights), "median_comparisons": int(weights["n_comparisons"].median())}
    if test is not None:
        summary["zero_shot_acc"] = zero_shot
        summary["few_shot_acc"] = est.score(test)
    emit([summary], as_json, title=f"adaptation (saved to {out})")


@app.command()
@command
def grow(
    run: RunDir,
    data: Annotated[Path, typer.Argument(help="Comparisons of the new users.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the grown model.")],
    n_new: Annotated[int, typer.Option("--n-new", help="Prototypes to add.")] = 1,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Comparisons of seen users (held-out ones are best): the population to compare with."
        ),
    ] = None,
    users: Annotated[
        str | None, typer.Option(help="Comma-separated new users to grow on, instead of detecting them.")
    ] = None,
    z: Annotated[float, typer.Option(help="Flag users with a z-score at or below -Z...")] = 3.0,
    min_gap: Annotated[float, typer.Option(help="...and an accuracy gap of at least this.")] = 0.05,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Epochs of the grow step (default: the grow data's step budget; for a model trained with "
            "--epochs, its epochs or one training epoch's steps)."
        ),
    ] = None,
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Add prototypes for new users the model explains poorly; existing users' predictions stay exact."""
    setup(verbose)
    from pluralign.training.growth import DetectionRule

    est = _load(run, encoder)
    named = None if users is None else [u.strip() for u in users.split(",") if u.strip()]
    grown = est.grow(
        data, n_new, reference=reference, users=named, rule=DetectionRule(z=z, min_gap=min_gap), epochs=epochs
    )
    report = grown.grow_report_
    target = out if out.name == "model" else out / "model"
    grown.save(target)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=float))
        return
    population = report.population
    console.print(
        f"{len(report.flagged)} of {len(report.detection)} new users flagged ({report.rule}"
        + (f"; seen users' accuracy {population['accuracy']:.3f}" if population else "")
        + f"); K {report.n_prototypes_before} -> {report.n_prototypes_after}; grow step "
        f"{report.grow_seconds:.1f} s ({report.steps} steps), detection {report.detect_seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    print_table(report.table(), title=f"accuracy before / after growing (saved to {target})")


@app.command()
@command
def score(
    run: RunDir,
    response: Annotated[list[str], typer.Option("--response", "-r", help="A candidate response (repeat).")],
    user: Annotated[str, typer.Option(help="User id (unknown users get zero-shot weights).")],
    prompt: Annotated[str, typer.Option(help="The prompt / context.")] = "",
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Reward of each response for one user, best first (best-of-n reranking)."""
    setup(verbose)
    est = _load(run, encoder)
    rewards = est.reward(user, prompt, response)
    order = sorted(range(len(response)), key=lambda i: -rewards[i])
    rows = [
        {"rank": r + 1, "reward": float(rewards[i]), "response": response[i]} for r, i in enumerate(order)
    ]
    known = user in est.users_
    emit(rows, as_json, title=f"user {user!r} ({'known' if known else 'unknown: zero-shot weights'})")


@app.command()
@command
def ask(
    run: RunDir,
    questions: Annotated[
        Path, typer.Argument(help="Candidate pairs: JSONL (or a JSON list) of {prompt, a, b}.")
    ],
    answers: Annotated[
        Path | None, typer.Option(help="The users' comparisons so far (preference file).")
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", "-u", help="User to ask (repeat; default: those in --answers)."),
    ] = None,
    strategy: Annotated[str, typer.Option(help="info-gain, variance, uncertainty or random.")] = "info-gain",
    seed: Annotated[int, typer.Option(help="Random seed (particles, random strategy).")] = 0,
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Active onboarding: the next question for each user, to learn their weights with the fewest answers."""
    setup(verbose)
    import pandas as pd

    from pluralign.data.questions import read_questions

    if answers is None and not user:
        raise PluralignError("name the users to ask: --user U (repeat) or --answers FILE with their answers")
    pool = pd.DataFrame(read_questions(questions), columns=["prompt", "a", "b"])
    est = _load(run, encoder)
    chosen = est.next_questions(pool, answers, users=user or None, strategy=strategy, seed=seed)
    emit(chosen.reset_index().to_dict("records"), as_json, title=f"next question ({strategy})")
