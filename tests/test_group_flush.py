"""Group commit for SQLite's durable mode: every waiter returns only after a flush that
began after its commit, and concurrent commits share flushes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from core.store import GroupFlush, SqliteStore


def test_concurrent_commits_share_flushes_and_none_returns_early(tmp_path):
    flush = GroupFlush(str(tmp_path / "x.db-wal"))
    flushes: list[int] = []  # the highest commit each flush covered
    lock = threading.Lock()

    def slow_fsync():
        with lock:
            covered = flush._committed
        time.sleep(0.005)
        flushes.append(covered)

    flush._fsync = slow_fsync  # type: ignore[method-assign]
    early: list[int] = []

    def commit(_):
        for _ in range(10):
            seq = flush.committed()
            flush.wait(seq)
            if not any(covered >= seq for covered in flushes):
                early.append(seq)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(commit, range(16)))
    assert early == []
    assert len(flushes) < 160 / 3, f"{len(flushes)} flushes for 160 commits"


def test_durable_store_flushes_and_relaxed_writes_do_not_wait(tmp_path, monkeypatch):
    store = SqliteStore(str(tmp_path / "s.db"))
    calls = []
    monkeypatch.setattr(store._flush, "_fsync", lambda: calls.append(1))
    store.write("CREATE TABLE t (x INTEGER)")
    assert len(calls) == 1
    store.write("INSERT INTO t (x) VALUES (1)", durable=False)
    assert len(calls) == 1
    with store.transaction() as tx:
        tx.execute("INSERT INTO t (x) VALUES (2)")
    assert len(calls) == 2
    relaxed = SqliteStore(str(tmp_path / "n.db"), synchronous="normal")
    assert relaxed._flush is None
    relaxed.close()
    store.close()
