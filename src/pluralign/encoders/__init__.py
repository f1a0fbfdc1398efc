"""Text encoders and the on-disk embedding cache (DESIGN.md, "Encoders and the embedding cache").

Importing this package is cheap: sentence-transformers and torch load on the first encode.
"""

from pluralign.encoders.base import Encoder
from pluralign.encoders.cache import EmbeddingCache, embed_texts, text_keys
from pluralign.encoders.embed import cache_subdir, embed_data, open_cache
from pluralign.encoders.precomputed import PrecomputedEncoder, save_vectors
from pluralign.encoders.sentence import SentenceTransformerEncoder, default_encoder, default_model_path

__all__ = [
    "EmbeddingCache",
    "Encoder",
    "PrecomputedEncoder",
    "SentenceTransformerEncoder",
    "cache_subdir",
    "default_encoder",
    "default_model_path",
    "embed_data",
    "embed_texts",
    "open_cache",
    "save_vectors",
    "text_keys",
]
