"""Damaged artifacts (hypothesis): truncated, bit-flipped, deleted or hand-edited checkpoint, embedding-cache
and vector files give a clear PluralignError, or load exactly the numbers that were saved; never others."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pluralign.checkpoint import CONFIG, TENSORS, USERS
from pluralign.encoders.cache import EmbeddingCache, embed_texts
from pluralign.errors import CheckpointError, PluralignError
from pluralign.estimator import PALEstimator
from pluralign.serve.testing import make_demo_model

FUZZ = settings(
    max_examples=int(os.environ.get("PLURALIGN_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("PLURALIGN_FUZZ_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@contextmanager
def copy_of(directory: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        target = Path(tmp) / directory.name
        shutil.copytree(directory, target)
        yield target


def damage(path: Path, action: str, at: int, bits: int) -> None:
    """Truncate, flip one bit, overwrite a run of bytes, append garbage, or delete ``path``."""
    data = bytearray(path.read_bytes())
    if action == "delete":
        path.unlink()
        return
    if action == "truncate":
        data = data[: at % max(len(data), 1)]
    elif action == "flip" and data:
        data[at % len(data)] ^= 1 << (bits % 8)
    elif action == "zero" and data:
        start = at % len(data)
        data[start : start + 1 + bits % 64] = bytes(len(data[start : start + 1 + bits % 64]))
    elif action == "append":
        data += bytes([bits % 256]) * (1 + at % 16)
    path.write_bytes(bytes(data))


ACTIONS = st.sampled_from(["truncate", "flip", "zero", "append", "delete"])


# ========================================================================================================
# checkpoints
# ========================================================================================================
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """A trained PAL-B checkpoint and its numbers: users, user weights, rewards on fixed items/contexts."""
    model_dir = make_demo_model(tmp_path_factory.mktemp("ckpt"))
    return model_dir, _numbers(PALEstimator.load(model_dir))


def _numbers(est: PALEstimator) -> dict:
    users = list(est.users_)
    return {
        "users": users,
        "weights": est.user_weights().to_numpy(),
        "rewards": [est.reward(u, "ctx-0", ["item-0", "item-1", "item-2"]) for u in [*users[:3], "nobody"]],
    }


def _same_numbers(est: PALEstimator, reference: dict) -> None:
    got = _numbers(est)
    assert got["users"] == reference["users"]
    np.testing.assert_array_equal(got["weights"], reference["weights"])
    for a, b in zip(got["rewards"], reference["rewards"], strict=True):
        np.testing.assert_array_equal(a, b)


@FUZZ
@given(
    name=st.sampled_from([CONFIG, TENSORS, USERS]),
    action=ACTIONS,
    at=st.integers(0, 10**7),
    bits=st.integers(0, 255),
)
@example(name=USERS, action="flip", at=12, bits=0)  # a flipped user id gave that user's row to another id
def test_damaged_checkpoint_files_are_refused_or_load_the_same_numbers(
    checkpoint, name, action, at, bits
) -> None:
    model_dir, reference = checkpoint
    with copy_of(model_dir) as damaged:
        damage(damaged / name, action, at, bits)
        try:
            est = PALEstimator.load(damaged)
        except PluralignError as exc:
            assert name in str(exc) or str(damaged) in str(exc)
        else:
            _same_numbers(est, reference)  # e.g. a flip in the JSON whitespace changes nothing


EDITS = {
    # config.json: settings that change the numbers without changing any tensor's shape
    "residual": lambda c, u: c["params"].__setitem__("residual", not c["params"]["residual"]),
    "n_seen_users": lambda c, u: c.__setitem__("n_seen_users", c["n_seen_users"] - 1),
    "estimator": lambda c, u: c.__setitem__("estimator", "PALA"),
    "encoder": lambda c, u: c["params"].__setitem__(
        "encoder", {"kind": "sentence-transformers", "model": None}
    ),
    "tensors_sha256": lambda c, u: c.__setitem__("tensors_sha256", "0" * 64),
    "drop config_sha256": lambda c, u: c.pop("config_sha256"),
    "history": lambda c, u: c["history"].__setitem__("best_epoch", 99),
    # users.json: swapped or renamed users would silently give one user another's weights
    "users.json: swap": lambda c, u: u.__setitem__(slice(0, 2), [u[1], u[0]]),
    "users.json: rename": lambda c, u: u.__setitem__(0, "mallory"),
    "users.json: drop": lambda c, u: u.pop(),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_hand_edited_checkpoint_json_is_refused(checkpoint, edit) -> None:
    """Edits that still parse are the dangerous ones: each is refused by a checksum, naming the file."""
    model_dir, reference = checkpoint
    with copy_of(model_dir) as edited:
        config = json.loads((edited / CONFIG).read_text())
        users = json.loads((edited / USERS).read_text())
        EDITS[edit](config, users)
        name = USERS if edit.startswith(USERS) else CONFIG
        (edited / name).write_text(json.dumps(users if name == USERS else config, indent=2))
        if edit == "drop config_sha256":  # as in older checkpoints: no config checksum, still loads
            _same_numbers(PALEstimator.load(edited), reference)
            return
        with pytest.raises(CheckpointError, match="checksum mismatch") as info:
            PALEstimator.load(edited)
        assert str(edited / name) in str(info.value)


def test_checkpoint_json_reformatted_still_loads(checkpoint) -> None:
    """The config checksum is over the parsed content: re-indenting config.json is not damage."""
    model_dir, reference = checkpoint
    with copy_of(model_dir) as edited:
        config = json.loads((edited / CONFIG).read_text())
        (edited / CONFIG).write_text(json.dumps(config, indent=None, sort_keys=True))
        _same_numbers(PALEstimator.load(edited), reference)


# ========================================================================================================
# embedding cache
# ========================================================================================================
class CountingEncoder:
    """Deterministic vectors from the text's bytes; counts how many texts it encoded."""

    id = "fuzz-encoder"
    dim = 6

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size=64, show_progress=False) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out


