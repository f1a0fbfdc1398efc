"""The embed-through-cache function: each distinct text is encoded at most once, ever.

:func:`embed_texts` reads what :class:`~pluralign.encoders.cache.EmbeddingCache` holds, encodes the rest in
chunks and stores each chunk as soon as it is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pluralign.encoders.base import Encoder
from pluralign.encoders.cache_keys import text_keys
from pluralign.errors import PluralignError

if TYPE_CHECKING:
    from pluralign.encoders.cache import EmbeddingCache

# The cache's logger, as before embed_texts had a module of its own: logging settings keep applying.
logger = logging.getLogger("pluralign.encoders.cache")


def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    *,
    flush_every: int = 4096,
) -> np.ndarray:
    """Vectors (float32 [len(texts), dim], input order) of texts, encoding each distinct text at most once.

    Cached texts are read from ``cache``; the rest are encoded longest first (less padding) in chunks of
    ``flush_every`` texts, and each chunk is stored as soon as it is done, so an interrupted run keeps its
    work. Encoders with ``cacheable = False`` bypass the cache.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    texts = texts if isinstance(texts, list) else list(texts)
    codes, uniques = pd.factorize(np.asarray(texts, dtype=object), use_na_sentinel=False)
    uniques = list(uniques)
    for text in uniques:
        if not isinstance(text, str):
            raise PluralignError(f"can only embed strings, got {type(text).__name__} {text!r}")
    if cache is not None and not getattr(encoder, "cacheable", True):
        cache = None
    if cache is not None and cache.encoder_id != encoder.id:
        raise PluralignError(
            f"the embedding cache {cache.directory} belongs to encoder {cache.encoder_id!r}, not "
            f"{encoder.id!r}"
        )

    if cache is not None:
        keys = text_keys(cache.encoder_id, uniques)
        cached, hit = cache.get_keys(keys)
    else:
        keys = None
        cached, hit = None, np.zeros(len(uniques), dtype=bool)
    missing = np.flatnonzero(~hit)
    if cached is not None and len(cached):
        dim = cached.shape[1]
    elif cache is not None and cache.dim is not None:
        dim = cache.dim
    else:
        dim = encoder.dim
    out = np.empty((len(uniques), dim), dtype=np.float32)
    if cached is not None and len(cached):
        out[hit] = cached

    if len(missing):
        # Longest first: batches of similar length waste less padding, and memory peaks show up early.
        lengths = np.fromiter((len(uniques[i]) for i in missing), dtype=np.int64, count=len(missing))
        missing = missing[np.argsort(-lengths, kind="stable")]
        step = max(int(flush_every), 1)
        # delay: lookups that finish within a second (cache hits, precomputed vectors) show no bar
        with tqdm(
            total=len(missing), desc="embedding", unit="text", disable=not show_progress, delay=1.0
        ) as bar:
            for start in range(0, len(missing), step):
                part = missing[start : start + step]
                vectors = encoder.encode([uniques[i] for i in part], batch_size=batch_size)
                vectors = np.asarray(vectors, dtype=np.float32)
                if vectors.shape != (len(part), dim):
                    source = "its cache" if cache is not None and cache.dim is not None else "encoder.dim"
                    raise PluralignError(
                        f"encoder {encoder.id!r} returned shape {vectors.shape} for {len(part)} texts, "
                        f"expected ({len(part)}, {dim}) (dimension from {source})"
                    )
                out[part] = vectors
                if cache is not None:
                    cache.put_many([uniques[i] for i in part], vectors)
                bar.update(len(part))
    if cache is not None:
        logger.info("embedded %d new texts, %d from cache", len(missing), int(hit.sum()))
    elif len(missing):
        logger.info("embedded %d texts (no cache)", len(missing))
    return out[codes]
