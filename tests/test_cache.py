"""The embedding cache: each text encoded once, ever; crash-safe writes; damaged files named, never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pluralign.encoders import EmbeddingCache, PrecomputedEncoder, embed_texts, open_cache, text_keys
from pluralign.encoders import cache as cache_mod
from pluralign.errors import PluralignError


class CountingEncoder:
    """Deterministic fake: a text's vector depends only on the text; counts every text it encodes."""

    def __init__(self, dim: int = 8, id: str = "fake:counting") -> None:
        self.id = id
        self.dim = dim
        self.calls: list[str] = []

    def encode(self, texts, *, batch_size=64, show_progress=False):
        self.calls += list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(text.encode("utf-8", "surrogatepass")[:16].ljust(16, b"\0"), "little")
            out[i] = np.random.default_rng([seed, len(text)]).standard_normal(self.dim)
        return out


def texts_of(start: int, stop: int) -> list[str]:
    return [f"text {i}" for i in range(start, stop)]


def test_each_text_is_encoded_once_ever(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc.id)
    first = embed_texts(texts_of(0, 10) + texts_of(0, 5), enc, cache=cache)
    assert sorted(enc.calls) == sorted(texts_of(0, 10))  # duplicates within a call encoded once
    assert first.shape == (15, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first[10:], first[:5])

    enc.calls.clear()
    second = embed_texts(texts_of(5, 15), enc, cache=cache)
    assert sorted(enc.calls) == sorted(texts_of(10, 15))
    np.testing.assert_array_equal(second[:5], first[5:10])  # bit-identical from the cache

    enc.calls.clear()
    reopened = EmbeddingCache(tmp_path, enc.id)
    assert len(reopened) == 15
    third = embed_texts(texts_of(0, 16), enc, cache=reopened)
    assert enc.calls == ["text 15"]
    np.testing.assert_array_equal(third[:10], first[:10])
    np.testing.assert_array_equal(third[10:15], second[5:])


def test_cached_vectors_equal_fresh_ones_in_input_order(tmp_path):
    enc = CountingEncoder(dim=5)
    texts = ["b", "", "a", "é ünïcode ✓", "\ud800 lone surrogate", "b", "a"]
    fresh = enc.encode(texts)
    cache = EmbeddingCache(tmp_path, enc.id)
    np.testing.assert_array_equal(embed_texts(texts, enc, cache=cache), fresh)
    np.testing.assert_array_equal(embed_texts(texts, enc, cache=EmbeddingCache(tmp_path, enc.id)), fresh)
    vectors, hit = cache.get_many(["a", "missing", ""])
    assert hit.tolist() == [True, False, True]
    np.testing.assert_array_equal(vectors, enc.encode(["a", ""]))
    assert "a" in cache and "missing" not in cache


def test_no_cache_and_empty_input():
    enc = CountingEncoder()
    np.testing.assert_array_equal(embed_texts(["x", "y", "x"], enc), enc.encode(["x", "y", "x"]))
    assert embed_texts([], enc).shape == (0, 8)
    with pytest.raises(PluralignError, match="strings"):
        embed_texts(["x", None], enc)


def test_chunks_are_stored_as_they_finish(tmp_path):
    class FailingAfter(CountingEncoder):
        def encode(self, texts, **kw):
            if len(self.calls) >= 4:
                raise KeyboardInterrupt
            return super().encode(texts, **kw)

    enc = FailingAfter()
    with pytest.raises(KeyboardInterrupt):
        embed_texts(texts_of(0, 10), enc, cache=EmbeddingCache(tmp_path, enc.id), flush_every=4)
    assert len(EmbeddingCache(tmp_path, enc.id)) == 4  # the first chunk survived the interruption


def test_hits_do_not_load_the_model(tmp_path):
    from pluralign.encoders import default_encoder

    texts = ["a short sentence", "another one"]
    expected = embed_texts(texts, default_encoder(), cache=open_cache(tmp_path, default_encoder()))
    fresh = default_encoder()
    np.testing.assert_array_equal(embed_texts(texts, fresh, cache=open_cache(tmp_path, fresh)), expected)
    assert fresh._model is None


def test_open_cache_keeps_one_directory_per_encoder(tmp_path):
    a, b = CountingEncoder(id="enc:a"), CountingEncoder(dim=3, id="enc:b/with odd chars")
    embed_texts(["x"], a, cache=open_cache(tmp_path, a))
    embed_texts(["x"], b, cache=open_cache(tmp_path, b))
    assert len(list(tmp_path.iterdir())) == 2
    assert open_cache(tmp_path, b).dim == 3
    with pytest.raises(PluralignError, match="belongs to encoder"):
        embed_texts(["x"], a, cache=open_cache(tmp_path, b))


