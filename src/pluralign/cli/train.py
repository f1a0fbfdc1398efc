"""`pluralign train` and `select-k`; their hyperparameter options come from the estimators' table."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pluralign.cli.common import (
    JsonOut,
    ModelKind,
    Verbose,
    app,
    command,
    console,
    emit,
    err_console,
    print_table,
    setup,
    show_progress,
    with_hyperparameters,
)
from pluralign.errors import PluralignError
from pluralign.estimator.params import LARGE_EXTRA, PEER_EXTRA, TINY_PARAMS
from pluralign.report.inputs import TRAIN_RUN

#: the run's options, written by `pluralign train --out RUN` and read back by `--resume RUN` (and `report`)
RUN_FILE = TRAIN_RUN
CHECKPOINTS = "checkpoints"
#: select-k sets K per fit and seeds each fold itself (its own --k and --seed); it writes no checkpoints
SELECT_K_EXCLUDED = ("n_prototypes", "seed", "checkpoint_every", "checkpoint_seconds")
#: hyperparameters naming files: stored as absolute paths, so --resume may run from another directory
PATH_PARAMS = ("encoder", "context_encoder", "cache_dir")


def _paths_to_str(hyper: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in hyper.items()}


def _absolute(hyper: dict[str, Any]) -> dict[str, Any]:
    out = _paths_to_str(hyper)
    for name in PATH_PARAMS:
        if out.get(name) is not None and Path(out[name]).exists():
            out[name] = str(Path(out[name]).resolve())
    return out


@app.command()
@command
@with_hyperparameters((*TINY_PARAMS, *LARGE_EXTRA, *PEER_EXTRA))  # progress, metrics, checkpoints: from OUT
def train(
    train_data: Annotated[
        Path | None, typer.Argument(metavar="[TRAIN]", help="Training preferences (not with --resume).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (model/ + metrics.jsonl).")
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(help="Validation preferences (early stopping; default: a share of each user's rows)."),
    ] = None,
    no_val: Annotated[
        bool, typer.Option("--no-val", help="No validation: train the whole step budget on every row.")
    ] = False,
    model: Annotated[
        ModelKind, typer.Option(help="Model family (lore, mf, per-user: peer methods, docs/peers.md).")
    ] = ModelKind.pal_b,
    encoder_trainable: Annotated[
        bool,
        typer.Option(
            "--encoder-trainable",
            help="PAL-Large: fine-tune the text encoder (a model directory) with the heads.",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory from its last checkpoint (its saved options)."),
    ] = None,
    nproc: Annotated[
        int, typer.Option(help="Processes on this machine (data parallel via torchrun; 1: no torchrun).")
    ] = 1,
    verbose: Verbose = False,
    as_json: JsonOut = False,
    hyper: dict[str, Any] | None = None,
) -> None:
    """Train a personalized reward model and save it to OUT/model (resumable, data parallel).

    Every hyperparameter of the estimators is an option (grouped below); those not given keep the
    estimator's default (PAL-Large's differ from Tiny's: see the docs).
    """
    setup(verbose)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch_with_torchrun(nproc))
    if resume is not None:
        if train_data is not None or out is not None:
            raise PluralignError(
                f"--resume reads the options saved in {resume / RUN_FILE}: give no TRAIN file or --out"
            )
        options = _read_run_options(resume)
        out = resume
    elif train_data is None or out is None:
        raise PluralignError("give the TRAIN file and --out RUN_DIR (or --resume RUN_DIR)")
    elif no_val and (val is not None or "val_fraction" in (hyper or {})):
        raise PluralignError("--no-val trains without validation: give no --val or --val-fraction with it")
    else:
        if no_val:
            hyper = {**(hyper or {}), "val_fraction": 0.0}
        options = {
            "train_data": str(train_data.resolve()),
            "val": None if val is None else str(val.resolve()),
            "model": model.value,
            "encoder_trainable": encoder_trainable,
            "params": _absolute(hyper or {}),
        }
    _train_run(options, out, resume is not None, as_json)


def _epochs(value: float) -> int | float:
    """Passes over the data, as a whole number when it is one."""
    return int(value) if value.is_integer() else round(value, 2)


def _relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` local processes; returns its exit code."""
    import subprocess

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "pluralign.cli", *argv])


