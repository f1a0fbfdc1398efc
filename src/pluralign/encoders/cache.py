"""An on-disk embedding cache: every distinct text is encoded once, ever.

Layout of a cache directory (one encoder per directory)::

    meta.json                      {"format": "pluralign-embedding-cache", "version": 1, "encoder_id", "dim"}
    shard-<h>.vectors.npy          float32 [n, dim], memory-mapped on load
    shard-<h>.keys.npy             [n] records (key S32, sum <u8): sorted sha256(encoder_id + "\\0" + text)
                                   digests and each row's checksum (older shards: S32 keys alone)

Shards are immutable. A shard is written as two temp files, each fsynced and then renamed into place,
vectors first: the keys file is the commit record, so a crash leaves either a whole shard or an orphan
vectors file, which is ignored. ``<h>`` is the sha256 of the keys and vector bytes (``verify`` rechecks it).
Loading reads only the keys (40 bytes a text), checks every header and file size, and maps the vectors.
Every vector read is checked against its row checksum (a damaged byte is an error, never a wrong number) at
the cost of touching only the rows read; shards written before row checksums existed are checked by
``verify`` and gain row checksums when compaction rewrites them.
Concurrent writers are safe: each writes new shards; a text encoded by two of them is stored twice, which
is harmless (the first copy wins on load).

This module holds the cache object (metadata, key index, lookups, writes, compaction, clean-up of
leftovers); keys and checksums are in :mod:`pluralign.encoders.cache_keys`, the shard files in
:mod:`pluralign.encoders.cache_shards` and :func:`embed_texts` in :mod:`pluralign.encoders.cache_embed`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pluralign.atomic import HOST, atomic_write
from pluralign.encoders.cache_embed import embed_texts as embed_texts  # re-exported
from pluralign.encoders.cache_keys import (
    KEY_DTYPE,
    VEC_DTYPE,
    key_prefix,
    row_sums,
    shard_checksum,
    text_keys,
)
from pluralign.encoders.cache_shards import RECORD_DTYPE as RECORD_DTYPE  # re-exported
from pluralign.encoders.cache_shards import (
    Shard,
    ShardVanished,
    fsync_dir,
    load_shard,
    read_keys,
    read_npy,
    write_shard,
)
from pluralign.errors import PluralignError

logger = logging.getLogger(__name__)

FORMAT = "pluralign-embedding-cache"
VERSION = 1
META = "meta.json"
# Leftovers of another live writer must survive; anything this old is from a crash.
STALE_SECONDS = 3600.0
# Temp names carry host and pid so that leftovers of dead local writers can go at once ("-" separates).


class EmbeddingCache:
    """Vectors of one encoder, keyed by sha256(encoder_id + "\\0" + text), in ``directory``.

    ``dim=None`` takes the dimension from an existing cache (or from the first ``put_many``). A cache
    written for another encoder id, dimension or format version is refused with ``PluralignError``; so is
    a damaged shard, naming the file to delete. Shards past ``max_shards`` are merged automatically (the
    smaller half at a time, so large shards are rarely rewritten). Not thread-safe; safe across processes.
    """

    def __init__(
        self, directory: str | Path, encoder_id: str, dim: int | None = None, *, max_shards: int = 64
    ) -> None:
        self.directory = Path(directory)
        self.encoder_id = encoder_id
        self.max_shards = max(2, int(max_shards))
        self.root: Path | None = None  # the directory of all encoders' caches, when opened by open_cache
        self._dim = dim
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PluralignError(
                f"cannot create the embedding cache directory {self.directory}: {exc}"
            ) from exc
        self._read_meta()
        self.refresh()

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache({str(self.directory)!r}, {self.encoder_id!r}, dim={self._dim}, "
            f"{len(self)} texts in {len(self._shards)} shards)"
        )

    # --- metadata --------------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        """Vector size, or ``None`` for a new cache whose size is set by the first ``put_many``."""
        return self._dim

    def _meta(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "encoder_id": self.encoder_id, "dim": self._dim}

    def _read_meta(self) -> None:
        path = self.directory / META
        if not path.exists():
            if any(self.directory.glob("shard-*.keys.npy")):
                raise PluralignError(
                    f"embedding cache {self.directory} has shards but no {META}: it cannot be checked "
                    "against the encoder; delete the directory to rebuild it"
                )
            if self._dim is not None:
                self._write_meta()
            return
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            fmt, version = meta["format"], int(meta["version"])
            encoder_id, dim = str(meta["encoder_id"]), int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PluralignError(
                f"{path}: unreadable embedding-cache metadata ({exc}); delete {self.directory} to rebuild it"
            ) from exc
        if fmt != FORMAT or version != VERSION:
            raise PluralignError(
                f"{path}: embedding cache format {fmt!r} version {version} is not {FORMAT!r} version "
                f"{VERSION}; delete {self.directory} to rebuild it"
            )
        if encoder_id != self.encoder_id:
            raise PluralignError(
                f"{path}: the embedding cache belongs to encoder {encoder_id!r}, not {self.encoder_id!r}; "
                "use another cache directory (open_cache keeps one subdirectory per encoder)"
            )
        if self._dim is not None and dim != self._dim:
            raise PluralignError(
                f"{path}: the embedding cache holds {dim}-dim vectors but encoder {self.encoder_id!r} "
                f"gives {self._dim}-dim ones; delete {self.directory} to rebuild it"
            )
        self._dim = dim

    def _write_meta(self) -> None:
        text = json.dumps(self._meta(), indent=1) + "\n"
        atomic_write(self.directory / META, lambda f: f.write(text.encode("utf-8")))
        fsync_dir(self.directory)

    # --- loading ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the shard list (e.g. to see shards that other processes wrote since this one loaded)."""
        self._clean_leftovers()
        for attempt in range(5):
            shards: list[Shard] = []
            key_parts: list[np.ndarray] = []
            try:
                for keys_path in sorted(self.directory.glob("shard-*.keys.npy")):
                    shard, keys = load_shard(keys_path, self._dim)
                    shards.append(shard)
                    key_parts.append(keys)
            except ShardVanished:
                # Another process merged shards while we listed them: its merged shard may be unlisted.
                if attempt == 4:
                    raise
                continue
            break
        self._shards = shards
        self._set_index(key_parts)

    def _set_index(self, key_parts: list[np.ndarray]) -> None:
        """Index all keys: sorted bytes for exact matching, their first 8 bytes as uint64 to search fast."""
        if key_parts:
            keys = np.concatenate(key_parts)
            shard = np.repeat(np.arange(len(key_parts), dtype=np.int32), [len(k) for k in key_parts])
            row = np.concatenate([np.arange(len(k), dtype=np.int64) for k in key_parts])
        else:
            keys = np.zeros(0, dtype=KEY_DTYPE)
            shard = np.zeros(0, dtype=np.int32)
            row = np.zeros(0, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        keys, shard, row = keys[order], shard[order], row[order]
        if len(keys) > 1:
            # The same text stored by two writers (or an interrupted compaction): keep the first copy.
            first = np.ones(len(keys), dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            if not first.all():
                keys, shard, row = keys[first], shard[first], row[first]
        self._keys = keys
        self._prefix = key_prefix(keys)
        self._loc_shard = shard
        self._loc_row = row

    def _clean_leftovers(self) -> None:
        """Remove temp files and orphan vectors files that a crashed writer left behind."""
        now = time.time()
        for path in self.directory.iterdir():
            name = path.name
            if name.startswith(".tmp") or name.endswith(".tmp"):
                stale = _temp_is_stale(path, now)
            elif name.startswith("shard-") and name.endswith(".vectors.npy"):
                keys_path = path.with_name(name.removesuffix(".vectors.npy") + ".keys.npy")
                stale = not keys_path.exists() and _age(path, now) > STALE_SECONDS
            else:
                continue
            if stale:
                logger.info("removing leftover %s from an interrupted write", path)
                path.unlink(missing_ok=True)

    # --- lookup ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and bool(self.get_many([text])[1][0])

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Index into the sorted key table of each key, -1 where absent."""
        n = len(self._keys)
        if n == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        prefix = key_prefix(keys)
        pos = np.searchsorted(self._prefix, prefix, side="left")
        inside = pos < n
        pos_c = np.minimum(pos, n - 1)
        found = inside & (self._keys[pos_c] == keys)
        # Distinct keys sharing their first 8 bytes (about one pair in 2**64): walk that run of the table.
        for i in np.flatnonzero(inside & ~found & (self._prefix[pos_c] == prefix)):
            j = int(pos[i])
            while j < n and self._prefix[j] == prefix[i]:
                if self._keys[j] == keys[i]:
                    pos[i], found[i] = j, True
                    break
                j += 1
        return np.where(found, pos, -1)

    def get_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 vectors [hits, dim] of the cached texts in input order, boolean hit mask [len(texts)])."""
        return self.get_keys(text_keys(self.encoder_id, texts))

    def get_keys(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the keys found (in key order) and a mask of which keys were found."""
        found = self._find(keys)
        hit = found >= 0
        out = np.empty((int(hit.sum()), self._dim or 0), dtype=np.float32)
        if not len(out):
            return out, hit
        where = found[hit]
        shard, row = self._loc_shard[where], self._loc_row[where]
        for s in np.unique(shard):
            mine = np.flatnonzero(shard == s)
            # Reading the memory map in row order keeps disk access sequential.
            order = np.argsort(row[mine], kind="stable")
            out[mine[order]] = self._shards[s].vectors[row[mine[order]]]
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            s = self._shards[shard[int(np.flatnonzero(bad)[0])]]
            raise PluralignError(
                f"embedding cache shard {s.vectors_path} holds non-finite vectors (damaged file); delete "
                f"{s.vectors_path.name} and {s.keys_path.name} (their texts will be encoded again)"
            )
        self._check_rows(self._keys[where], out, shard, row)
        return out, hit

    def _check_rows(self, keys: np.ndarray, vectors: np.ndarray, shard: np.ndarray, row: np.ndarray) -> None:
        """Compare rows read from shards with their stored checksums; a mismatch is a damaged file."""
        for s in np.unique(shard):
            sums = self._shards[s].sums
            if sums is None:
                continue
            mine = np.flatnonzero(shard == s)
            if (row_sums(keys[mine], vectors[mine]) != sums[row[mine]]).any():
                bad = self._shards[s]
                raise PluralignError(
                    f"embedding cache shard {bad.vectors_path} does not match its row checksums (damaged "
                    f"file); delete {bad.vectors_path.name} and {bad.keys_path.name} (their texts will be "
                    "encoded again)"
                )

    # --- writing ---------------------------------------------------------------------------------------
    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Store the vectors of texts not cached yet (one new shard); returns how many were new."""
        texts = list(texts)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise PluralignError(
                f"put_many: expected vectors of shape ({len(texts)}, dim), got {vectors.shape}"
            )
        if self._dim is None:
            self._dim = int(vectors.shape[1])
            self._write_meta()
        if vectors.shape[1] != self._dim:
            raise PluralignError(
                f"embedding cache {self.directory} holds {self._dim}-dim vectors, got {vectors.shape[1]}-dim "
                f"ones from encoder {self.encoder_id!r}"
            )
        vectors = np.ascontiguousarray(vectors, dtype=VEC_DTYPE)
        if not np.isfinite(vectors).all():
            raise PluralignError(f"encoder {self.encoder_id!r} returned non-finite vectors; not caching them")
        keys = text_keys(self.encoder_id, texts)
        keys, first = np.unique(keys, return_index=True)
        new = self._find(keys) < 0
        keys, rows = keys[new], first[new]
        if not len(keys):
            return 0
        name = self._write_shard(keys, vectors[rows])
        if name not in {s.name for s in self._shards}:
            vectors_path = self.directory / f"{name}.vectors.npy"
            mapped = read_npy(vectors_path, VEC_DTYPE, 2, "", mmap=True)
            sums = row_sums(keys, vectors[rows])
            self._shards.append(Shard(name, self.directory / f"{name}.keys.npy", vectors_path, mapped, sums))
            self._merge_index(keys, len(self._shards) - 1)
        if len(self._shards) > self.max_shards:
            by_size = sorted(self._shards, key=lambda s: s.n)
            self._merge(by_size[: len(by_size) // 2 + 1])
        return len(keys)

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> str:
        """Write sorted distinct keys and their vectors as a shard, vectors first; returns its name."""
        return write_shard(self.directory, keys, vectors)

    def _merge_index(self, keys: np.ndarray, shard: int) -> None:
        """Insert a new shard's keys (sorted, none present yet) into the sorted index without re-sorting."""
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._prefix = np.insert(self._prefix, at, key_prefix(keys))
        self._loc_shard = np.insert(self._loc_shard, at, np.int32(shard))
        self._loc_row = np.insert(self._loc_row, at, np.arange(len(keys), dtype=np.int64))

    def compact(self) -> None:
        """Merge all shards into one (crash-safe: the merged shard is written before the old ones go)."""
        self._merge(list(self._shards))

    def _merge(self, shards: list[Shard]) -> None:
        if len(shards) < 2:
            return
        chosen = {id(s) for s in shards}
        members = np.array([id(s) in chosen for s in self._shards])
        # Rows of the index (already deduplicated and sorted) that live in the chosen shards.
        rows = np.flatnonzero(members[self._loc_shard])
        keys = self._keys[rows]
        vectors = np.empty((len(rows), self._dim or 0), dtype=VEC_DTYPE)
        shard_of, row_of = self._loc_shard[rows], self._loc_row[rows]
        for s in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == s)
            vectors[mine] = self._shards[s].vectors[row_of[mine]]
        # Never carry damage into the merged shard: rows are checked, older shards without row sums in full.
        self._check_rows(keys, vectors, shard_of, row_of)
        self._verify([self._shards[s] for s in np.unique(shard_of) if self._shards[s].sums is None])
        merged = self._write_shard(keys, vectors)
        for s in shards:
            if s.name == merged:
                continue
            # Keys first: once they are gone the shard no longer exists; a crash leaves an orphan vectors
            # file, removed later.
            try:
                s.keys_path.unlink(missing_ok=True)
                s.vectors_path.unlink(missing_ok=True)
            except OSError as exc:  # e.g. still mapped on Windows: a duplicate shard is harmless
                logger.warning("could not remove merged shard %s: %s", s.keys_path, exc)
        fsync_dir(self.directory)
        self.refresh()
        logger.info("merged %d shards of %s into one (%d texts)", len(shards), self.directory, len(keys))

    def verify(self) -> None:
        """Re-read every shard, check it against the checksum in its name and its row checksums."""
        self._verify(self._shards)

    def _verify(self, shards: list[Shard]) -> None:
        for s in shards:
            keys, sums = read_keys(s.keys_path, "")
            vectors = np.asarray(s.vectors)
            if s.name != f"shard-{shard_checksum(keys, vectors)}" or (
                sums is not None and (row_sums(keys, vectors) != sums).any()
            ):
                raise PluralignError(
                    f"embedding cache shard {s.vectors_path} does not match its checksum (damaged file); "
                    f"delete {s.vectors_path.name} and {s.keys_path.name} (their texts will be encoded again)"
                )


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _temp_is_stale(path: Path, now: float) -> bool:
    """A temp file of a dead process on this host, or one old enough to be from any crash."""
    parts = path.name.split("-")
    if len(parts) >= 4 and parts[0] == ".tmp" and parts[1] == HOST and parts[2].isdigit():
        pid = int(parts[2])
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except OSError:
                pass
    return _age(path, now) > STALE_SECONDS
