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
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

OWNER_BEAT = 0.2  # seconds between a PostgreSQL store's checks of its own process lock
OWNER_CONFIRM = 0.6  # seconds another process's lock must stay free before it is dead
OWNER_TIMEOUT_MS = 1000  # statement timeout of the lock connection
REBOUND_AFTER = 0.05  # seconds: PostgreSQL statements later than this get their timeout again
BUSY_STEP = 0.05  # seconds SQLite waits for another process's lock before _begin looks again
CACHE_KIB = 2048  # SQLite page cache of the connection a process writes with
READ_CACHE_KIB = 512  # and of the one it reads with outside transactions


class StoreError(RuntimeError):
    """The store cannot do what was asked (the message names the owner or table)."""


class StoreTimeout(StoreError):
    """The store did not become available before the caller's deadline (``Store.until``)."""


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
    was sent) or ``busy`` (another worker is processing it right now). For a new claim
    of a callback processed before (a redelivery or a retry), ``attempts`` counts this
    one too and ``done`` names the plugins whose work on it already succeeded.
    """

    status: str
    answer: str | None = None
    attempts: int = 1
    done: tuple[str, ...] = ()


@dataclass(frozen=True)
class Waiting:
    """A received DiCE or Notify whose plugins' work has not all succeeded yet."""

    callid: str
    event: str
    sub: str
    body: str | None
    state: str  # pending (being processed), retry (waiting for its retry) or parked
    attempts: int
    done: tuple[str, ...]
    lease_until: float
    last_error: str | None
    owner: str | None = None  # the server process that claimed it last


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
    Migration(
        2,
        (
            "ALTER TABLE callbacks ADD COLUMN body TEXT",
            "ALTER TABLE callbacks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE callbacks ADD COLUMN progress TEXT",
            "ALTER TABLE callbacks ADD COLUMN last_error TEXT",
            "ALTER TABLE callbacks ADD COLUMN owner TEXT",
            "CREATE INDEX callbacks_due ON callbacks (state, lease_until)",
        ),
        "the received body of each DiCE and Notify, and the retries of their plugins' work",
    ),
    Migration(
        3,
        (
            """CREATE TABLE switchboard_health (
                id INTEGER PRIMARY KEY,
                written_at DOUBLE PRECISION NOT NULL
            )""",
        ),
        "readiness write probe: one row, rewritten by every /readyz",
    ),
)

HEALTH_UPSERT = (
    "INSERT INTO switchboard_health (id, written_at) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at"
)
MIN_FREE_BYTES = 1 << 20  # a SQLite store's filesystem with less free is full for readiness



_DEADLINE = threading.local()  # .at: this thread's deadline for store waits (monotonic)


