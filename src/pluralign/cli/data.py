"""Data commands: `pluralign synth`, `pluralign persona build`, `pluralign embed`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pluralign.cli.common import (
    EncoderOpt,
    JsonOut,
    Verbose,
    app,
    command,
    emit,
    persona_app,
    setup,
    show_progress,
)
from pluralign.errors import PluralignError


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
    setup(verbose)
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
    setup(verbose)
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
    setup(verbose)
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
    loading = time.perf_counter()
    if (~hit).any() and hasattr(enc, "load_model"):
        enc.load_model()  # the model load is reported apart: texts/s is the encoding rate
    start = time.perf_counter()
    embed_texts(
        unique.tolist(),
        enc,
        cache=store,
        batch_size=batch_size,
        show_progress=show_progress(),
        flush_every=flush_every,
    )
    seconds = time.perf_counter() - start
    new = int((~hit).sum())
    emit(
        [
            {
                "texts": len(unique),
                "from_cache": int(hit.sum()),
                "encoded": new,
                "load_seconds": round(start - loading, 2),
                "seconds": round(seconds, 2),
                "texts_per_s": round(new / seconds, 1) if new and seconds > 0 else None,
                "encoder": enc.id,
            }
        ],
        as_json,
    )
