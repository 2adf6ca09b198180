"""SQLite, the embedded default: one file next to the config, WAL, durable commits by
group flush (one fsync of the write-ahead log for many commits)."""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.store.base import (
    Deferred,
    InspectTimeout,
    Store,
    StoreError,
    StoreTimeout,
    Tx,
    deadline_left,
)

BUSY_STEP = 0.05  # seconds SQLite waits for another process's lock before _retry_busy looks again
CACHE_KIB = 2048  # SQLite page cache of the connection a process writes with
READ_CACHE_KIB = 512  # and of the one it reads with outside transactions
MIN_FREE_BYTES = 1 << 20  # a SQLite store's filesystem with less free is full for readiness
PROGRESS_STEPS = 1000  # SQLite instructions between two looks at an inspect's clock


def _flush_failed(exc: OSError) -> StoreError:
    # after a failed fsync the kernel may have dropped the pages: a later fsync can
    # succeed without them, so nothing can be promised any more
    return StoreError(
        f"a flush of the SQLite write-ahead log failed ({exc.strerror or exc}); "
        "what was not yet on disk may be lost: restart the server"
    )


class GroupFlush:
    """Durability for commits made with ``synchronous=NORMAL``, one fsync at a time.

    Each durable commit takes a sequence number right after COMMIT and waits until the
    write-ahead log has been flushed to disk past it. The first waiter flushes (one
    ``fsync`` of the WAL file) for every commit finished before it started; those who
    arrive meanwhile wait for the next flush. Under load, many commits share one fsync
    (group commit) instead of paying one each, as SQLite's ``synchronous=FULL`` does.
    """

    def __init__(self, wal_path: str) -> None:
        self.wal_path = wal_path
        self._cond = threading.Condition()
        self._committed = 0
        self._flushed = 0
        self._flushing = False
        self.failed: StoreError | None = None  # set for good by a failed fsync

    def committed(self) -> int:
        """Call right after a COMMIT returned; the commit's sequence number."""
        with self._cond:
            self._committed += 1
            return self._committed

    def wait(self, seq: int) -> None:
        """Return once commit ``seq`` is on disk."""
        with self._cond:
            while self._flushed < seq:
                if self.failed is not None:
                    raise self.failed
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing, target = True, self._committed
                self._cond.release()
                try:
                    self._fsync()
                except OSError as exc:
                    self.failed = _flush_failed(exc)
                    raise self.failed from None
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._cond.notify_all()
                self._flushed = max(self._flushed, target)

    def sync(self) -> None:
        """fsync the write-ahead log now, whoever wrote to it (another process too)."""
        if self.failed is not None:
            raise self.failed
        with self._cond:
            target = self._committed
        try:
            self._fsync()
        except OSError as exc:
            self.failed = _flush_failed(exc)
            raise self.failed from None
        with self._cond:
            self._flushed = max(self._flushed, target)

    def _fsync(self) -> None:
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed into the database file, which SQLite synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot; /proc): "" when there is no
    such process, None when this process cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return ""
    except OSError:  # hidepid, no /proc
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5)


