"""The reward service: `pluralign serve` and `pluralign score-remote`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import (
    CacheOpt,
    EncoderOpt,
    JsonOut,
    Verbose,
    app,
    command,
    emit,
    err_console,
    setup,
)
from pluralign.errors import PluralignError


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
    setup(verbose)
    import torch

    from pluralign.extras import require
    from pluralign.serve import create_app

    uvicorn = require("serve", "uvicorn")

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
    setup(verbose)
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
