"""Embedding a dataset's text tables, and opening the cache of an encoder."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pluralign.data.comparisons import PreferenceData
from pluralign.encoders.base import Encoder
from pluralign.encoders.cache import EmbeddingCache, embed_texts, text_keys
from pluralign.errors import PluralignError


def cache_subdir(encoder_id: str) -> str:
    """Directory name of an encoder's cache: a readable form of its id plus a hash of the exact id."""
    readable = re.sub(r"[^A-Za-z0-9._]+", "_", encoder_id).strip("_.")[:60] or "encoder"
    return f"{readable}-{hashlib.sha256(encoder_id.encode('utf-8')).hexdigest()[:8]}"


def open_cache(cache_dir: str | Path, encoder: Encoder) -> EmbeddingCache:
    """The embedding cache of ``encoder`` in its own subdirectory of ``cache_dir`` (created if needed).

    One ``cache_dir`` can thus serve any number of encoders. Opening does not load the encoder's model.
    """
    root = Path(cache_dir).expanduser()
    cache = EmbeddingCache(root / cache_subdir(encoder.id), encoder.id)
    cache.root = root
    return cache


def embed_data(
    data: PreferenceData,
    encoder: Encoder,
    cache: EmbeddingCache | str | Path | None = None,
    context_encoder: Encoder | None = None,
    *,
    context_cache: EmbeddingCache | str | Path | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> PreferenceData:
    """``data`` with vectors for its item and context tables (each distinct text encoded at most once).

    Contexts use ``context_encoder`` (default: ``encoder``); empty prompts are encoded like any text.
    ``cache`` may be an ``EmbeddingCache`` or a directory for ``open_cache``. Contexts share it when the
    encoders are the same; otherwise they use ``context_cache``, or a sibling cache when ``cache`` was
    opened with ``open_cache``, or none.
    """
    context_encoder = encoder if context_encoder is None else context_encoder
    if isinstance(cache, str | Path):
        cache = open_cache(cache, encoder)
    if isinstance(context_cache, str | Path):
        context_cache = open_cache(context_cache, context_encoder)
    if context_cache is None and cache is not None:
        if context_encoder.id == encoder.id:
            context_cache = cache
        elif cache.root is not None:
            context_cache = open_cache(cache.root, context_encoder)
    items = embed_texts(
        data.items.tolist(), encoder, cache=cache, batch_size=batch_size, show_progress=show_progress
    )
    contexts = embed_texts(
        data.contexts.tolist(),
        context_encoder,
        cache=context_cache,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return data.with_vectors(items, contexts)


def text_shards(texts: Sequence[str], encoder_id: str, n_shards: int) -> np.ndarray:
    """Shard (0..n_shards-1) of each text: its cache key modulo n_shards, so the split depends on the
    text alone (not on file order), and n processes embedding one shard each cover every text once."""
    keys = text_keys(encoder_id, texts)
    head = np.ascontiguousarray(keys.view(np.uint8).reshape(len(keys), 32)[:, :8]).view(">u8").reshape(-1)
    return (head % np.uint64(n_shards)).astype(np.int64)


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 0 <= i < n."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise PluralignError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= index < count:
        raise PluralignError(f"--shard {spec}: need 0 <= I < N")
    return index, count
