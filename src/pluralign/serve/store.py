"""The service's state in SQLite (WAL): users, their comparisons, their fitted weights (JSON, no pickle).

Tables::

    meta(key PRIMARY KEY, value)                       schema version, model fingerprint
    users(user_id PRIMARY KEY, weights JSON, n_comparisons, created_at, updated_at)
    comparisons(id, user_id, prompt, chosen, rejected, created_at)
    erased(user_id PRIMARY KEY, erased_at)             checkpoint users deleted through the API

One connection, used under a lock; every write is one transaction. One service process per database:
``StateStore`` holds an exclusive lock on ``<db>.lock`` while open, so a second server on the same file is
refused instead of corrupting the per-user serialization.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pluralign.errors import PluralignError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    weights TEXT NOT NULL,
    n_comparisons INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS comparisons_user ON comparisons (user_id, id);
CREATE TABLE IF NOT EXISTS erased (user_id TEXT PRIMARY KEY, erased_at REAL NOT NULL);
"""


def iso(timestamp: float | None) -> str | None:
    """A POSIX timestamp as ISO 8601 in UTC (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StoredUser:
    user_id: str
    weights: list[float]
    n_comparisons: int
    created_at: float
    updated_at: float


class StateStore:
    """Users, comparisons and weights in one SQLite file; thread-safe (one connection under a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise PluralignError(f"state database {self.path}: directory {self.path.parent} does not exist")
        self._lock_file = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held open while the store lives
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise PluralignError(
                f"state database {self.path} is in use by another pluralign service (lock {self.path}.lock)"
            ) from None
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise PluralignError(
                    f"state database {self.path} has schema version {version}; this pluralign reads "
                    f"version {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            self.close()
            raise PluralignError(f"state database {self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise

    # --- plumbing ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with store.transaction() as db``: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), under the
        store's lock, so the statements inside are one atomic write."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with self._lock:
                db.close()
            self._db = None
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    # --- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- reads ------------------------------------------------------------------------------------------
    def users(self) -> list[StoredUser]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, weights, n_comparisons, created_at, updated_at FROM users ORDER BY user_id"
            ).fetchall()
        return [_user(row) for row in rows]

    def user(self, user_id: str) -> StoredUser | None:
        with self._lock:
            row = self._db.execute(
                "SELECT user_id, weights, n_comparisons, created_at, updated_at FROM users WHERE user_id = ?",
                (user_id,),
            ).fetchone()
        return None if row is None else _user(row)

    def erased(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT user_id FROM erased")}

    def comparisons(self, user_id: str) -> list[tuple[str, str, str]]:
        """The user's stored comparisons (prompt, chosen, rejected), oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT prompt, chosen, rejected FROM comparisons WHERE user_id = ? ORDER BY id", (user_id,)
            ).fetchall()

    def all_comparisons(self) -> list[tuple[str, str, str, str]]:
        """Every stored comparison (user_id, prompt, chosen, rejected)."""
        with self._lock:
            return self._db.execute(
                "SELECT user_id, prompt, chosen, rejected FROM comparisons ORDER BY id"
            ).fetchall()

    def count_comparisons(self, user_id: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user_id,)
            ).fetchone()[0]

    # --- writes (one transaction each) ------------------------------------------------------------------
    def record_feedback(
        self,
        user_id: str,
        comparisons: Sequence[tuple[str, str, str]],
        weights: Sequence[float],
        n_comparisons: int,
    ) -> StoredUser:
        """Store new comparisons and the user's re-fitted weights, all or nothing.

        ``n_comparisons`` is how many comparisons the weights were fitted on; it must equal the user's stored
        count after the insert (the caller holds the user's lock), else nothing is written.
        """
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO comparisons (user_id, prompt, chosen, rejected, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(user_id, p, c, r, now) for p, c, r in comparisons],
            )
            stored = db.execute("SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user_id,)).fetchone()[
                0
            ]
            if stored != n_comparisons:
                raise PluralignError(
                    f"user {user_id!r} has {stored} stored comparisons but the weights were fitted on "
                    f"{n_comparisons} (concurrent writer?)"
                )
            db.execute(
                "INSERT INTO users (user_id, weights, n_comparisons, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET weights = excluded.weights, "
                "n_comparisons = excluded.n_comparisons, updated_at = excluded.updated_at",
                (user_id, json.dumps([float(w) for w in weights]), n_comparisons, now, now),
            )
            db.execute("DELETE FROM erased WHERE user_id = ?", (user_id,))
            row = db.execute(
                "SELECT user_id, weights, n_comparisons, created_at, updated_at FROM users WHERE user_id = ?",
                (user_id,),
            ).fetchone()
        return _user(row)

    def set_weights(self, weights: dict[str, Sequence[float]]) -> None:
        """Replace several users' weights (after a re-fit for a new model), in one transaction."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE users SET weights = ?, updated_at = ? WHERE user_id = ?",
                [(json.dumps([float(x) for x in w]), now, u) for u, w in weights.items()],
            )

    def delete_user(self, user_id: str, *, tombstone: bool) -> int:
        """Erase the user's comparisons and weights; ``tombstone`` also hides their checkpoint weights.

        Returns how many comparisons were deleted.
        """
        with self.transaction() as db:
            deleted = db.execute("DELETE FROM comparisons WHERE user_id = ?", (user_id,)).rowcount
            db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            if tombstone:
                db.execute(
                    "INSERT OR REPLACE INTO erased (user_id, erased_at) VALUES (?, ?)", (user_id, time.time())
                )
        return deleted


def _user(row: tuple) -> StoredUser:
    return StoredUser(row[0], json.loads(row[1]), int(row[2]), float(row[3]), float(row[4]))
