"""Prefix vectors of texts from a frozen encoder, for the cumulative loss of Tiny models.

For each text, one vector per token position: the mean of the token states up to that position (L2-
normalized when the encoder normalizes), so the last one is the text's ordinary embedding. They are
stored ragged, one row per token with no padding, in float16 by default (half the memory of float32;
the heads see float32), and optionally cached on disk as one safetensors file per (encoder, texts).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pluralign.atomic import atomic_write
from pluralign.encoders.base import Encoder
from pluralign.encoders.tokenized import TokenTable, inspect_model_dir
from pluralign.errors import PluralignError

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "token-prefixes"


@dataclass(frozen=True)
class PrefixFeatures:
    """Row ``tokens.offsets[i] + j`` of ``vectors`` is the vector of text i's prefix ending at token j."""

    vectors: torch.Tensor
    tokens: TokenTable

    def last(self) -> torch.Tensor:
        """The full-text vector of every text (its last prefix), float32 [n, D]."""
        return self.vectors[self.tokens.offsets[1:] - 1].float()


def prefix_features(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    dtype: torch.dtype = torch.float16,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> PrefixFeatures:
    """Prefix vectors of ``texts`` from a (frozen) sentence-transformers encoder with mean pooling.

    With ``cache_dir`` the result is stored in ``cache_dir/token-prefixes/`` and read back next time.
    """
    from pluralign.encoders.sentence import SentenceTransformerEncoder

    if not isinstance(encoder, SentenceTransformerEncoder):
        raise PluralignError(
            f"the cumulative loss needs token-level features from a text encoder (a sentence-transformers/"
            f"HF model directory), not {type(encoder).__name__}: precomputed vectors have no tokens"
        )
    texts = [str(t) for t in texts]
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{encoder.id}\0{dtype}\0".encode())
        for text in texts:
            encoded = text.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
        path = Path(cache_dir).expanduser() / CACHE_SUBDIR / f"{digest.hexdigest()[:32]}.safetensors"
        if path.is_file():
            cached = _read(path, len(texts), dtype)
            if cached is not None:
                return cached
    normalize = encoder.normalize or inspect_model_dir(encoder.model_path).normalize
    model = encoder.load_model()
    tokens = _tokens(model, texts)
    states = model.encode(
        texts,
        output_value="token_embeddings",
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=False,
    )
    lengths = torch.tensor([len(s) for s in states], dtype=torch.int64)
    if not torch.equal(lengths, tokens.lengths):
        raise PluralignError("the encoder's token states do not match its tokenizer's token counts")
    flat = torch.cat([s.detach().to(torch.float64).cpu() for s in states]) if states else torch.zeros(0, 1)
    # segment-wise cumulative mean over the ragged rows: one global cumsum minus each row's start
    totals = torch.cumsum(flat, 0)
    starts = tokens.offsets[:-1]
    before = torch.cat([torch.zeros(1, flat.shape[1], dtype=flat.dtype), totals])[starts]
    row = torch.repeat_interleave(torch.arange(len(texts)), lengths)
    position = torch.arange(len(flat)) - starts[row]
    vectors = ((totals - before[row]) / (position + 1)[:, None]).float()
    if normalize:
        vectors = F.normalize(vectors, dim=-1)
    features = PrefixFeatures(vectors.to(dtype), tokens)
    if path is not None:
        _write(path, features)
    return features


def _tokens(model, texts: list[str]) -> TokenTable:
    """Token ids as the sentence-transformers model feeds them (its tokenizer and max_seq_length)."""
    return TokenTable.from_texts(model.tokenizer, texts, int(model.max_seq_length))


def _write(path: Path, features: PrefixFeatures) -> None:
    from safetensors.torch import save

    blob = save(
        {
            "vectors": features.vectors.contiguous(),
            "ids": features.tokens.ids.contiguous(),
            "offsets": features.tokens.offsets.contiguous(),
        }
    )
    atomic_write(path, lambda handle: handle.write(blob))


def _read(path: Path, n_texts: int, dtype: torch.dtype) -> PrefixFeatures | None:
    """The cached features, or None (with a warning) when the file is unreadable or inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(str(path))
        vectors, ids, offsets = stored["vectors"], stored["ids"], stored["offsets"]
    except (SafetensorError, OSError, KeyError) as exc:
        logger.warning("ignoring unreadable token-prefix cache %s (%s)", path, exc)
        return None
    if len(offsets) != n_texts + 1 or len(vectors) != len(ids) or int(offsets[-1]) != len(ids):
        logger.warning("ignoring inconsistent token-prefix cache %s", path)
        return None
    return PrefixFeatures(vectors.to(dtype), TokenTable(ids, offsets))
