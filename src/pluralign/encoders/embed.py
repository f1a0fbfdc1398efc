"""Embedding a dataset's text tables, and opening the cache of an encoder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pluralign.data.comparisons import PreferenceData
from pluralign.encoders.base import Encoder
from pluralign.encoders.cache import EmbeddingCache, embed_texts


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
