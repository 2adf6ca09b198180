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

import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


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


class Tx:
    """A transaction handle: ``execute`` with ``?`` placeholders, fetch helpers."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(sql, tuple(params)).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, tuple(params)).fetchall())


class Store:
    """SQLite store. Thread-safe: one connection per thread, WAL, busy timeout."""

    backend = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self._temp: str | None = None
        if path == ":memory:":  # one private file, so every thread sees the same database
            fd, path = tempfile.mkstemp(prefix="switchboard-", suffix=".db")
            os.close(fd)
            self._temp = path
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._conn()  # fail early if the file cannot be opened

    # -------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError("the store is closed")
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from None
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """An atomic write transaction (serialised with every other writer)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield Tx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction."""
        return list(self._conn().execute(sql, tuple(params)).fetchall())

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
        if self._temp:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(self._temp + suffix)
                except FileNotFoundError:
                    pass

    # -------------------------------------------------------------- migrations

    def _ensure_migration_table(self) -> None:
        self._conn().execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                owner TEXT NOT NULL, version INTEGER NOT NULL, description TEXT,
                applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (owner, version))"""
        )

    def applied(self, owner: str) -> set[int]:
        """Versions of ``owner`` already applied (reads only; creates nothing)."""
        try:
            rows = self.query("SELECT version FROM schema_migrations WHERE owner = ?", (owner,))
        except sqlite3.OperationalError:  # no table yet: nothing applied
            return set()
        return {v for (v,) in rows}

    def pending(self, owner: str, migrations: Sequence[Migration]) -> list[Migration]:
        done = self.applied(owner)
        return [m for m in migrations if m.version not in done]

    def migrate(self, owner: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply ``owner``'s pending migrations in order; return the versions applied."""
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise StoreError(f"migrations of {owner!r} must have strictly increasing versions")
        self._ensure_migration_table()
        applied = []
        for m in self.pending(owner, migrations):
            try:
                with self.transaction() as tx:
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
            except sqlite3.Error as exc:
                raise StoreError(f"migration {m.version} of {owner!r} failed: {exc}") from None
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
        with self.transaction() as tx:
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
        with self.transaction() as tx:
            tx.execute(
                "UPDATE callbacks SET state = 'done', answer = ?, trace = ?, outcome = ?, finished_at = ? "
                "WHERE callid = ? AND event = ? AND sub = ?",
                (answer, trace, outcome, time.time(), callid, event, sub),
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


def open_store(path: str) -> Store:
    return Store(path)