def _read_run_options(run: Path) -> dict[str, Any]:
    path = run / RUN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        options = saved["options"]
        params = options["params"]
    except FileNotFoundError:
        raise PluralignError(f"{run}: no {RUN_FILE}; was it trained with `pluralign train --out`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PluralignError(f"{path}: unreadable run options ({exc})") from None
    if saved.get("status") == "finished":
        raise PluralignError(f"{run}: this run already finished; its model is in {run / 'model'}")
    if not (params.get("checkpoint_every") or params.get("checkpoint_seconds")):
        raise PluralignError(
            f"{run}: trained without --checkpoint-every/--checkpoint-seconds: nothing to resume"
        )
    return options


def _estimator(options: dict[str, Any], out: Path) -> Any:
    """The estimator a run trains: its class from --model / --encoder-trainable, its hyperparameters from
    the options given (the rest at the class's defaults) and the run directory's files."""
    from pluralign.estimator import BTL, PALA, PALB, LoRe, MatrixFactorization, PALALarge, PALBLarge, PerUser

    kind = ModelKind(options["model"])
    params = dict(options["params"])
    if options.get("encoder_trainable"):
        if kind not in (ModelKind.pal_a, ModelKind.pal_b):
            raise PluralignError("--encoder-trainable is for pal-a and pal-b")
        cls = PALALarge if kind is ModelKind.pal_a else PALBLarge
    else:
        large_only = sorted(set(params) & {p.name for p in LARGE_EXTRA})
        if large_only:
            flags = ", ".join("--" + name.replace("_", "-") for name in large_only)
            raise PluralignError(f"{flags}: PAL-Large options, for --encoder-trainable runs only")
        cls = {
            ModelKind.btl: BTL,
            ModelKind.pal_a: PALA,
            ModelKind.pal_b: PALB,
            ModelKind.lore: LoRe,
            ModelKind.mf: MatrixFactorization,
            ModelKind.per_user: PerUser,
        }[kind]
    foreign = sorted(set(params) - {p.name for p in cls.hyperparameters})
    if foreign:  # e.g. --dim for per-user, --user-l2 for pal-b: refused, not ignored
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise PluralignError(f"{flags}: not an option of --model {kind.value}")
    checkpointed = bool(params.get("checkpoint_every") or params.get("checkpoint_seconds"))
    return cls(
        **params,
        progress=show_progress(),
        metrics_path=out / "metrics.jsonl",
        checkpoint_dir=out / CHECKPOINTS if checkpointed else None,
    )


def _train_run(options: dict[str, Any], out: Path, resume: bool, as_json: bool) -> None:
    """Train from the run options (a fresh run or a resumed one); only rank 0 writes files and prints."""
    from pluralign.atomic import atomic_write_json
    from pluralign.training.distributed import init_from_env, shutdown

    ddp = init_from_env()
    est = _estimator(options, out)
    run_file = {"command": "pluralign train", "options": options, "world_size": ddp.world_size}
    if ddp.is_main and est.checkpoint_dir is not None and not resume:
        # what --resume reads (written only for resumable runs: bad input must leave no run directory)
        atomic_write_json(out / RUN_FILE, {**run_file, "status": "running"})
    try:
        est.fit(options["train_data"], options["val"], resume=resume)
    finally:
        shutdown()
    if not ddp.is_main:
        return
    est.save(out / "model")
    atomic_write_json(out / RUN_FILE, {**run_file, "status": "finished"})
    history = est.history_
    for note in history.notes:
        err_console.print(note, highlight=False, soft_wrap=True)
    last = history.records[-1]
    row = {
        "model": options["model"],
        "K": est.get_params().get("n_prototypes"),  # None: a model without prototypes (per-user)
        "users": len(est.users_),
        "batch": history.settings["batch_size"],
        "steps": history.steps,
        "epochs": _epochs(history.steps / history.steps_per_epoch),
        "train_acc": last["train_accuracy"],
        "val_acc": history.best_val_accuracy,
        "val": history.validation or "none",
        "seconds": round(history.seconds, 2),
        "comparisons/s": round(history.comparisons_per_second),
    }
    if ddp.world_size > 1:
        row["processes"] = ddp.world_size
    if as_json:
        row["warnings"] = est.fit_warnings_
    emit([row], as_json, title=f"training (saved to {out / 'model'})")


@app.command("select-k")
@command
@with_hyperparameters(TINY_PARAMS, exclude=SELECT_K_EXCLUDED)
def select_k_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Preferences (file or HF dataset directory).")],
    k: Annotated[str, typer.Option("--k", help="K values: a range 1..6, a list 1,2,4, or both.")] = "1..6",
    model: Annotated[ModelKind, typer.Option(help="pal-b or pal-a.")] = ModelKind.pal_b,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (seeded random splits).")] = 3,
    held_out_users: Annotated[float, typer.Option(help="Share of users held out per fold.")] = 0.2,
    test_fraction: Annotated[float, typer.Option(help="Share of each seen user's rows held out.")] = 0.2,
    shots: Annotated[int, typer.Option(help="Answers a held-out user adapts on; the rest are scored.")] = 10,
    criterion: Annotated[
        str, typer.Option(help="combined, seen_log_loss, new_few_shot_accuracy, seen_accuracy, ...")
    ] = "combined",
    n_se: Annotated[float, typer.Option(help="Noise = this many paired standard errors ...")] = 1.0,
    rel_tol: Annotated[
        float, typer.Option(help="... plus this share of the criterion's range over K.")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed (fold f uses seed + f).")] = 0,
    budget_share: Annotated[
        float, typer.Option(help="Share of the derived step budget each fit trains (0.5: half the time).")
    ] = 1.0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the full result as JSON.")] = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
    hyper: dict[str, Any] | None = None,
) -> None:
    """Choose the number of prototypes K by cross-validation over held-out comparisons and held-out users."""
    setup(verbose)
    from pluralign.selection import parse_k_values, select_k

    if model not in (ModelKind.pal_a, ModelKind.pal_b):
        raise PluralignError("select-k compares numbers of prototypes: use --model pal-b or pal-a")
    selection = select_k(
        data,
        parse_k_values(k),
        model=model.value,
        folds=folds,
        seed=seed,
        held_out_users=held_out_users,
        test_fraction=test_fraction,
        shots=shots,
        criterion=criterion,
        n_se=n_se,
        rel_tol=rel_tol,
        budget_share=budget_share,
        progress=show_progress(),
        **_paths_to_str(hyper or {}),
    )
    if out is not None:
        selection.to_json(out)
    if as_json:
        typer.echo(selection.to_json())
        return
    print_table(
        selection.table_rows(), title=f"{model.value}: cross-validation over {folds} folds (mean ± std)"
    )
    console.print(f"chosen K = {selection.chosen_k}: {selection.rule}", highlight=False, soft_wrap=True)
    het = selection.heterogeneity
    if het.get("summary"):
        console.print(het["summary"], highlight=False, soft_wrap=True)
    console.print(
        f"user weights at K = {selection.chosen_k}: mean entropy {het['weight_entropy']:.3f} (of log K), "
        f"mean distance from the mean weight {het['weight_distance']:.3f}, "
        f"effective prototypes {het['effective_k']:.2f}",
        highlight=False,
        soft_wrap=True,
    )
    if out is not None:
        console.print(f"wrote {out}", highlight=False, soft_wrap=True)
