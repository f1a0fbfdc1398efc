"""Keys and checksums of the embedding cache: which text a row is, and whether its bytes are intact.

A text's key is sha256(encoder_id + "\\0" + text) (32 bytes). A shard's name carries the sha256 of its keys
and vector bytes; each row also has a 64-bit checksum over its key and vector words, so that a read checks
only the rows it touches. Sorted key tables are searched through their first 8 bytes as uint64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

KEY_DTYPE = np.dtype("S32")
VEC_DTYPE = np.dtype("<f4")


def text_keys(encoder_id: str, texts: Sequence[str]) -> np.ndarray:
    """sha256(encoder_id + "\\0" + text) of each text, as an S32 array."""
    base = hashlib.sha256(encoder_id.encode("utf-8") + b"\0")

    def digest(text: str) -> bytes:
        h = base.copy()
        # surrogatepass: lone surrogates (possible in JSON input) must hash, not crash.
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    return np.frombuffer(b"".join(map(digest, texts)), dtype=KEY_DTYPE).copy()


def shard_checksum(keys: np.ndarray, vectors: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
    digest.update(np.ascontiguousarray(vectors).tobytes())
    return digest.hexdigest()[:24]


def _multipliers(n: int) -> np.ndarray:
    """n fixed odd 64-bit numbers (splitmix64 of 1..n), the weights of the row checksum."""
    z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) | np.uint64(1)


def row_sums(keys: np.ndarray, vectors: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """Checksum of each (key, vector) row: its 32-bit words times fixed odd weights, summed mod 2**64.

    Any change confined to one word (every single-bit or single-byte error) changes the sum, since an odd
    weight times a nonzero difference below 2**32 is never 0 mod 2**64; wider damage goes unseen with
    probability about 2**-64. Vectorized, in chunks of rows to bound the uint64 temporaries.
    """
    n = len(keys)
    key_words = np.ascontiguousarray(keys, dtype=KEY_DTYPE).view("<u4").reshape(n, 8)
    vec_words = np.ascontiguousarray(vectors, dtype=VEC_DTYPE).view("<u4").reshape(n, -1)
    weights = _multipliers(8 + vec_words.shape[1])
    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        words = np.concatenate([key_words[part], vec_words[part]], axis=1).astype(np.uint64)
        out[part] = words @ weights  # integer matmul wraps mod 2**64, as intended
    return out


def key_prefix(keys: np.ndarray) -> np.ndarray:
    """First 8 bytes of each key as big-endian uint64: same order as the bytes, but compared natively."""
    raw = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), 32)[:, :8]
    return np.ascontiguousarray(raw).view(">u8").reshape(len(keys)).astype(np.uint64)