def _process_table() -> str:
    """Which process table this process sees: the machine's boot and its PID namespace,
    so that two containers sharing a hostname never judge each other's processes."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        return f"{socket.gethostname()}/{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"{socket.gethostname()}/?"


class SqliteStore(Store):
    """SQLite: one file, WAL, two connections per process (one for writes and the reads
    inside a transaction, one for other reads), each used by one thread at a time; every
    write transaction ``BEGIN IMMEDIATE`` (so writers are serialised and ``Tx.lock`` is
    free)."""

    backend = "sqlite"
    errors = (StoreError, sqlite3.Error, OSError)

    def alive(self, owner: str) -> bool:
        # the processes sharing a SQLite file run on one machine: ask its process table
        table, _, rest = owner.partition("|")
        pid, _, started = rest.partition("|")
        if table != _process_table() or table.endswith("/?") or not pid.isdigit():
            return True  # another process table, or not known: cannot tell
        now = _process_start(int(pid))
        return now is None or now == started

    def __init__(self, path: str, *, busy_timeout: float = 10.0, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise StoreError(
                f"store.sqlite_synchronous must be full or normal, got {synchronous!r}"
            )
        self._synchronous = synchronous.upper()
        self._flush: GroupFlush | None = None
        self._temp: str | None = None
        if path == ":memory:":  # one private file, so every thread sees the same database
            fd, path = tempfile.mkstemp(prefix="switchboard-", suffix=".db")
            os.close(fd)
            self._temp = path
        self.path = path
        if self._synchronous == "FULL":  # durable commits by group flush, see GroupFlush
            self._flush = GroupFlush(path + "-wal")
        self._busy_timeout = busy_timeout
        self.instance = f"{_process_table()}|{os.getpid()}|{_process_start(os.getpid()) or '?'}"
        # One connection for the process's writes, used by one thread at a time.
        # Writers are serialised anyway (here rather than in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms), and a single connection keeps its page
        # cache warm: with one connection per thread, every commit by one thread
        # emptied the caches of all the others, and each transaction began by reading
        # its pages again. Re-entrant, so a plugin may read inside its transaction.
        self._lock = threading.RLock()
        self._in_tx = threading.local()  # .depth: this thread's open transactions
        self._deferred = threading.local()  # .current: the Deferred of a deferred_flush block
        self._closed = False
        self._db: sqlite3.Connection | None = None
        self._conn()  # fail early if the file cannot be opened
        # Reads outside a transaction use a second connection, so that a long one (a
        # metrics scrape counting rows) never holds up the callbacks' writes.
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        # and operators' reads (``inspect``: the calls view, the console) a third, so
        # that an overview scanning a day of calls never holds up a callback's read
        self._inspect_lock = threading.Lock()
        self._inspector: sqlite3.Connection | None = None

    def _connect(self, *pragmas: str) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            for pragma in pragmas:
                self._pragma(conn, pragma)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from None
        return conn

    def _pragma(self, conn: sqlite3.Connection, pragma: str) -> None:
        # Switching a new file to WAL needs a moment alone with it, and SQLite reports
        # "database is locked" at once instead of waiting: processes started together
        # on a fresh store retry, as writers do.
        self._retry_busy(conn, f"PRAGMA {pragma}")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect(
                f"busy_timeout = {int(BUSY_STEP * 1000)}",  # see _retry_busy
                "journal_mode=WAL",
                "synchronous=NORMAL",  # "full" is made by GroupFlush
                "foreign_keys=ON",
                f"cache_size=-{CACHE_KIB}",
            )
        return self._db

    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = self._connect("query_only=ON", f"cache_size=-{READ_CACHE_KIB}")
        return self._reader

    def _acquire(self) -> None:
        """Take the write connection's lock, waiting at most until the thread's deadline."""
        left = deadline_left()
        if left is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=left):
            raise StoreTimeout("the SQLite store was busy until the deadline")

    def _retry_busy(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()
    ) -> Any:
        """Run a statement that takes the file's write lock (``BEGIN IMMEDIATE``, an
        autocommit write, the switch to WAL). Another process holding it makes SQLite
        wait up to ``BUSY_STEP`` (or not at all) and say "database is locked"; this tries
        again until the thread's deadline (``Store.until``), or the store's busy timeout
        without one."""
        left = deadline_left()
        end = time.monotonic() + (self._busy_timeout if left is None else left)
        while True:
            try:
                return conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= end:
                    raise
                time.sleep(0.01)  # the lock was held: look again

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        self._acquire()
        try:
            conn = self._conn()
            try:
                self._retry_busy(conn, "BEGIN IMMEDIATE")
            except self._faults as exc:
                self._failed_write(exc)
                raise
            self._in_tx.depth = getattr(self._in_tx, "depth", 0) + 1
            try:
                yield Tx(conn, self)
            except BaseException as exc:
                if isinstance(exc, self._faults):
                    self._failed_write(exc)
                _roll_back(conn)
                raise
            finally:
                self._in_tx.depth -= 1
            try:
                conn.execute("COMMIT")
            except self._faults as exc:
                # a failed COMMIT (disk full, I/O error) may leave the transaction open:
                # the shared connection must not carry it into the next writer's work
                self._failed_write(exc)
                _roll_back(conn)
                raise
            self.last_write_error = None
            seq = self._flush.committed() if self._flush else 0
        finally:
            self._lock.release()
        if seq:  # outside the lock: other writers go on while this one waits
            self._durable(seq)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if getattr(self._in_tx, "depth", 0):  # inside this thread's transaction: its view
            self._acquire()
            try:
                return self._conn().execute(sql, params).fetchall()
            finally:
                self._lock.release()
        with self._read_lock:
            return self._read_conn().execute(sql, params).fetchall()

    def inspect(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """On the inspect connection, stopped by its progress handler once
        ``inspect_timeout`` has passed (SQLite then interrupts the statement)."""
        limit = self.inspect_timeout
        with self._inspect_lock:
            if self._inspector is None:
                self._inspector = self._connect("query_only=ON", f"cache_size=-{READ_CACHE_KIB}")
            conn = self._inspector
            end = time.monotonic() + limit
            conn.set_progress_handler(lambda: time.monotonic() > end, PROGRESS_STEPS)
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if time.monotonic() > end and "interrupt" in str(exc):
                    raise InspectTimeout(limit) from None
                raise
            finally:
                conn.set_progress_handler(None, 0)

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        self._acquire()
        try:
            conn = self._conn()
            try:
                changed: int = self._retry_busy(conn, sql, params).rowcount  # autocommit
            except self._faults as exc:
                self._failed_write(exc)
                _roll_back(conn)
                raise
            self.last_write_error = None
            seq = self._flush.committed() if self._flush and durable else 0
        finally:
            self._lock.release()
        if seq:
            self._durable(seq)
        return changed

    def _durable(self, seq: int) -> None:
        deferred: Deferred | None = getattr(self._deferred, "current", None)
        if deferred is not None:
            deferred.seq = max(deferred.seq, seq)
        elif self._flush is not None:
            self._flush.wait(seq)

    def deferred_flush(self) -> _DeferredBlock:
        return _DeferredBlock(self._deferred)

    def flush(self, seq: int) -> None:
        if seq and self._flush is not None:
            self._flush.wait(seq)

    def sync(self) -> None:
        if self._flush is not None:
            self._flush.sync()

    def lock(self, conn: Any, key: str) -> None:
        pass  # BEGIN IMMEDIATE already serialises every writer

    _faults = (sqlite3.Error,)

    def _fault(self, exc: BaseException) -> str | None:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")):
            return str(exc)  # "database or disk is full", "disk I/O error", ...
        return None

    def write_fault(self) -> str | None:
        if self._flush is not None and self._flush.failed is not None:
            return str(self._flush.failed)
        # A full disk does not fail every write: a commit that fits in write-ahead log
        # space already allocated succeeds. The filesystem itself says it is full.
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            return f"cannot inspect the SQLite store's filesystem: {exc.strerror}"
        if fs.f_flag & os.ST_RDONLY:
            return "the SQLite store's filesystem is read-only"
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the SQLite store's disk is full ({free // 1024} KiB free)"
        return super().write_fault()

    def tables(self) -> list[str]:
        return [
            n
            for (n,) in self.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._db = self._db, None
        with self._read_lock:
            reader, self._reader = self._reader, None
        with self._inspect_lock:
            inspector, self._inspector = self._inspector, None
        for each in (conn, reader, inspector):
            if each is not None:
                try:
                    each.close()
                except sqlite3.Error:
                    pass
        if self._temp:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(self._temp + suffix)
                except FileNotFoundError:
                    pass


class _DeferredBlock:
    """``SqliteStore.deferred_flush``'s block (a class: every hook runs in one)."""

    __slots__ = ("local", "outer", "deferred")

    def __init__(self, local: threading.local) -> None:
        self.local = local

    def __enter__(self) -> Deferred:
        self.outer = getattr(self.local, "current", None)
        self.local.current = self.deferred = Deferred()
        return self.deferred

    def __exit__(self, *exc: object) -> None:
        outer, deferred = self.outer, self.deferred
        self.local.current = outer
        if outer is not None:  # an enclosing block flushes for this one
            outer.seq = max(outer.seq, deferred.seq)
            deferred.seq = 0


def _roll_back(conn: sqlite3.Connection) -> None:
    """End whatever transaction a failure left open on ``conn`` (SQLite may have rolled
    it back itself: then there is nothing to do, and nothing hides the first error)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