def test_precomputed_encoders_bypass_the_cache(tmp_path):
    enc = PrecomputedEncoder(["a", "b"], np.eye(2, dtype=np.float32))
    cache = open_cache(tmp_path, enc)
    np.testing.assert_array_equal(embed_texts(["b", "a"], enc, cache=cache), [[0, 1], [1, 0]])
    assert len(EmbeddingCache(cache.directory, enc.id)) == 0


# --- crash safety ----------------------------------------------------------------------------------------
def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("fail_on", [1, 2])
def test_crash_during_write_leaves_only_complete_entries(tmp_path, monkeypatch, fail_on):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc.id)
    before = embed_texts(texts_of(0, 5), enc, cache=cache)

    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_on:  # 1: the vectors file, 2: the keys file (the commit)
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        cache.put_many(texts_of(5, 10), enc.encode(texts_of(5, 10)))
    monkeypatch.undo()

    assert not [n for n in _files(tmp_path) if n.startswith(".tmp")]
    reopened = EmbeddingCache(tmp_path, enc.id)
    assert len(reopened) == 5
    vectors, hit = reopened.get_many(texts_of(0, 10))
    assert hit.tolist() == [True] * 5 + [False] * 5
    np.testing.assert_array_equal(vectors, before)
    # The interrupted texts are simply encoded again.
    enc.calls.clear()
    embed_texts(texts_of(0, 10), enc, cache=reopened)
    assert sorted(enc.calls) == sorted(texts_of(5, 10))
    assert len(EmbeddingCache(tmp_path, enc.id)) == 10


def test_leftovers_of_killed_writers_are_ignored_then_removed(tmp_path):
    enc = CountingEncoder()
    embed_texts(texts_of(0, 3), enc, cache=EmbeddingCache(tmp_path, enc.id))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = cache_mod.HOST
    truncated = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'"
    fresh_other = tmp_path / f".tmp-otherhost-123-abc-shard-{'0' * 24}.vectors.npy"
    dead_local = tmp_path / f".tmp-{host}-{dead.pid}-abc-shard-{'1' * 24}.keys.npy"
    old_other = tmp_path / "half-written.tmp"
    orphan = tmp_path / f"shard-{'2' * 24}.vectors.npy"  # vectors renamed, keys never committed
    for path in (fresh_other, dead_local, old_other, orphan):
        path.write_bytes(truncated)
    past = time.time() - 2 * cache_mod.STALE_SECONDS
    os.utime(old_other, (past, past))

    cache = EmbeddingCache(tmp_path, enc.id)
    assert len(cache) == 3
    # A fresh temp file may belong to a live writer elsewhere: it stays until it is stale.
    assert fresh_other.exists() and orphan.exists()
    assert not dead_local.exists() and not old_other.exists()
    for path in (fresh_other, orphan):
        os.utime(path, (past, past))
    EmbeddingCache(tmp_path, enc.id)
    assert not fresh_other.exists() and not orphan.exists()


# --- damaged files ---------------------------------------------------------------------------------------
def _one_shard(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc.id)
    embed_texts(texts_of(0, 20), enc, cache=cache)
    (keys,) = tmp_path.glob("shard-*.keys.npy")
    (vectors,) = tmp_path.glob("shard-*.vectors.npy")
    return enc, keys, vectors


@pytest.mark.parametrize("which", ["keys", "vectors"])
def test_truncated_shard_is_a_clear_error_naming_the_file(tmp_path, which):
    enc, keys, vectors = _one_shard(tmp_path)
    path = keys if which == "keys" else vectors
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PluralignError, match="truncated") as info:
        EmbeddingCache(tmp_path, enc.id)
    assert str(path) in str(info.value) and "delete" in str(info.value)


def test_garbage_header_and_missing_vectors_are_clear_errors(tmp_path):
    enc, keys, vectors = _one_shard(tmp_path)
    keys.write_bytes(b"not a numpy file at all")
    with pytest.raises(PluralignError, match="damaged") as info:
        EmbeddingCache(tmp_path, enc.id)
    assert keys.name in str(info.value)

    enc, keys, vectors = _one_shard(tmp_path / "second")
    vectors.unlink()
    with pytest.raises(PluralignError, match="no vectors file"):
        EmbeddingCache(tmp_path / "second", enc.id)


def test_wrong_shape_and_unsorted_keys_are_detected(tmp_path):
    enc, keys, _ = _one_shard(tmp_path)
    shuffled = np.load(keys)[::-1].copy()
    np.save(keys, shuffled)
    with pytest.raises(PluralignError, match="unsorted"):
        EmbeddingCache(tmp_path, enc.id)
    np.save(keys, shuffled[::-1][:10])
    with pytest.raises(PluralignError, match="shape"):
        EmbeddingCache(tmp_path, enc.id)


