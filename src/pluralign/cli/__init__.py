"""The `pluralign` command line: synth, embed, train, eval, adapt, score, demo, bench."""

from __future__ import annotations

import functools
import json
import logging
import os
import runpy
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pluralign.errors import PluralignError
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

console = Console()
err_console = Console(stderr=True)


class ModelKind(StrEnum):
    pal_a = "pal-a"
    pal_b = "pal-b"
    btl = "btl"


class Loss(StrEnum):
    logistic = "logistic"
    hinge = "hinge"
    cumulative = "cumulative"
    cumulative_mean = "cumulative-mean"


def _setup(verbose: bool) -> None:
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
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (ValueError, FileNotFoundError) as exc:
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


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
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
@app.command()
@command
def synth(
    out: Annotated[Path, typer.Argument(help="Output directory.")],
    model: Annotated[str, typer.Option(help="Generative model: pal_a or pal_b.")] = "pal_a",
    setting: Annotated[str, typer.Option(help="mixture (users inside the hull) or partition.")] = "mixture",
    dim: Annotated[int, typer.Option(help="Item dimension d.")] = 16,
    prototypes: Annotated[int, typer.Option("--prototypes", help="True number of prototypes K*.")] = 3,
    users: Annotated[int, typer.Option(help="Seen users N.")] = 100,
    train: Annotated[int, typer.Option(help="Training comparisons per seen user.")] = 100,
    val: Annotated[int, typer.Option(help="Validation comparisons per seen user.")] = 0,
    test: Annotated[int, typer.Option(help="Held-out comparisons per seen user.")] = 50,
    unseen_users: Annotated[int, typer.Option(help="Unseen users for few-shot evaluation.")] = 50,
    unseen_per_user: Annotated[int, typer.Option(help="Comparisons per unseen user.")] = 150,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Generate the PAL paper's synthetic data (Sec. 4.2 / App. D.2) as JSONL files plus item vectors."""
    _setup(verbose)
    from pluralign.datasets.synthetic import make_synthetic, write_synthetic

    dataset = make_synthetic(
        model=model,
        setting=setting,
        dim=dim,
        n_prototypes=prototypes,
        n_users=users,
        n_train=train,
        n_val=val,
        n_test=test,
        n_unseen_users=unseen_users,
        n_unseen_per_user=unseen_per_user,
        seed=seed,
    )
    files = write_synthetic(dataset, out)
    emit([{"file": str(p), "rows": n} for p, n in files.items()], False, title=f"synthetic data in {out}")


@app.command()
@command
def serve(
    model_dir: Annotated[
        Path, typer.Argument(metavar="MODEL_DIR", help="Run directory or its model/ directory.")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    state: Annotated[
        Path, typer.Option("--state", help="SQLite database of users, comparisons and weights.")
    ] = Path("state.db"),
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the bearer token (default: env PLURALIGN_TOKEN)."),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse writes (403); no token needed.")
    ] = False,
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help="Candidate pairs for next-question: JSONL/JSON of {prompt, a, b}."),
    ] = None,
    encoder: EncoderOpt = None,
    cache: CacheOpt = None,
    threads: Annotated[int, typer.Option(help="Torch threads for scoring and fitting.")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    verbose: Verbose = False,
) -> None:
    """Serve the model over HTTP (FastAPI; OpenAPI docs at /docs): score, feedback, next-question, users."""
    _setup(verbose)
    import torch
    import uvicorn

    from pluralign.serve import create_app

    token = os.environ.get("PLURALIGN_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PluralignError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise PluralignError(f"token file {token_file} is empty")
    torch.set_num_threads(threads)
    app_ = create_app(
        model_dir,
        state,
        token=token,
        read_only=read_only,
        questions=questions,
        encoder=encoder,
        cache_dir=cache,
    )
    mode = "read-only" if read_only else "read-write"
    err_console.print(
        f"pluralign serving {model_dir} ({mode}, state {state}) on http://{host}:{port}/docs",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(app_, host=host, port=port, log_level="info" if verbose else "warning", access_log=access_log)


@app.command("score-remote")
@command
def score_remote(
    response: Annotated[list[str], typer.Option("--response", "-r", help="A candidate response (repeat).")],
    user: Annotated[str, typer.Option(help="User id (unknown users get zero-shot weights).")],
    prompt: Annotated[str, typer.Option(help="The prompt / context.")] = "",
    server: Annotated[
        str, typer.Option("--server", help="Base URL of a `pluralign serve` service.")
    ] = "http://127.0.0.1:8000",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the service.")] = 30.0,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Like `pluralign score`, but asks a running service: rewards for one user, best first."""
    _setup(verbose)
    from pluralign.client import PluralignClient

    with PluralignClient(server, timeout=timeout) as client:
        result = client.score(user, prompt, response)
    rewards = result["rewards"]
    rows = [
        {"rank": r + 1, "reward": float(rewards[i]), "response": response[i]}
        for r, i in enumerate(result["order"])
    ]
    kind = "known" if result["weights"] == "fitted" else "unknown: zero-shot weights"
    emit(rows, as_json, title=f"user {user!r} ({kind}) via {server}")


#: above this many rows a JSONL copy is refused: the compact format holds 40M rows in ~74 MB, JSONL ~8 GB
MAX_JSONL_ROWS = 5_000_000


@persona_app.command("build")
@command
def persona_build(
    out: Annotated[Path, typer.Argument(help="Output directory.")],
    k_star: Annotated[int, typer.Option("--k-star", help="Number of personas K* (2..6, paper Table 7).")] = 4,
    users_per_persona: Annotated[
        int, typer.Option(help="Seen users per persona N (paper: 10,000).")
    ] = 10_000,
    queries_per_user: Annotated[
        int, typer.Option(help="Questions per seen user n_p (paper: 1,000).")
    ] = 1_000,
    unseen_users_per_persona: Annotated[int, typer.Option(help="Unseen users per persona.")] = 1_000,
    unseen_queries_per_user: Annotated[int, typer.Option(help="Questions per unseen user.")] = 1_000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder of persona JSONL files (default: the six shipped ones).")
    ] = None,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Also write seen.jsonl and unseen.jsonl rows.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Generate Persona users and their answers; write the compact dataset (and optionally JSONL rows)."""
    _setup(verbose)
    from pluralign.data import write_preferences
    from pluralign.datasets.persona import build_persona, write_persona

    dataset = build_persona(
        k_star=k_star,
        users_per_persona=users_per_persona,
        queries_per_user=queries_per_user,
        unseen_users_per_persona=unseen_users_per_persona,
        unseen_queries_per_user=unseen_queries_per_user,
        seed=seed,
        data_dir=data_dir,
    )
    rows = len(dataset.seen) + len(dataset.unseen)
    if jsonl and rows > MAX_JSONL_ROWS:
        raise PluralignError(
            f"--jsonl would write {rows:,} text rows (more than {MAX_JSONL_ROWS:,}); use the compact dataset "
            "(pluralign.datasets.persona.read_persona) or fewer users"
        )
    write_persona(dataset, out)
    if jsonl:
        write_preferences(dataset.seen, out / "seen.jsonl")
        write_preferences(dataset.unseen, out / "unseen.jsonl")
    emit(
        [
            {
                "statements": len(dataset.pool),
                "seen_users": dataset.seen.n_users,
                "seen_rows": len(dataset.seen),
                "unseen_users": dataset.unseen.n_users,
                "unseen_rows": len(dataset.unseen),
            }
        ],
        as_json,
        title=f"Persona K* = {len(dataset.personas)} ({', '.join(dataset.personas)}) in {out}",
    )


@app.command()
@command
def embed(
    data: Annotated[
        list[Path], typer.Argument(help="Preference files (JSONL, CSV, Parquet, HF dataset dir).")
    ],
    cache: Annotated[Path, typer.Option("--cache", help="Embedding cache directory.")],
    encoder: EncoderOpt = None,
    batch_size: Annotated[int, typer.Option(help="Encoder batch size.")] = 64,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: embed only shard I (0-based) of N, split by text hash; run N of these at once."
        ),
    ] = None,
    flush_every: Annotated[
        int, typer.Option(help="Store vectors every this many texts (a killed run keeps them).")
    ] = 4096,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Embed every distinct prompt and response into the on-disk cache (each text once, ever).

    Crash-safe and resumable: rerunning the same command encodes only what is not cached yet.
    """
    _setup(verbose)
    import numpy as np

    from pluralign.data import read_preferences
    from pluralign.encoders import embed_texts, open_cache
    from pluralign.encoders.embed import parse_shard, text_shards
    from pluralign.encoders.spec import encoder_from_spec

    index, count = parse_shard(shard) if shard is not None else (0, 1)
    enc = encoder_from_spec(encoder)
    store = open_cache(cache, enc)
    texts: list[str] = []
    for path in data:
        rows = read_preferences(path)
        texts += [*rows.items.tolist(), *rows.contexts.tolist()]
    unique = np.unique(np.asarray(texts, dtype=object).astype(str))
    if count > 1:
        unique = unique[text_shards(unique.tolist(), enc.id, count) == index]
    _, hit = store.get_many(unique.tolist())
    start = time.perf_counter()
    embed_texts(
        unique.tolist(), enc, cache=store, batch_size=batch_size, show_progress=True, flush_every=flush_every
    )
    seconds = time.perf_counter() - start
    new = int((~hit).sum())
    emit(
        [
            {
                "texts": len(unique),
                "from_cache": int(hit.sum()),
                "encoded": new,
                "seconds": round(seconds, 2),
                "texts_per_s": round(new / seconds, 1) if new and seconds > 0 else None,
                "encoder": enc.id,
            }
        ],
        as_json,
    )


#: the run's options, written by `pluralign train --out RUN` and read back by `--resume RUN`
RUN_FILE = "train.json"
CHECKPOINTS = "checkpoints"


@app.command()
@command
def train(
    train_data: Annotated[
        Path | None, typer.Argument(metavar="[TRAIN]", help="Training preferences (not with --resume).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (model/ + metrics.jsonl).")
    ] = None,
    val: Annotated[Path | None, typer.Option(help="Validation preferences (early stopping).")] = None,
    model: Annotated[ModelKind, typer.Option(help="Model family.")] = ModelKind.pal_b,
    k: Annotated[int, typer.Option("--k", help="Number of prototypes K.")] = 3,
    dim: Annotated[int, typer.Option(help="Latent dimension d.")] = 16,
    f_layers: Annotated[int, typer.Option(help="Layers of f (1 = linear).")] = 2,
    g_layers: Annotated[int, typer.Option(help="Layers of each g_k (PAL-B).")] = 2,
    hidden: Annotated[int | None, typer.Option(help="Hidden width (default: input width).")] = None,
    dropout: Annotated[float, typer.Option(help="Dropout in the MLPs.")] = 0.0,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Linear layers without bias.")] = False,
    loss: Annotated[Loss, typer.Option(help="Loss on the reward margin.")] = Loss.logistic,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 100,
    batch_size: Annotated[
        int, typer.Option(help="Comparisons per step (global, over all processes).")
    ] = 1024,
    lr_maps: Annotated[float, typer.Option(help="Learning rate of f (and g).")] = 5e-4,
    wd_maps: Annotated[float, typer.Option(help="Weight decay of f (and g).")] = 1e-3,
    lr_prototypes: Annotated[float, typer.Option(help="Learning rate of the prototypes.")] = 5e-3,
    lr_users: Annotated[float, typer.Option(help="Learning rate of the user weights.")] = 5e-3,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs (0: off).")] = 10,
    rows_per_context: Annotated[
        int | None, typer.Option(help="Build batches from runs of this many rows sharing a prompt.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    encoder: EncoderOpt = None,
    context_encoder: Annotated[
        str | None,
        typer.Option(
            "--context-encoder",
            help="Encoder of the prompts when it differs from --encoder (e.g. a .parquet of prompt vectors "
            "beside one of image vectors; the dimensions may differ).",
        ),
    ] = None,
    encoder_trainable: Annotated[
        bool,
        typer.Option(
            "--encoder-trainable",
            help="PAL-Large: fine-tune the text encoder (a model directory) with the heads.",
        ),
    ] = False,
    encoder_lr: Annotated[
        float, typer.Option(help="Learning rate of the encoder (--encoder-trainable).")
    ] = 1e-5,
    grad_accum_steps: Annotated[
        int, typer.Option(help="Micro-batches per optimizer step (--encoder-trainable).")
    ] = 1,
    max_length: Annotated[int, typer.Option(help="Token limit per text (--encoder-trainable).")] = 128,
    cache: CacheOpt = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Checkpoint every N steps into OUT/checkpoints (resumable).")
    ] = None,
    checkpoint_seconds: Annotated[
        float | None, typer.Option(help="Checkpoint every S seconds into OUT/checkpoints (resumable).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory from its last checkpoint (its saved options)."),
    ] = None,
    nproc: Annotated[
        int, typer.Option(help="Processes on this machine (data parallel via torchrun; 1: no torchrun).")
    ] = 1,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Train a personalized reward model and save it to OUT/model (resumable, data parallel)."""
    options = {k_: v for k_, v in locals().items() if k_ not in {"resume", "nproc", "verbose", "as_json"}}
    _setup(verbose)
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
    else:
        options = {
            k_: str(v.resolve()) if isinstance(v, Path) else getattr(v, "value", v)
            for k_, v in options.items()
        }
        if encoder is not None and Path(encoder).exists():
            options["encoder"] = str(Path(encoder).resolve())  # --resume may run from another directory
        if context_encoder is not None and Path(context_encoder).exists():
            options["context_encoder"] = str(Path(context_encoder).resolve())
    _train_run(options, out, resume is not None, as_json)


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
    except FileNotFoundError:
        raise PluralignError(f"{run}: no {RUN_FILE}; was it trained with `pluralign train --out`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PluralignError(f"{path}: unreadable run options ({exc})") from None
    if saved.get("status") == "finished":
        raise PluralignError(f"{run}: this run already finished; its model is in {run / 'model'}")
    if not (options.get("checkpoint_every") or options.get("checkpoint_seconds")):
        raise PluralignError(
            f"{run}: trained without --checkpoint-every/--checkpoint-seconds: nothing to resume"
        )
    return options


def _train_run(options: dict[str, Any], out: Path, resume: bool, as_json: bool) -> None:
    """Train from the CLI options (a fresh run or a resumed one); only rank 0 writes files and prints."""
    from pluralign.atomic import atomic_write_json
    from pluralign.estimator import BTL, PALA, PALB
    from pluralign.training.distributed import init_from_env, shutdown

    ddp = init_from_env()
    kind = ModelKind(options["model"])
    checkpointed = bool(options["checkpoint_every"] or options["checkpoint_seconds"])
    params: dict[str, Any] = {
        "f_layers": options["f_layers"],
        "g_layers": options["g_layers"],
        "hidden": options["hidden"],
        "dropout": options["dropout"],
        "bias": not options["no_bias"],
        "loss": options["loss"],
        "epochs": options["epochs"],
        "batch_size": options["batch_size"],
        "lr_maps": options["lr_maps"],
        "wd_maps": options["wd_maps"],
        "lr_prototypes": options["lr_prototypes"],
        "lr_users": options["lr_users"],
        "patience": options["patience"] or None,
        "rows_per_context": options.get("rows_per_context"),
        "seed": options["seed"],
        "encoder": options["encoder"],
        "context_encoder": options.get("context_encoder"),
        "cache_dir": options["cache"],
        "progress": True,
        "metrics_path": out / "metrics.jsonl",
        "checkpoint_dir": out / CHECKPOINTS if checkpointed else None,
        "checkpoint_every": options["checkpoint_every"],
        "checkpoint_seconds": options["checkpoint_seconds"],
    }
    if options.get("encoder_trainable"):
        from pluralign.estimator_large import PALALarge, PALBLarge

        if kind is ModelKind.btl:
            raise PluralignError("--encoder-trainable is for pal-a and pal-b")
        large = {k_: options[k_] for k_ in ("encoder_lr", "grad_accum_steps", "max_length")}
        est = (PALALarge if kind is ModelKind.pal_a else PALBLarge)(
            n_prototypes=options["k"], dim=options["dim"], **params, **large
        )
    elif kind is ModelKind.btl:
        est = BTL(**params)
    else:
        est = (PALA if kind is ModelKind.pal_a else PALB)(
            n_prototypes=options["k"], dim=options["dim"], **params
        )
    run_file = {"command": "pluralign train", "options": options, "world_size": ddp.world_size}
    if ddp.is_main and checkpointed and not resume:
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
    last = history.epochs[-1]
    row = {
        "model": kind.value,
        "K": est.n_prototypes,
        "users": len(est.users_),
        "epochs": len(history.epochs),
        "train_acc": last["train_accuracy"],
        "val_acc": history.best_val_accuracy,
        "seconds": round(history.seconds, 2),
        "comparisons/s": round(history.comparisons_per_second),
    }
    if ddp.world_size > 1:
        row["processes"] = ddp.world_size
    emit([row], as_json, title=f"training (saved to {out / 'model'})")


@app.command("select-k")
@command
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
    dim: Annotated[int, typer.Option(help="Latent dimension d.")] = 16,
    f_layers: Annotated[int, typer.Option(help="Layers of f (1 = linear).")] = 2,
    g_layers: Annotated[int, typer.Option(help="Layers of each g_k (PAL-B).")] = 2,
    hidden: Annotated[int | None, typer.Option(help="Hidden width (default: input width).")] = None,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Linear layers without bias.")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs per fit.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Comparisons per step.")] = 1024,
    lr_maps: Annotated[float, typer.Option(help="Learning rate of f (and g).")] = 5e-4,
    lr_prototypes: Annotated[float, typer.Option(help="Learning rate of the prototypes.")] = 5e-3,
    lr_users: Annotated[float, typer.Option(help="Learning rate of the user weights.")] = 5e-3,
    seed: Annotated[int, typer.Option(help="Random seed (fold f uses seed + f).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the full result as JSON.")] = None,
    encoder: EncoderOpt = None,
    cache: CacheOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Choose the number of prototypes K by cross-validation over held-out comparisons and held-out users."""
    _setup(verbose)
    from pluralign.selection import parse_k_values, select_k

    if model is ModelKind.btl:
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
        progress=True,
        dim=dim,
        f_layers=f_layers,
        g_layers=g_layers,
        hidden=hidden,
        bias=not no_bias,
        epochs=epochs,
        batch_size=batch_size,
        lr_maps=lr_maps,
        lr_prototypes=lr_prototypes,
        lr_users=lr_users,
        encoder=encoder,
        cache_dir=cache,
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


def _load(run: Path, encoder: str | None = None):
    from pluralign.estimator import PALEstimator

    model_dir = run / "model" if (run / "model").is_dir() else run
    est = PALEstimator.load(model_dir)
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
    _setup(verbose)
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
    _setup(verbose)
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
        typer.Option(help="Epochs of the grow step (default: the model's, or one training epoch's steps)."),
    ] = None,
    encoder: EncoderOpt = None,
    verbose: Verbose = False,
    as_json: JsonOut = False,
) -> None:
    """Add prototypes for new users the model explains poorly; existing users' predictions stay exact."""
    _setup(verbose)
    from pluralign.training.growth import DetectionRule

    est = _load(run, encoder)
    named = None if users is None else [u.strip() for u in users.split(",") if u.strip()]
    report = est.grow(
        data, n_new, reference=reference, users=named, rule=DetectionRule(z=z, min_gap=min_gap), epochs=epochs
    )
    target = out if out.name == "model" else out / "model"
    est.save(target)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=float))
        return
    population = report.population
    console.print(
        f"{len(report.flagged)} of {len(report.detection)} new users flagged ({report.rule}"
        + (f"; seen users' accuracy {population['accuracy']:.3f}" if population else "")
        + f"); K {report.n_prototypes_before} -> {report.n_prototypes_after}; grow step "
        f"{report.grow_seconds:.1f} s ({report.epochs} epochs), detection {report.detect_seconds:.1f} s",
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
    _setup(verbose)
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
    _setup(verbose)
    import pandas as pd

    from pluralign.serve.app import read_questions

    if answers is None and not user:
        raise PluralignError("name the users to ask: --user U (repeat) or --answers FILE with their answers")
    pool = pd.DataFrame([q.model_dump() for q in read_questions(questions)], columns=["prompt", "a", "b"])
    est = _load(run, encoder)
    chosen = est.next_questions(pool, answers, users=user or None, strategy=strategy, seed=seed)
    emit(chosen.reset_index().to_dict("records"), as_json, title=f"next question ({strategy})")


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
    _setup(verbose)
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
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML page (plots inline) summarizing a run: metrics, curves, user weights."""
    _setup(verbose)
    from pluralign.report.html import write_report

    path = write_report(run, out)
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


def main() -> None:  # pragma: no cover - console entry
    app()


from pluralign.cli.dpo import dpo_app  # noqa: E402  (the `dpo` commands; cli.dpo imports only cli.common)

app.add_typer(dpo_app, name="dpo")