def _remaining() -> float | None:
    """Seconds this thread may still wait for the store, or None (no deadline)."""
    at: float | None = getattr(_DEADLINE, "at", None)
    return None if at is None else max(0.0, at - time.monotonic())


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
    errors: tuple[type[BaseException], ...] = (StoreError,)  # what a failing store raises
    instance = ""  # this server process, as claims name their owner (see ``alive``)

    def alive(self, owner: str) -> bool:
        """Whether the server process that made a claim (``owner``) still runs; True
        when this process cannot tell. A claim of a dead one is taken over at once."""
        return True

    @staticmethod
    @contextmanager
    def until(deadline: float | None) -> Iterator[None]:
        """Within this block, on this thread, waits for the store (a connection, the
        write lock) end at ``deadline`` (``time.monotonic()``) with ``StoreTimeout``. The
        pipeline runs the store work of a callback, and its plugins' hooks, in one, so
        that a store that cannot answer costs a callback its budget at most."""
        outer = getattr(_DEADLINE, "at", None)
        _DEADLINE.at = deadline if outer is None or deadline is None else min(outer, deadline)
        try:
            yield
        finally:
            _DEADLINE.at = outer

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

    def sync(self) -> None:
        """Return once every commit made so far (by any thread) is on disk."""

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

    # ---- can it take writes? (readiness)

    last_write_error: str | None = None  # why the latest write failed; None once one succeeds
    _faults: tuple[type[BaseException], ...] = ()  # the backend's errors that may be faults

    def _fault(self, exc: BaseException) -> str | None:
        """What a failed write says about the store (disk full, read-only, down), or None
        when it is the statement's own fault (a constraint, a syntax error)."""
        return None

    @contextmanager
    def _watching_writes(self) -> Iterator[None]:
        """Wraps each backend's commit path: remembers whether the latest write failed."""
        try:
            yield
        except self._faults as exc:
            reason = self._fault(exc)
            if reason is not None:
                self.last_write_error = reason
            raise
        self.last_write_error = None

    def write_fault(self) -> str | None:
        """Why the store cannot take writes now, as far as this process can tell without
        writing: the latest write failed (and why). ``None`` when nothing says so."""
        error = self.last_write_error
        return f"the last write failed: {error}" if error is not None else None

    def probe_write(self, timeout: float) -> None:
        """Write the time into ``switchboard_health``; raises unless the store takes a
        write now. Waits at most about ``timeout`` seconds for a connection."""
        self.write(HEALTH_UPSERT, (time.time(),))

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
        self,
        callid: str,
        event: str,
        sub: str,
        lease: float,
        now: float | None = None,
        *,
        body: str | None = None,
    ) -> Claim:
        """Atomically claim ``(callid, event, sub)`` for processing (see ``Claim``).

        A claim whose lease ran out (its worker died) can be taken over, and so can work
        waiting for its retry or parked, when ``body`` is given (a redelivery). With
        ``body`` (DiCE, Notify) the callback's body is recorded with the claim and the
        commit is durable: once flushed (see ``deferred_flush``), it cannot be lost.
        ``Claim.attempts`` is the claim's token: ``finish`` and ``postpone`` apply only
        while no other worker has claimed the callback since.
        """
        now = time.time() if now is None else now
        if self.write(  # the common case, a first delivery: one statement
            "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until, body, owner) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?) ON CONFLICT (callid, event, sub) DO NOTHING",
            (callid, event, sub, now, now + lease, body, self.instance),
            # a claim without a body, lost in a power cut: a redelivery is processed again
            durable=body is not None,
        ):
            return Claim("new")
        with self.transaction() as tx:
            tx.lock(f"callback:{callid}:{event}:{sub}")
            row = tx.one(
                "SELECT state, answer, lease_until, attempts, progress, body, owner FROM callbacks "
                "WHERE callid = ? AND event = ? AND sub = ?",
                (callid, event, sub),
            )
            if row is None:
                tx.execute(
                    "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until, body, owner) "
                    "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                    (callid, event, sub, now, now + lease, body, self.instance),
                )
                return Claim("new")
            state, answer, lease_until, attempts, progress, stored, owner = row
            if state == "done":
                return Claim("done", answer)
            if (
                lease_until < now
                or (state in ("retry", "parked") and body is not None)
                or (state == "pending" and owner and owner != self.instance and not self.alive(owner))
            ):
                taken = tx.execute(  # unless a retry worker took it since it was read
                    "UPDATE callbacks SET state = 'pending', lease_until = ?, attempts = ?, body = ?, "
                    "owner = ? WHERE callid = ? AND event = ? AND sub = ? AND state = ? "
                    "AND lease_until = ?",
                    (
                        now + lease,
                        attempts + 1,
                        stored or body,
                        self.instance,
                        callid,
                        event,
                        sub,
                        state,
                        lease_until,
                    ),
                ).rowcount
                if taken:
                    return Claim("new", attempts=attempts + 1, done=_names(progress))
            return Claim("busy")

    def finish(
        self,
        callid: str,
        event: str,
        sub: str,
        answer: str | None,
        trace: str,
        outcome: str,
        attempts: int = 1,
    ) -> None:
        """Record the answer and trace of a claimed callback (the claim's ``attempts``)."""
        self.write(
            "UPDATE callbacks SET state = 'done', answer = ?, trace = ?, outcome = ?, finished_at = ?, "
            "last_error = NULL WHERE callid = ? AND event = ? AND sub = ? AND attempts = ?",
            (answer, trace, outcome, time.time(), callid, event, sub, attempts),
            durable=False,  # lost in a power cut, the callback is processed again
        )

    def postpone(
        self,
        callid: str,
        event: str,
        sub: str,
        *,
        attempts: int,
        done: Sequence[str],
        error: str,
        retry_at: float,
        park: bool,
        trace: str,
    ) -> None:
        """Record that some plugins' work on a received callback failed: it waits for a
        retry at ``retry_at`` (the plugins in ``done`` are not run again), or is parked
        for an operator. Applies only to the claim ``attempts``."""
        self.write(
            "UPDATE callbacks SET state = ?, progress = ?, last_error = ?, lease_until = ?, "
            "trace = ? WHERE callid = ? AND event = ? AND sub = ? AND attempts = ? "
            "AND state = 'pending'",
            (
                "parked" if park else "retry",
                ",".join(done),
                error[:1000],
                retry_at,
                trace,
                callid,
                event,
                sub,
                attempts,
            ),
            durable=False,  # lost in a power cut, the claim's lease runs out instead
        )

    def due(self, now: float | None = None, limit: int = 20) -> list[Waiting]:
        """Received DiCE and Notify callbacks whose retry is due, or whose worker died."""
        now = time.time() if now is None else now
        due = self._waiting("state IN ('pending', 'retry') AND lease_until < ?", [now], limit)
        if len(due) < limit:  # and the claims of server processes that died (kill -9)
            owners = self.query(
                "SELECT DISTINCT owner FROM callbacks WHERE state = 'pending' AND lease_until >= ? "
                "AND event IN ('dice', 'notify') AND owner IS NOT NULL AND owner <> ?",
                (now, self.instance),
            )
            for (owner,) in owners:
                if not self.alive(owner):
                    due += self._waiting(
                        "state = 'pending' AND owner = ? AND lease_until >= ?",
                        [owner, now],
                        limit - len(due),
                    )
        return due

    def waiting(self, callid: str | None = None) -> list[Waiting]:
        """Every received DiCE and Notify not yet fully processed: being processed
        (``pending``), waiting for a retry (``retry``) or ``parked``."""
        where, params = "state IN ('pending', 'retry', 'parked')", []
        if callid is not None:
            where += " AND callid = ?"
            params.append(callid)
        return self._waiting(where, params, None)

    def _waiting(self, where: str, params: list[Any], limit: int | None) -> list[Waiting]:
        sql = (
            "SELECT callid, event, sub, body, state, attempts, progress, lease_until, last_error, "
            f"owner FROM callbacks WHERE {where} AND event IN ('dice', 'notify') ORDER BY lease_until"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [
            Waiting(c, e, s, b, st, a, _names(p), lu, le, o)
            for c, e, s, b, st, a, p, lu, le, o in self.query(sql, params)
        ]

    def take(self, item: Waiting, lease: float, now: float | None = None) -> Claim | None:
        """Claim a waiting callback for a retry: one waiting for its retry or parked (now,
        even before its time), or one whose worker's lease ran out or whose server process
        died; not if another worker claimed it since it was read. Returns the claim, or
        None."""
        now = time.time() if now is None else now
        dead = item.state == "pending" and item.lease_until >= now and item.owner is not None
        if dead and (item.owner == self.instance or self.alive(item.owner or "")):
            return None
        if self.write(
            "UPDATE callbacks SET state = 'pending', lease_until = ?, attempts = attempts + 1, "
            "owner = ? WHERE callid = ? AND event = ? AND sub = ? AND state = ? AND lease_until = ? "
            "AND (state IN ('retry', 'parked') OR lease_until < ? OR owner = ?)",
            (
                now + lease,
                self.instance,
                item.callid,
                item.event,
                item.sub,
                item.state,
                item.lease_until,
                now,
                item.owner if dead else None,
            ),
            durable=False,
        ):
            return Claim("new", attempts=item.attempts + 1, done=item.done)
        return None

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


def _names(progress: str | None) -> tuple[str, ...]:
    return tuple(n for n in (progress or "").split(",") if n)


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
                f"busy_timeout = {int(BUSY_STEP * 1000)}",  # see _begin
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
    def _locked(self) -> Iterator[None]:
        """Hold the write connection's lock, waiting at most until the thread's deadline."""
        left = _remaining()
        if left is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=left):
            raise StoreTimeout("the SQLite store was busy until the deadline")
        try:
            yield
        finally:
            self._lock.release()

    def _begin(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run the statement that takes the file's write lock (``BEGIN IMMEDIATE``, or an
        autocommit write). Another process holding it makes SQLite wait up to
        ``BUSY_STEP`` and say "database is locked"; this tries again until the thread's
        deadline (``Store.until``), or the store's busy timeout without one."""
        left = _remaining()
        end = time.monotonic() + (self._busy_timeout if left is None else left)
        while True:
            try:
                return conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= end:
                    raise
                # the file's lock was held for a whole step: look again

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._locked(), self._watching_writes():
            conn = self._conn()
            self._begin(conn, "BEGIN IMMEDIATE")
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
            with self._locked():
                return self._conn().execute(sql, params).fetchall()
        with self._read_lock:
            return self._read_conn().execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        with self._locked(), self._watching_writes():
            changed: int = self._begin(self._conn(), sql, params).rowcount  # autocommit
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
        self.errors = (StoreError, psycopg.Error)
        self._faults = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
        self.url = url
        self._timeout = timeout
        self._bound_at: dict[int, float] = {}  # id(connection) -> when _bound last set it
        # This process holds a session advisory lock named after it on a connection of
        # its own for as long as it runs: PostgreSQL drops it when the process dies (the
        # connection goes with it), so another process can tell (``alive``).
        self.instance = f"pg|{uuid.uuid4().hex}"
        self._owner_lock = threading.Lock()
        self._owner: Any = None
        self._suspects: dict[str, float] = {}  # owner -> when its lock was first seen free
        self._closing = threading.Event()
        try:
            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, timeout=timeout, open=True, name="switchboard"
            )
            self._pool.wait(timeout=timeout)
            with self._owner_lock:
                self._owner_conn()
        except Exception as exc:  # the message may name the host, never a password
            pool = getattr(self, "_pool", None)
            if pool is not None:
                pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: {type(exc).__name__}"
            ) from None
        threading.Thread(target=self._beat, name="switchboard-store-owner", daemon=True).start()

    def lock(self, conn: Any, key: str) -> None:
        self.run(conn, "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection, waiting at most until the thread's deadline (``until``)."""
        from psycopg_pool import PoolTimeout

        left = _remaining()
        try:
            cm = self._pool.connection(timeout=self._timeout if left is None else left)
            conn = cm.__enter__()
        except PoolTimeout:
            raise StoreTimeout(
                f"no PostgreSQL connection within {self._timeout if left is None else left:.2f} s"
            ) from None
        try:
            yield conn
        except BaseException as exc:
            if not cm.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            cm.__exit__(None, None, None)

    def _bound(self, conn: Any) -> None:
        """Within ``Store.until``, end the statements of this transaction (a lock wait
        included) at the thread's deadline: ``statement_timeout`` is per statement, so
        ``run`` sets it again for a statement that starts 50 ms or more later."""
        left = _remaining()
        if left is None:
            self._bound_at.pop(id(conn), None)
            return
        conn.execute(
            "SELECT set_config('statement_timeout', %s, true)", (f"{max(1, int(left * 1000))}ms",)
        )
        self._bound_at[id(conn)] = time.monotonic()

    def run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        bound = self._bound_at.get(id(conn))
        if bound is not None and time.monotonic() - bound > REBOUND_AFTER:
            self._bound(conn)
        return conn.execute(_pg_sql(sql), tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._watching_writes(), self._connection() as conn, conn.transaction():
            self._bound(conn)
            yield Tx(conn, self)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            self._bound(conn)
            return list(self.run(conn, sql, params).fetchall())

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        with self._watching_writes(), self._connection() as conn:  # commits on leaving
            self._bound(conn)
            return int(self.run(conn, sql, params).rowcount)

    def _fault(self, exc: BaseException) -> str | None:
        return type(exc).__name__  # PoolTimeout, DiskFull, ...: never the URL's password

    def _owner_conn(self) -> Any:
        """The connection holding this process's lock (see ``instance``), (re)made; the
        caller holds ``_owner_lock``. Raises when the lock cannot be had now."""
        import psycopg

        if self._owner is None or self._owner.closed or self._owner.broken:
            if self._owner is not None:
                self._owner.close()
                self._owner = None
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            try:
                conn.execute(f"SET statement_timeout = {OWNER_TIMEOUT_MS}")
                got = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self.instance,)
                ).fetchone()
                if not got or not got[0]:  # the old session is not gone yet: later
                    raise StoreError("this process's lock is still held by its old session")
            except BaseException:
                conn.close()
                raise
            self._owner = conn
        return self._owner

    def alive(self, owner: str) -> bool:
        """A process is dead when its lock has been free on looks ``OWNER_CONFIRM``
        seconds apart: a live process whose connection dropped (a restart) takes its
        lock again within ``OWNER_BEAT`` (its own thread), before then."""
        if not owner.startswith("pg|"):
            return True
        left = _remaining()
        if not self._owner_lock.acquire(timeout=OWNER_CONFIRM if left is None else left):
            return True  # cannot tell in time: assume it runs
        try:
            conn = self._owner_conn()
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (owner,)
            ).fetchone()
            free = bool(row and row[0])
            if free:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (owner,))
        except Exception:  # noqa: BLE001 - cannot tell: assume it runs
            return True
        finally:
            self._owner_lock.release()
        now = time.monotonic()
        if not free:
            self._suspects.pop(owner, None)
            return True
        first = self._suspects.setdefault(owner, now)
        return now - first < OWNER_CONFIRM

    def _beat(self) -> None:
        """This process's own thread: keep its lock, making the connection again when it
        dropped."""
        while not self._closing.wait(OWNER_BEAT):
            if not self._owner_lock.acquire(timeout=OWNER_BEAT):
                continue
            try:
                self._owner_conn().execute("SELECT 1")
            except Exception:  # noqa: BLE001 - dropped (a restart): made again next beat
                if self._owner is not None:
                    self._owner.close()
                self._owner = None
            finally:
                self._owner_lock.release()

    def probe_write(self, timeout: float) -> None:
        # the pool's own timeout (10 s) is for callbacks; a probe gives up sooner
        with self._watching_writes(), self._pool.connection(timeout=timeout) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            self.run(conn, HEALTH_UPSERT, (time.time(),))

    def tables(self) -> list[str]:
        return [
            n
            for (n,) in self.query(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() ORDER BY table_name"
            )
        ]

    def close(self) -> None:
        self._closing.set()
        self._pool.close()
        with self._owner_lock:
            if self._owner is not None:
                self._owner.close()
                self._owner = None


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
