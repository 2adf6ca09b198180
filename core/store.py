"""The store: one source of truth for the core (dedupe, traces) and the plugins.

SQLite (stdlib, WAL, one file next to the config) is the embedded default. SQL is kept
portable: ``?`` placeholders, ``DOUBLE PRECISION`` times (Unix seconds), ``TEXT`` JSON,
no backend-specific upserts in the core, so a PostgreSQL store can share it.

Plugins use ``store.transaction()``; writes inside one are atomic and serialised (SQLite
``BEGIN IMMEDIATE``). Schema changes come as versioned ``Migration`` lists per owner
(``core`` or a plugin name), applied once at start-up and recorded in
``schema_migrations``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CACHE_KIB = 2048  # SQLite page cache of the connection a process writes with
READ_CACHE_KIB = 512  # and of the one it reads with outside transactions


class StoreError(RuntimeError):
    """The store cannot do what was asked (the message names the owner or table)."""


@dataclass(frozen=True)
class Migration:
    """One schema step: ``version`` (increasing per owner) and its SQL statements."""

    version: int
    statements: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Claim:
    """The result of claiming a callback for processing.

    ``status``: ``new`` (process it), ``done`` (already answered: ``answer`` holds what
    was sent) or ``busy`` (another worker is processing it right now).
    """

    status: str
    answer: str | None = None


CORE_MIGRATIONS = (
    Migration(
        1,
        (
            """CREATE TABLE callbacks (
                callid TEXT NOT NULL,
                event TEXT NOT NULL,
                sub TEXT NOT NULL,
                state TEXT NOT NULL,
                answer TEXT,
                trace TEXT,
                outcome TEXT,
                received_at DOUBLE PRECISION NOT NULL,
                lease_until DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION,
                PRIMARY KEY (callid, event, sub)
            )""",
            "CREATE INDEX callbacks_received ON callbacks (received_at)",
        ),
        "callback dedupe claims, answers and traces",
    ),
)


@dataclass
class Deferred:
    """Durable commits made inside ``Store.deferred_flush`` and not yet flushed."""

    seq: int = 0


class Tx:
    """A transaction handle: ``execute`` with ``?`` placeholders, fetch helpers, locks."""

    def __init__(self, conn: Any, store: Store) -> None:
        self._conn = conn
        self._store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._store.run(self._conn, sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.execute(sql, params).fetchall())

    def lock(self, key: str) -> None:
        """Serialise this transaction with every other one that locks ``key``, in any
        process sharing the store, until it ends. Take it before a read-modify-write
        (a balance, a counter, an insert-if-absent). SQLite serialises all writers
        already; PostgreSQL takes a transaction-scoped advisory lock."""
        self._store.lock(self._conn, key)


class Store:
    """What the core and the plugins need from a database; SQLite and PostgreSQL."""

    backend = "?"

    # ---- what a backend provides

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """An atomic write transaction."""
        raise NotImplementedError
        yield  # pragma: no cover

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction."""
        raise NotImplementedError

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        """One statement in a transaction of its own; returns the rows it changed.
        Cheaper than ``transaction()`` when a single statement is all there is.

        ``durable=False`` lets SQLite skip the flush to disk for this commit (the next
        durable commit flushes it): for bookkeeping whose loss in a power cut only means
        a redelivered callback is processed again, such as the core's claims."""
        raise NotImplementedError

    @contextmanager
    def deferred_flush(self) -> Iterator[Deferred]:
        """Within this block, on this thread, durable commits return without waiting for
        the disk; the block's ``Deferred.seq`` says what ``flush`` must then wait for.
        The pipeline runs each hook in one and flushes once before it answers, so the
        commits of all a callback's plugins share one flush. Backends whose every commit
        is durable by itself (PostgreSQL) leave ``seq`` at 0."""
        yield Deferred()

    def flush(self, seq: int) -> None:
        """Return once the commits up to ``seq`` (from ``deferred_flush``) are on disk."""

    def run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        """Execute ``sql`` (``?`` placeholders) on a connection of this backend."""
        return conn.execute(sql, tuple(params))

    def lock(self, conn: Any, key: str) -> None:
        """See ``Tx.lock``."""

    def tables(self) -> list[str]:
        """Names of the tables in the store."""
        raise NotImplementedError

    def ping(self) -> None:
        self.query("SELECT 1")

    def close(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- migrations

    MIGRATION_LOCK = "schema_migrations"

    def _ensure_migration_table(self) -> None:
        # Under the migration lock: two processes starting on a fresh PostgreSQL database
        # would otherwise both run CREATE TABLE IF NOT EXISTS, and the loser fails with a
        # unique violation in the catalogue (IF NOT EXISTS is no guard against a
        # concurrent creation). The second one waits and then finds the table.
        with self.transaction() as tx:
            tx.lock(self.MIGRATION_LOCK)
            tx.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    owner TEXT NOT NULL, version INTEGER NOT NULL, description TEXT,
                    applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (owner, version))"""
            )

    def applied(self, owner: str) -> set[int]:
        """Versions of ``owner`` already applied (reads only; creates nothing)."""
        try:
            if "schema_migrations" not in self.tables():
                return set()
            rows = self.query("SELECT version FROM schema_migrations WHERE owner = ?", (owner,))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"cannot read the applied migrations of {owner!r}: {one_line(exc)}"
            ) from None
        return {v for (v,) in rows}

    def pending(self, owner: str, migrations: Sequence[Migration]) -> list[Migration]:
        done = self.applied(owner)
        return [m for m in migrations if m.version not in done]

    def migrate(self, owner: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply ``owner``'s pending migrations in order; return the versions applied.

        Safe to run from several processes at once: the table of applied versions is
        created, and each migration applied and recorded, in transactions that hold
        the migration lock (SQLite: every write transaction; PostgreSQL: an advisory
        lock), and each migration is checked again once the lock is held. Any failure
        is a ``StoreError`` with a one-line message."""
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise StoreError(f"migrations of {owner!r} must have strictly increasing versions")
        try:
            self._ensure_migration_table()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot create the migrations table: {one_line(exc)}") from None
        todo = self.pending(owner, migrations)
        applied = []
        for m in todo:
            try:
                with self.transaction() as tx:
                    tx.lock(self.MIGRATION_LOCK)
                    if tx.one(
                        "SELECT 1 FROM schema_migrations WHERE owner = ? AND version = ?",
                        (owner, m.version),
                    ):
                        continue  # another process got there first
                    for statement in m.statements:
                        tx.execute(statement)
                    tx.execute(
                        "INSERT INTO schema_migrations (owner, version, description, applied_at) VALUES (?, ?, ?, ?)",
                        (owner, m.version, m.description, time.time()),
                    )
            except Exception as exc:
                raise StoreError(
                    f"migration {m.version} of {owner!r} failed: {one_line(exc)}"
                ) from None
            applied.append(m.version)
        return applied

    # -------------------------------------------------------------- core: callbacks

    def claim(
        self, callid: str, event: str, sub: str, lease: float, now: float | None = None
    ) -> Claim:
        """Atomically claim ``(callid, event, sub)`` for processing (see ``Claim``).

        A claim whose lease ran out (its worker died) can be taken over.
        """
        now = time.time() if now is None else now
        if self.write(  # the common case, a first delivery: one statement
            "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until) "
            "VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT (callid, event, sub) DO NOTHING",
            (callid, event, sub, now, now + lease),
            durable=False,  # lost in a power cut, a redelivery is simply processed again
        ):
            return Claim("new")
        with self.transaction() as tx:
            tx.lock(f"callback:{callid}:{event}:{sub}")
            row = tx.one(
                "SELECT state, answer, lease_until FROM callbacks WHERE callid = ? AND event = ? AND sub = ?",
                (callid, event, sub),
            )
            if row is None:
                tx.execute(
                    "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until) "
                    "VALUES (?, ?, ?, 'pending', ?, ?)",
                    (callid, event, sub, now, now + lease),
                )
                return Claim("new")
            state, answer, lease_until = row
            if state == "done":
                return Claim("done", answer)
            if lease_until < now:
                tx.execute(
                    "UPDATE callbacks SET lease_until = ? WHERE callid = ? AND event = ? AND sub = ?",
                    (now + lease, callid, event, sub),
                )
                return Claim("new")
            return Claim("busy")

    def finish(
        self, callid: str, event: str, sub: str, answer: str | None, trace: str, outcome: str
    ) -> None:
        """Record the answer and trace of a claimed callback."""
        self.write(
            "UPDATE callbacks SET state = 'done', answer = ?, trace = ?, outcome = ?, finished_at = ? "
            "WHERE callid = ? AND event = ? AND sub = ?",
            (answer, trace, outcome, time.time(), callid, event, sub),
            durable=False,  # the plugins' own transactions carry what must survive
        )

    def release(self, callid: str, event: str, sub: str) -> None:
        """Drop an unfinished claim so that a redelivery is processed again."""
        with self.transaction() as tx:
            tx.execute(
                "DELETE FROM callbacks WHERE callid = ? AND event = ? AND sub = ? AND state = 'pending'",
                (callid, event, sub),
            )

    def answer_of(self, callid: str, event: str, sub: str) -> Claim:
        rows = self.query(
            "SELECT state, answer FROM callbacks WHERE callid = ? AND event = ? AND sub = ?",
            (callid, event, sub),
        )
        if not rows:
            return Claim("missing")
        state, answer = rows[0]
        return Claim("done", answer) if state == "done" else Claim("busy")

    def traces(self, callid: str) -> list[dict[str, Any]]:
        """Every recorded callback of a call, oldest first."""
        rows = self.query(
            "SELECT event, sub, state, answer, trace, outcome, received_at FROM callbacks "
            "WHERE callid = ? ORDER BY received_at",
            (callid,),
        )
        keys = ("event", "sub", "state", "answer", "trace", "outcome", "received_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]


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

    def committed(self) -> int:
        """Call right after a COMMIT returned; the commit's sequence number."""
        with self._cond:
            self._committed += 1
            return self._committed

    def wait(self, seq: int) -> None:
        """Return once commit ``seq`` is on disk."""
        with self._cond:
            while self._flushed < seq:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing, target = True, self._committed
                self._cond.release()
                try:
                    self._fsync()
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._cond.notify_all()
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


class SqliteStore(Store):
    """SQLite: one file, WAL, two connections per process (one for writes and the reads
    inside a transaction, one for other reads), each used by one thread at a time; every
    write transaction ``BEGIN IMMEDIATE`` (so writers are serialised and ``Tx.lock`` is
    free)."""

    backend = "sqlite"

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
        # on a fresh store retry here, within the busy timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute(f"PRAGMA {pragma}")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect(
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

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            self._in_tx.depth = getattr(self._in_tx, "depth", 0) + 1
            try:
                yield Tx(conn, self)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._in_tx.depth -= 1
            conn.execute("COMMIT")
            seq = self._flush.committed() if self._flush else 0
        if seq:  # outside the lock: other writers go on while this one waits
            self._durable(seq)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if getattr(self._in_tx, "depth", 0):  # inside this thread's transaction: its view
            with self._lock:
                return self._conn().execute(sql, params).fetchall()
        with self._read_lock:
            return self._read_conn().execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        with self._lock:
            changed: int = self._conn().execute(sql, params).rowcount  # autocommit
            seq = self._flush.committed() if self._flush and durable else 0
        if seq:
            self._durable(seq)
        return changed

    def _durable(self, seq: int) -> None:
        deferred: Deferred | None = getattr(self._deferred, "current", None)
        if deferred is not None:
            deferred.seq = max(deferred.seq, seq)
        elif self._flush is not None:
            self._flush.wait(seq)

    @contextmanager
    def deferred_flush(self) -> Iterator[Deferred]:
        outer = getattr(self._deferred, "current", None)
        self._deferred.current = deferred = Deferred()
        try:
            yield deferred
        finally:
            self._deferred.current = outer
            if outer is not None:  # an enclosing block flushes for this one
                outer.seq = max(outer.seq, deferred.seq)
                deferred.seq = 0

    def flush(self, seq: int) -> None:
        if seq and self._flush is not None:
            self._flush.wait(seq)

    def lock(self, conn: Any, key: str) -> None:
        pass  # BEGIN IMMEDIATE already serialises every writer

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
        for each in (conn, reader):
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


class PostgresStore(Store):
    """PostgreSQL through psycopg 3 and a connection pool (``pip install
    sinch-switchboard[postgres]``). ``Tx.lock`` takes a transaction-scoped advisory
    lock, so read-modify-write sequences are serialised across every instance."""

    backend = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 16, timeout: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreError(
                "store.url is PostgreSQL but psycopg is not installed: pip install 'sinch-switchboard[postgres]'"
            ) from None
        self._errors = (psycopg.Error,)
        self.url = url
        try:
            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, timeout=timeout, open=True, name="switchboard"
            )
            self._pool.wait(timeout=timeout)
        except Exception as exc:  # the message may name the host, never a password
            raise StoreError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}"
            ) from None

    def run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        return conn.execute(_pg_sql(sql), tuple(params))

    def lock(self, conn: Any, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            yield Tx(conn, self)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn:
            return list(self.run(conn, sql, params).fetchall())

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        with self._pool.connection() as conn:  # commits on leaving
            return int(self.run(conn, sql, params).rowcount)

    def tables(self) -> list[str]:
        return [
            n
            for (n,) in self.query(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() ORDER BY table_name"
            )
        ]

    def close(self) -> None:
        self._pool.close()


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, then its message's lines joined (database
    errors often add DETAIL and HINT lines)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def redact_url(url: str) -> str:
    """A store URL with any password removed, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in userinfo else user}@{host}"


def open_store(
    url: str,
    base_dir: str | os.PathLike[str] = ".",
    *,
    pool_size: int = 16,
    sqlite_synchronous: str = "full",
) -> Store:
    """The store a ``store.url`` names: ``sqlite:///relative/path``, ``sqlite:////abs/path``,
    ``sqlite://`` (a private temporary file) or ``postgresql://user@host:port/db``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, pool_size=pool_size)
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if rest in ("", "/", "/:memory:"):
            return SqliteStore(":memory:", synchronous=sqlite_synchronous)
        if not rest.startswith("/"):
            raise StoreError(
                "store.url: expected sqlite:///relative/path or sqlite:////absolute/path"
            )
        rest = rest[1:]
        path = rest if os.path.isabs(rest) else os.path.join(base_dir, rest)
        return SqliteStore(path, synchronous=sqlite_synchronous)
    raise StoreError(
        f"store.url: unsupported store {url.split(':', 1)[0]!r} (use sqlite:/// or postgresql://)"
    )
