"""Group commit for SQLite's durable mode: every waiter returns only after a flush that
began after its commit, and concurrent commits share flushes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from core.hookspecs import hookimpl
from core.store import GroupFlush, Migration, SqliteStore
from tests.helpers import ice, post, runtime, wait_for, webapp


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


def test_deferred_commits_wait_for_one_flush_when_asked(tmp_path, monkeypatch):
    store = SqliteStore(str(tmp_path / "d.db"))
    calls = []
    store.write("CREATE TABLE t (x INTEGER)")
    monkeypatch.setattr(store._flush, "_fsync", lambda: calls.append(1))
    with store.deferred_flush() as pending:
        for x in (1, 2):
            with store.transaction() as tx:
                tx.execute("INSERT INTO t (x) VALUES (?)", (x,))
        store.write("INSERT INTO t (x) VALUES (3)")
        with store.deferred_flush() as inner:  # nested: the outer block flushes for it
            store.write("INSERT INTO t (x) VALUES (4)")
    assert calls == [] and inner.seq == 0 and pending.seq == store._flush._committed
    store.flush(pending.seq)
    assert calls == [1]
    store.flush(pending.seq)  # already on disk: nothing more
    assert calls == [1]
    with store.transaction() as tx:  # outside the block: durable at once, as before
        tx.execute("INSERT INTO t (x) VALUES (5)")
    assert calls == [1, 1]
    store.close()


class _Writer:
    """A plugin that records each ICE in a table of its own, after ``delay`` seconds."""

    def __init__(self, table: str, delay: float = 0.0) -> None:
        self.table, self.delay = table, delay

    @hookimpl
    def switchboard_store_migrations(self):
        return [Migration(1, (f"CREATE TABLE {self.table} (callid TEXT)",))]

    @hookimpl
    def switchboard_ice(self, event, ctx):
        time.sleep(self.delay)
        with ctx.store.transaction() as tx:
            tx.execute(f"INSERT INTO {self.table} (callid) VALUES (?)", (event.callid,))


def test_the_commits_of_a_callbacks_plugins_share_one_flush_before_the_answer():
    rt = runtime(
        {"a": _Writer("a_calls"), "b": _Writer("b_calls")}, policy={"ice_default": "connect"}
    )
    app = webapp(rt)
    flush = rt.store._flush
    fsyncs = []
    real = flush._fsync
    flush._fsync = lambda: (fsyncs.append(flush._committed), real())
    try:
        post(app, ice("c-flush"))
        committed = flush._committed  # both plugins' commits (the core's are not durable)
        assert len(fsyncs) == 1 and fsyncs[0] == committed  # one flush covered both
        assert flush._flushed >= committed  # before the answer was returned
    finally:
        rt.close()


def test_a_hook_the_pipeline_stopped_waiting_for_flushes_its_own_commits():
    slow = _Writer("late_calls", delay=0.2)
    rt = runtime({"late": slow}, plugins={"late": {"timeout": 0.05, "on_error": "abstain"}})
    app = webapp(rt)
    flush = rt.store._flush
    try:
        answered = post(app, ice("c-late")).json
        assert answered["action"]["name"] == "hangup"  # the default: nobody proposed
        assert rt.store.query("SELECT COUNT(*) FROM late_calls") == [(0,)]
        assert wait_for(lambda: rt.store.query("SELECT COUNT(*) FROM late_calls") == [(1,)])
        assert wait_for(lambda: flush._flushed >= flush._committed)
    finally:
        rt.close()


def test_a_long_read_does_not_hold_up_writes_and_a_transaction_reads_its_own(tmp_path):
    store = SqliteStore(str(tmp_path / "r.db"), synchronous="normal")
    store.write("CREATE TABLE t (x INTEGER)")
    started, finished = threading.Event(), threading.Event()
    counted = []

    def long_read():  # a scan of some seconds, like a metrics scrape over a big table
        started.set()
        counted.extend(
            store.query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000000) "
                "SELECT COUNT(*) FROM n"
            )
        )
        finished.set()

    reader = threading.Thread(target=long_read)
    reader.start()
    started.wait()
    time.sleep(0.1)  # the scan is under way
    with store.transaction() as tx:
        tx.execute("INSERT INTO t (x) VALUES (1)")
        assert store.query("SELECT COUNT(*) FROM t") == [(1,)]  # its own, uncommitted write
    store.write("INSERT INTO t (x) VALUES (2)")
    assert not finished.is_set()  # both writes went through while the scan ran
    reader.join()
    assert counted == [(5000000,)]
    assert store.query("SELECT COUNT(*) FROM t") == [(2,)]
    store.close()