TEXTS = [f"text number {i}" for i in range(40)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A cache of TEXTS in three shards (three put_many calls)."""
    directory = tmp_path_factory.mktemp("cache") / "cache"
    cache = EmbeddingCache(directory, CountingEncoder.id)
    for part in (TEXTS[:10], TEXTS[10:25], TEXTS[25:]):
        embed_texts(part, CountingEncoder(), cache=cache)
    return directory


@FUZZ
@given(
    file=st.sampled_from(["meta", "keys", "vectors"]),
    shard=st.integers(0, 2),
    action=ACTIONS,
    at=st.integers(0, 10**6),
    bits=st.integers(0, 255),
    compact=st.booleans(),
)
@example(file="vectors", shard=0, action="flip", at=10**6 - 3, bits=3, compact=False)  # a finite wrong number
@example(file="keys", shard=1, action="flip", at=10**6 - 1, bits=7, compact=True)  # a row checksum itself
def test_damaged_cache_is_refused_or_gives_the_exact_vectors(
    cache_dir, file, shard, action, at, bits, compact
):
    expected = CountingEncoder().encode(TEXTS)
    with copy_of(cache_dir) as damaged:
        paths = (
            [damaged / "meta.json"]
            if file == "meta"
            else sorted(damaged.glob(f"shard-*.{'keys' if file == 'keys' else 'vectors'}.npy"))
        )
        damage(paths[shard % len(paths)], action, at, bits)
        encoder = CountingEncoder()
        try:
            cache = EmbeddingCache(damaged, CountingEncoder.id)
            if compact:
                cache.compact()
                cache = EmbeddingCache(damaged, CountingEncoder.id)
            got = embed_texts(TEXTS, encoder, cache=cache)
        except PluralignError as exc:
            assert str(damaged) in str(exc)  # names the damaged file (or the cache directory)
            return
        # Loaded: every vector is the right one, whether read from the cache or encoded again (a damaged key
        # is only a miss); and what was re-encoded is cached for next time.
        np.testing.assert_array_equal(got, expected)
        again = CountingEncoder()
        np.testing.assert_array_equal(
            embed_texts(TEXTS, again, cache=EmbeddingCache(damaged, CountingEncoder.id)), expected
        )
        assert again.calls == 0


def test_a_finite_wrong_float_is_caught_by_verify_and_by_reads(cache_dir) -> None:
    with copy_of(cache_dir) as damaged:
        vectors = sorted(damaged.glob("shard-*.vectors.npy"))[0]
        data = bytearray(vectors.read_bytes())
        data[-1] ^= 0x01  # lowest exponent bit of the last float (little-endian): a finite, wrong number
        vectors.write_bytes(bytes(data))
        cache = EmbeddingCache(damaged, CountingEncoder.id)
        with pytest.raises(PluralignError, match="checksum") as info:
            cache.verify()
        assert vectors.name in str(info.value)
        with pytest.raises(PluralignError, match="row checksums") as info:
            cache.get_many(TEXTS)
        assert str(vectors) in str(info.value)


def test_shards_without_row_checksums_still_load_and_gain_them_on_compaction(cache_dir) -> None:
    """Caches written before row checksums (keys files of bare S32 digests) keep working."""
    expected = CountingEncoder().encode(TEXTS)
    with copy_of(cache_dir) as old:
        for keys in old.glob("shard-*.keys.npy"):
            np.save(keys, np.load(keys)["key"])  # the old layout
        cache = EmbeddingCache(old, CountingEncoder.id)
        assert all(s.sums is None for s in cache._shards)
        np.testing.assert_array_equal(cache.get_many(TEXTS)[0], expected)
        cache.compact()
        cache = EmbeddingCache(old, CountingEncoder.id)
        assert cache.n_shards == 1 and cache._shards[0].sums is not None
        np.testing.assert_array_equal(cache.get_many(TEXTS)[0], expected)
        cache.verify()


# ========================================================================================================
# precomputed vector files written by save_vectors (a checkpoint's encoder)
# ========================================================================================================
@pytest.fixture(scope="module")
def vector_files(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    from pluralign.encoders.precomputed import save_vectors

    directory = tmp_path_factory.mktemp("vectors") / "vectors"
    keys = np.asarray([f"item-{i}" for i in range(30)])
    vectors = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    for suffix in (".npz", ".parquet"):
        save_vectors(directory / f"v{suffix}", keys, vectors)
    return directory, keys, vectors


@FUZZ
@given(
    suffix=st.sampled_from([".npz", ".parquet"]),
    action=ACTIONS,
    at=st.integers(0, 10**6),
    bits=st.integers(0, 255),
)
@example(suffix=".parquet", action="flip", at=700, bits=2)  # inside a data page: only page checksums see it
def test_damaged_vector_files_are_refused_or_exact(vector_files, suffix, action, at, bits) -> None:
    from pluralign.encoders.precomputed import PrecomputedEncoder

    directory, keys, vectors = vector_files
    with copy_of(directory) as damaged:
        path = damaged / f"v{suffix}"
        damage(path, action, at, bits)
        try:
            encoder = PrecomputedEncoder.from_file(path)
        except PluralignError as exc:
            assert str(path) in str(exc)
        else:
            assert list(encoder.keys) == list(keys)
            np.testing.assert_array_equal(encoder.vectors, vectors)
