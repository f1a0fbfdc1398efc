"""StateStore.transaction(): the public all-or-nothing write the store's own writes use."""

from __future__ import annotations

import threading

import pytest

from pluralign.serve.store import StateStore


def test_transaction_commits_or_rolls_back_and_releases_the_lock(tmp_path):
    with StateStore(tmp_path / "s.db") as store:
        with store.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
            db.execute("INSERT INTO meta (key, value) VALUES ('b', '2')")
        assert (store.get_meta("a"), store.get_meta("b")) == ("1", "2")

        with pytest.raises(RuntimeError, match="midway"), store.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('c', '3')")
            db.execute("UPDATE meta SET value = 'changed' WHERE key = 'a'")
            raise RuntimeError("midway")
        assert (store.get_meta("a"), store.get_meta("c")) == ("1", None)  # nothing of it stayed

        with pytest.raises(Exception, match="UNIQUE"), store.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('d', '4')")
            db.execute("INSERT INTO meta (key, value) VALUES ('a', 'dup')")  # fails inside: all rolled back
        assert store.get_meta("d") is None

        # the lock was released each time: another thread can write at once
        done = threading.Event()

        def write() -> None:
            store.set_meta("e", "5")
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(10)
        assert done.is_set() and store.get_meta("e") == "5"


def test_writes_are_visible_to_a_new_store_only_after_commit(tmp_path):
    path = tmp_path / "s.db"
    with StateStore(path) as store:
        store.record_feedback("alice", [("p", "x", "y")], [0.25, 0.75], 1)
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("DELETE FROM comparisons")
            raise RuntimeError
    with StateStore(path) as store:
        assert store.comparisons("alice") == [("p", "x", "y")]
        assert store.user("alice").weights == [0.25, 0.75]