def test_damaged_vector_bytes_are_never_returned_silently(tmp_path):
    enc, _, vectors = _one_shard(tmp_path)
    data = bytearray(vectors.read_bytes())
    data[-4:] = np.float32(np.nan).tobytes()  # a NaN: caught on read
    data[-40] ^= 0xFF  # a plausible number: caught by verify()
    vectors.write_bytes(bytes(data))
    cache = EmbeddingCache(tmp_path, enc.id)
    with pytest.raises(PluralignError, match="checksum") as info:
        cache.verify()
    assert vectors.name in str(info.value)
    with pytest.raises(PluralignError, match="non-finite") as info:
        cache.get_many(texts_of(0, 20))
    assert str(vectors) in str(info.value)


def test_metadata_mismatches_are_refused(tmp_path):
    enc = CountingEncoder()
    embed_texts(["x"], enc, cache=EmbeddingCache(tmp_path, enc.id))
    with pytest.raises(PluralignError, match="belongs to encoder 'fake:counting'"):
        EmbeddingCache(tmp_path, "another")
    with pytest.raises(PluralignError, match="8-dim"):
        EmbeddingCache(tmp_path, enc.id, dim=16)
    assert EmbeddingCache(tmp_path, enc.id, dim=8).dim == 8
    cache = EmbeddingCache(tmp_path, enc.id)
    with pytest.raises(PluralignError, match="8-dim vectors, got 3-dim"):
        cache.put_many(["y"], np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(PluralignError, match="non-finite"):
        cache.put_many(["y"], np.full((1, 8), np.nan, dtype=np.float32))

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": 99}))
    with pytest.raises(PluralignError, match="version 99"):
        EmbeddingCache(tmp_path, enc.id)
    meta.write_text("{truncated")
    with pytest.raises(PluralignError, match=r"meta\.json"):
        EmbeddingCache(tmp_path, enc.id)
    meta.unlink()
    with pytest.raises(PluralignError, match=r"no meta\.json"):
        EmbeddingCache(tmp_path, enc.id)


# --- shards ----------------------------------------------------------------------------------------------
def test_compact_merges_shards_and_keeps_every_vector(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc.id)
    expected = np.concatenate([embed_texts(texts_of(i, i + 3), enc, cache=cache) for i in range(0, 15, 3)])
    assert cache.n_shards == 5
    cache.compact()
    assert cache.n_shards == 1 and len(_files(tmp_path)) == 3
    np.testing.assert_array_equal(cache.get_many(texts_of(0, 15))[0], expected)
    reopened = EmbeddingCache(tmp_path, enc.id)
    reopened.verify()
    np.testing.assert_array_equal(reopened.get_many(texts_of(0, 15))[0], expected)
    before = _files(tmp_path)
    cache.compact()  # already compact: nothing changes
    assert _files(tmp_path) == before


def test_many_small_writes_are_merged_automatically(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, enc.id, max_shards=4)
    for i in range(20):
        cache.put_many([f"t{i}"], enc.encode([f"t{i}"]))
        assert cache.n_shards <= 4
    assert len(EmbeddingCache(tmp_path, enc.id)) == 20
    assert enc.calls == [f"t{i}" for i in range(20)]


def test_duplicates_from_concurrent_writers_are_harmless(tmp_path):
    enc = CountingEncoder()
    a, b = EmbeddingCache(tmp_path, enc.id), EmbeddingCache(tmp_path, enc.id)
    embed_texts(texts_of(0, 6), enc, cache=a)
    embed_texts(texts_of(3, 9), enc, cache=b)  # b has not seen a's shard: 3 texts stored twice
    merged = EmbeddingCache(tmp_path, enc.id)
    assert len(merged) == 9 and merged.n_shards == 2
    np.testing.assert_array_equal(merged.get_many(texts_of(0, 9))[0], enc.encode(texts_of(0, 9)))
    merged.compact()
    assert len(EmbeddingCache(tmp_path, enc.id)) == 9


def test_keys_sharing_their_first_eight_bytes_are_told_apart(tmp_path):
    cache = EmbeddingCache(tmp_path, "crafted", dim=2)
    keys = np.array([b"\x01" * 8 + bytes([i]) * 24 for i in (1, 2, 3)] + [b"\x02" * 32], dtype="S32")
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    cache._write_shard(keys, vectors)
    cache.refresh()
    query = np.array([keys[2], b"\x01" * 8 + b"\x09" * 24, keys[0], keys[3], keys[1]], dtype="S32")
    found, hit = cache.get_keys(query)
    assert hit.tolist() == [True, False, True, True, True]
    np.testing.assert_array_equal(found, vectors[[2, 0, 3, 1]])


def test_keys_are_sha256_of_encoder_id_and_text():
    import hashlib

    assert text_keys("enc", ["hi"])[0] == hashlib.sha256(b"enc\0hi").digest()
