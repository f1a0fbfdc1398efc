"""Shard files of the embedding cache: writing them crash-safely, and reading them back checked.

A shard is ``shard-<h>.vectors.npy`` (float32 [n, dim], memory-mapped on load) and ``shard-<h>.keys.npy``
(the sorted keys with their row checksums, see :mod:`pluralign.encoders.cache_keys`). The vectors are
written first and the keys last, each fsynced and renamed into place, so the keys file commits the shard.
Every file is read after checking its .npy header, dtype, rank and exact size, and never unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from tokenize import TokenError

import numpy as np

from pluralign.atomic import atomic_write
from pluralign.encoders.cache_keys import KEY_DTYPE, VEC_DTYPE, row_sums, shard_checksum
from pluralign.errors import PluralignError

RECORD_DTYPE = np.dtype([("key", "S32"), ("sum", "<u8")])


class ShardVanished(PluralignError):
    """A shard deleted by a concurrent compaction while it was being loaded."""


class Shard:
    """One loaded shard: its two files, its memory-mapped vectors and its row checksums."""

    __slots__ = ("keys_path", "n", "name", "sums", "vectors", "vectors_path")

    def __init__(
        self, name: str, keys_path: Path, vectors_path: Path, vectors: np.ndarray, sums: np.ndarray | None
    ) -> None:
        self.name = name
        self.keys_path = keys_path
        self.vectors_path = vectors_path
        self.vectors = vectors
        self.sums = sums  # uint64 row checksums; None for shards written before they existed
        self.n = len(vectors)


def load_shard(keys_path: Path, dim: int | None) -> tuple[Shard, np.ndarray]:
    """A shard's files checked and opened (vectors memory-mapped), and its keys; ``dim`` is the cache's."""
    name = keys_path.name.removesuffix(".keys.npy")
    vectors_path = keys_path.with_name(f"{name}.vectors.npy")
    hint = f"delete {keys_path.name} and {vectors_path.name} (their texts will be encoded again)"
    if not keys_path.exists():
        raise ShardVanished(str(keys_path))
    if not vectors_path.exists():
        if not keys_path.exists():
            raise ShardVanished(str(keys_path))
        raise PluralignError(f"embedding cache shard {keys_path} has no vectors file {vectors_path}; {hint}")
    keys, sums = read_keys(keys_path, hint)
    vectors = read_npy(vectors_path, VEC_DTYPE, 2, hint, mmap=True)
    if vectors.shape != (len(keys), dim):
        raise PluralignError(
            f"embedding cache shard {vectors_path} has shape {vectors.shape}, expected "
            f"({len(keys)}, {dim}); {hint}"
        )
    # Written sorted and distinct: anything else means the keys were damaged.
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
        raise PluralignError(f"embedding cache shard {keys_path} has unsorted or repeated keys; {hint}")
    return Shard(name, keys_path, vectors_path, vectors, sums), keys


def write_shard(directory: Path, keys: np.ndarray, vectors: np.ndarray) -> str:
    """Write sorted distinct keys and their vectors as a shard, vectors first; returns its name."""
    name = f"shard-{shard_checksum(keys, vectors)}"
    keys_path = directory / f"{name}.keys.npy"
    vectors_path = directory / f"{name}.vectors.npy"
    atomic_write(vectors_path, lambda f: np.lib.format.write_array(f, vectors, allow_pickle=False))
    # The vectors' rename must be durable before the keys' rename can commit the shard.
    fsync_dir(directory)
    records = np.empty(len(keys), dtype=RECORD_DTYPE)
    records["key"], records["sum"] = keys, row_sums(keys, vectors)
    atomic_write(keys_path, lambda f: np.lib.format.write_array(f, records, allow_pickle=False))
    fsync_dir(directory)
    return name


def read_keys(path: Path, hint: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A shard's keys (S32) and row checksums (None for shards written before row checksums)."""
    records = read_npy(path, (RECORD_DTYPE, KEY_DTYPE), 1, hint, mmap=False)
    if records.dtype == KEY_DTYPE:
        return records, None
    return np.ascontiguousarray(records["key"]), np.ascontiguousarray(records["sum"])


def read_npy(
    path: Path, dtype: np.dtype | tuple[np.dtype, ...], ndim: int, hint: str, *, mmap: bool
) -> np.ndarray:
    """An array from a .npy file after checking its header, dtype (one of ``dtype``), rank and exact size
    (never unpickles)."""
    allowed = dtype if isinstance(dtype, tuple) else (dtype,)
    hint = f"; {hint}" if hint else f"; delete {path.name}"
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, file_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, file_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            if file_dtype not in allowed or len(shape) != ndim or fortran:
                raise ValueError(
                    f"dtype {file_dtype}, shape {shape}; expected {allowed[0]} with {ndim} dimension(s)"
                )
            dtype = file_dtype
            expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size != expected:
                raise ValueError(f"{size} bytes, expected {expected} (truncated or damaged)")
            if mmap:
                if not np.prod(shape):
                    return np.zeros(shape, dtype=dtype)
                # Mapping the open file (not the path) cannot race with a concurrent deletion.
                return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape)
            return np.fromfile(f, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
    # A damaged header reaches numpy's literal parser: SyntaxError, TokenError, TypeError, RecursionError.
    except (OSError, ValueError, TypeError, SyntaxError, TokenError, RecursionError) as exc:
        raise PluralignError(f"embedding cache file {path} is damaged: {exc!r}{hint}") from None


def fsync_dir(directory: Path) -> None:
    """Make renames durable (POSIX); directories cannot be opened this way on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
