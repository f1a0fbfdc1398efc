"""The encoder interface: texts in, float32 vectors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
    """Maps texts to fixed-size float32 vectors.

    ``id`` names the encoder and everything that changes its output (model weights, normalization): it is
    part of every embedding-cache key, so two encoders must share an id only if they give the same vectors.
    ``dim`` is the vector size. ``encode`` returns a C-contiguous float32 array of shape [len(texts), dim].

    An encoder may set ``cacheable = False`` (e.g. a lookup table of precomputed vectors) so that
    ``embed_texts`` does not copy its vectors into the embedding cache.
    """

    @property
    def id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray: ...
