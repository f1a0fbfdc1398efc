"""Encoders as JSON: what a checkpoint records so that a loaded model can embed new texts again.

A spec is ``None`` (the default MiniLM encoder), a string (a sentence-transformers/HF model directory, or a
``.npz``/``.parquet`` file of precomputed vectors, optionally prefixed with ``precomputed:``), an
``Encoder`` object, or the dict that ``encoder_spec`` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pluralign.encoders.base import Encoder
from pluralign.encoders.precomputed import PrecomputedEncoder
from pluralign.encoders.sentence import SentenceTransformerEncoder
from pluralign.errors import PluralignError

VECTOR_SUFFIXES = (".npz", ".parquet")


def encoder_spec(encoder: Encoder | str | dict | None) -> dict[str, Any]:
    """JSON description of an encoder (the inverse of ``encoder_from_spec``)."""
    if encoder is None:
        return {"kind": "sentence-transformers", "model": None}
    if isinstance(encoder, dict):
        return encoder
    if isinstance(encoder, str | Path):
        text = str(encoder)
        if text.startswith("precomputed:") or text.endswith(VECTOR_SUFFIXES):
            return {"kind": "precomputed", "path": str(Path(text.removeprefix("precomputed:")).resolve())}
        return {"kind": "sentence-transformers", "model": str(Path(text).resolve())}
    if isinstance(encoder, SentenceTransformerEncoder):
        model = encoder.model_path
        return {"kind": "sentence-transformers", "model": None if model is None else str(model)}
    if isinstance(encoder, PrecomputedEncoder) and encoder.path is not None:
        return {"kind": "precomputed", "path": str(Path(encoder.path).resolve())}
    return {"kind": "custom", "id": getattr(encoder, "id", type(encoder).__name__)}


def encoder_from_spec(spec: Encoder | str | dict | None) -> Encoder:
    """Build the encoder a spec describes (an ``Encoder`` object is returned as is)."""
    if spec is not None and not isinstance(spec, str | Path | dict):
        return spec
    spec = encoder_spec(spec)
    kind = spec.get("kind")
    if kind == "sentence-transformers":
        return SentenceTransformerEncoder(spec.get("model"))
    if kind == "precomputed":
        return PrecomputedEncoder.from_file(spec["path"])
    raise PluralignError(
        f"the model was trained with a custom encoder ({spec.get('id')}) that cannot be rebuilt from its "
        "checkpoint: pass encoder=... when loading, or give embedded data"
    )
