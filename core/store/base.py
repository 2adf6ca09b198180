"""The store's interface: transactions, deadlines, migrations, and the core's own table
of callbacks (claims, answers, traces, retries). The backends are ``core.store.sqlite``
and ``core.store.postgres``; ``core.store`` opens the one a ``store.url`` names.

SQL is kept portable: ``?`` placeholders, ``DOUBLE PRECISION`` times (Unix seconds),
``TEXT`` JSON, no backend-specific upserts in the core, so both backends share it.
Plugins use ``store.transaction()``; writes inside one are atomic and serialised.
Schema changes come as versioned ``Migration`` lists per owner (``core`` or a plugin
name), applied once at start-up and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any


class StoreError(RuntimeError):
    """The store cannot do what was asked (the message names the owner or table)."""


class StoreTimeout(StoreError):
    """The store did not become available before the caller's deadline (``Store.until``)."""


INSPECT_TIMEOUT = 10.0  # seconds an operator's read may run (``Store.inspect``)


class InspectTimeout(StoreError):
    """An operator's read (``Store.inspect``) ran past its time limit and was stopped, so
    that a broad query cannot hold a connection (or SQLite's reader) for ever."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the query took longer than {limit:g} s; narrow the filters")
        self.limit = limit


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


@dataclass(frozen=True, slots=True)
class Received:
    """What a callback says of its call when it arrives, kept with its claim for the
    calls view (``core.calls``): the numbers (ICE, DiCE), the DiCE's duration and result."""

    caller: str | None = None
    destination: str | None = None
    duration: int | None = None
    result: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """What the answer of a callback was and why, kept in columns by ``Store.finish``
    for the calls view (``core.calls``), from the same write as the trace."""

    rule: str | None = None
    decided_by: str | None = None  # the deciding plugins, comma-separated
    capped_at: int | None = None  # the answer's maxDuration
    capped_by: str | None = None
    fallback: bool = False  # the answer is the configured fallback
    elapsed_ms: float | None = None  # to decide the answer
    failed: str | None = None  # plugins that failed: "name:status,..."


# a new claim's row (``Store.claim``): its first delivery, and the re-insert of a
# claim a takeover found gone
_CLAIM_INSERT = (
    "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until, body, owner, "
    "caller, destination, duration, result) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
    Migration(
        4,
        (
            # known when the callback arrives (``Received``): written by the claim
            "ALTER TABLE callbacks ADD COLUMN caller TEXT",
            "ALTER TABLE callbacks ADD COLUMN destination TEXT",
            "ALTER TABLE callbacks ADD COLUMN duration INTEGER",
            "ALTER TABLE callbacks ADD COLUMN result TEXT",
            # known once it is answered (``Summary``): written by the finish
            "ALTER TABLE callbacks ADD COLUMN rule TEXT",
            "ALTER TABLE callbacks ADD COLUMN decided_by TEXT",
            "ALTER TABLE callbacks ADD COLUMN capped_at INTEGER",
            "ALTER TABLE callbacks ADD COLUMN capped_by TEXT",
            "ALTER TABLE callbacks ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE callbacks ADD COLUMN elapsed_ms DOUBLE PRECISION",
            "ALTER TABLE callbacks ADD COLUMN failed TEXT",
            # redeliveries of this callback; on the ICE's row, of all the call's callbacks
            "ALTER TABLE callbacks ADD COLUMN redeliveries INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE callbacks ADD COLUMN call_redeliveries INTEGER NOT NULL DEFAULT 0",
            # the calls (core.calls): partial indexes of the ICE rows, so that the other
            # events' rows cost them nothing
            "CREATE INDEX calls_started ON callbacks (received_at, callid) WHERE event = 'ice'",
            (
                "CREATE INDEX calls_caller ON callbacks (caller, received_at, callid) "
                "WHERE event = 'ice'"
            ),
            (
                "CREATE INDEX calls_destination ON callbacks (destination, received_at, callid) "
                "WHERE event = 'ice'"
            ),
            (  # entered once the ICE is answered, not at its claim
                "CREATE INDEX calls_rule ON callbacks (rule, received_at, callid) "
                "WHERE event = 'ice' AND rule IS NOT NULL"
            ),
            (
                "CREATE INDEX calls_redelivered ON callbacks (received_at, callid) "
                "WHERE event = 'ice' AND call_redeliveries > 0"
            ),
        ),
        "the summary of each callback in columns, and the calls' indexes (core.calls)",
    ),
    Migration(
        6,
        (
            # the calls' answer and deciding-plugin filters (core.calls); like calls_rule,
            # entered once the ICE is answered, not at its claim
            (
                "CREATE INDEX calls_outcome ON callbacks (outcome, received_at, callid) "
                "WHERE event = 'ice' AND outcome IS NOT NULL"
            ),
            (
                "CREATE INDEX calls_decided ON callbacks (decided_by, received_at, callid) "
                "WHERE event = 'ice' AND decided_by IS NOT NULL"
            ),
        ),
        "the calls' indexes of the answer and of the deciding plugins (core.calls)",
    ),
    Migration(
        7,
        (
            """CREATE TABLE config_revisions (
                revision TEXT PRIMARY KEY,
                content TEXT NOT NULL,
                first_loaded_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE config_loads (
                revision TEXT NOT NULL,
                loaded_at DOUBLE PRECISION NOT NULL,
                how TEXT NOT NULL,
                instance TEXT
            )""",
            "CREATE INDEX config_loads_at ON config_loads (loaded_at)",
        ),
        "the configuration revisions loaded, and when (core.revisions)",
    ),
)

HEALTH_UPSERT = (
    "INSERT INTO switchboard_health (id, written_at) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at"
)



_DEADLINE = threading.local()  # .at: this thread's deadline for store waits (monotonic)


def deadline_left() -> float | None:
    """Seconds this thread may still wait for the store, or None (no deadline)."""
    at: float | None = getattr(_DEADLINE, "at", None)
    return None if at is None else max(0.0, at - time.monotonic())


class _Until:
    """``Store.until``'s block (a class: it wraps every store call of a callback)."""

    __slots__ = ("deadline", "outer")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __enter__(self) -> None:
        outer = self.outer = getattr(_DEADLINE, "at", None)
        deadline = self.deadline
        _DEADLINE.at = deadline if outer is None or deadline is None else min(outer, deadline)

    def __exit__(self, *exc: object) -> None:
        _DEADLINE.at = self.outer


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
    inspect_timeout = INSPECT_TIMEOUT  # seconds; a longer ``inspect`` is ``InspectTimeout``
    instance = ""  # this server process, as claims name their owner (see ``alive``)

    def alive(self, owner: str) -> bool:
        """Whether the server process that made a claim (``owner``) still runs; True
        when this process cannot tell. A claim of a dead one is taken over at once."""
        return True

    @staticmethod
    def until(deadline: float | None) -> _Until:
        """Within this block, on this thread, waits for the store (a connection, the
        write lock) end at ``deadline`` (``time.monotonic()``) with ``StoreTimeout``. The
        pipeline runs the store work of a callback, and its plugins' hooks, in one, so
        that a store that cannot answer costs a callback its budget at most."""
        return _Until(deadline)

    # ---- what a backend provides

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """An atomic write transaction."""
        raise NotImplementedError
        yield  # pragma: no cover

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction."""
        raise NotImplementedError

    def inspect(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read for an operator (the calls view, the console, the commands), which may
        scan: it never holds up the callbacks' own reads (SQLite: a connection of its
        own; PostgreSQL: a pooled connection, as every read), and is stopped after
        ``inspect_timeout`` seconds with ``InspectTimeout``, so that an operator's broad
        query cannot run for ever."""
        return self.query(sql, params)

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        """One statement in a transaction of its own; returns the rows it changed.
        Cheaper than ``transaction()`` when a single statement is all there is.

        ``durable=False`` lets SQLite skip the flush to disk for this commit (the next
        durable commit flushes it): for bookkeeping whose loss in a power cut only means
        a redelivered callback is processed again, such as the core's claims."""
        raise NotImplementedError

    def deferred_flush(self) -> AbstractContextManager[Deferred]:
        """Within this block, on this thread, durable commits return without waiting for
        the disk; the block's ``Deferred.seq`` says what ``flush`` must then wait for.
        The pipeline runs each hook in one and flushes once before it answers, so the
        commits of all a callback's plugins share one flush. Backends whose every commit
        is durable by itself (PostgreSQL) leave ``seq`` at 0."""
        return nullcontext(Deferred())

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
            self._failed_write(exc)
            raise
        self.last_write_error = None

    def _failed_write(self, exc: BaseException) -> None:
        reason = self._fault(exc)
        if reason is not None:
            self.last_write_error = reason

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
        received: Received | None = None,
        redelivery: bool = True,
        durable: bool | None = None,
    ) -> Claim:
        """Atomically claim ``(callid, event, sub)`` for processing (see ``Claim``).

        A claim whose lease ran out (its worker died) can be taken over, and so can work
        waiting for its retry or parked, when ``body`` is given (a redelivery). With
        ``body`` (DiCE, Notify) the callback's body is recorded with the claim and the
        commit is durable: once flushed (see ``deferred_flush``), it cannot be lost.
        ``durable=False`` records a body without that (an ICE, ACE or PIE: kept for
        ``serve.py replay``; lost in a power cut, the callback is processed again).
        ``Claim.attempts`` is the claim's token: ``finish`` and ``postpone`` apply only
        while no other worker has claimed the callback since.

        ``received`` is kept with the claim (the calls view's numbers). A callback
        claimed before is a redelivery: counted, in the same transaction, on its row
        and on the call's ICE row (``redelivery=False``: the same delivery asking again).
        """
        now = time.time() if now is None else now
        r = received or _NOTHING_RECEIVED
        claimed = (
            callid,
            event,
            sub,
            now,
            now + lease,
            body,
            self.instance,
            r.caller,
            r.destination,
            r.duration,
            r.result,
        )
        if self.write(  # the common case, a first delivery: one statement
            _CLAIM_INSERT + " ON CONFLICT (callid, event, sub) DO NOTHING",
            claimed,
            # a claim without a body, lost in a power cut: a redelivery is processed again
            durable=body is not None if durable is None else durable,
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
                tx.execute(_CLAIM_INSERT, claimed)
                return Claim("new")
            if redelivery:
                tx.execute(
                    "UPDATE callbacks SET "
                    "redeliveries = redeliveries + CASE WHEN event = ? AND sub = ? THEN 1 ELSE 0 END, "
                    "call_redeliveries = call_redeliveries + CASE WHEN event = 'ice' THEN 1 ELSE 0 END "
                    "WHERE callid = ? AND ((event = ? AND sub = ?) OR (event = 'ice' AND sub = ''))",
                    (event, sub, callid, event, sub),
                )
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
        summary: Summary | None = None,
    ) -> None:
        """Record the answer and trace of a claimed callback (the claim's ``attempts``),
        and its ``summary`` in the columns the calls view reads."""
        s = summary or _NO_SUMMARY
        self.write(
            "UPDATE callbacks SET state = 'done', answer = ?, trace = ?, outcome = ?, finished_at = ?, "
            "last_error = NULL, rule = ?, decided_by = ?, capped_at = ?, capped_by = ?, "
            "fallback = ?, elapsed_ms = ?, failed = ? "
            "WHERE callid = ? AND event = ? AND sub = ? AND attempts = ?",
            (
                answer,
                trace,
                outcome,
                time.time(),
                s.rule,
                s.decided_by,
                s.capped_at,
                s.capped_by,
                1 if s.fallback else 0,
                s.elapsed_ms,
                s.failed,
                callid,
                event,
                sub,
                attempts,
            ),
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

    def purge(self, before: float, batch: int = 1000) -> int:
        """Delete the recorded callbacks of calls received before ``before`` (Unix
        seconds): their bodies, answers and traces, with the numbers they hold. Work
        still waiting (pending, retry, parked) is kept. Deletes ``batch`` calls per
        transaction, so the callbacks' writes are never held up for long; returns the
        number of callbacks deleted."""
        deleted = 0
        oldest = "SELECT callid FROM callbacks WHERE received_at < ? AND state = 'done' "
        if not self.query(oldest + "LIMIT 1", (before,)):
            return 0  # the common case: no write, no flush
        while True:
            with self.transaction() as tx:
                found = tx.all(  # the oldest first, along callbacks_received
                    oldest + f"ORDER BY received_at LIMIT {int(batch)}", (before,)
                )
                if not found:
                    return deleted
                calls = sorted({callid for (callid,) in found})
                marks = ", ".join("?" * len(calls))
                deleted += tx.execute(
                    f"DELETE FROM callbacks WHERE callid IN ({marks}) AND received_at < ? "
                    "AND state = 'done'",
                    (*calls, before),
                ).rowcount
                if len(found) < batch:
                    return deleted

    def answer_of(self, callid: str, event: str, sub: str) -> str | None:
        """The answer recorded for a callback once it is done; ``None`` until then."""
        rows = self.query(
            "SELECT answer FROM callbacks WHERE callid = ? AND event = ? AND sub = ? "
            "AND state = 'done'",
            (callid, event, sub),
        )
        return rows[0][0] if rows else None

    def traces(self, callid: str) -> list[dict[str, Any]]:
        """Every recorded callback of a call, oldest first."""
        rows = self.query(
            "SELECT event, sub, state, answer, trace, outcome, received_at FROM callbacks "
            "WHERE callid = ? ORDER BY received_at",
            (callid,),
        )
        keys = ("event", "sub", "state", "answer", "trace", "outcome", "received_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]


_NOTHING_RECEIVED = Received()
_NO_SUMMARY = Summary()


def _names(progress: str | None) -> tuple[str, ...]:
    return tuple(n for n in (progress or "").split(",") if n)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type, then its message's lines joined (database
    errors often add DETAIL and HINT lines)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# query or conninfo parameters whose values are secrets (``password``, ``sslpassword``,
# an API key or token...): their values are never shown
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s])[\w.-]*(?:pass|pwd|secret|token|key|auth|cred|sig)[\w.-]*\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'|[^&;\s#]*)"
)


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """A store (or webhook) URL with its secrets removed, for messages, logs and pages:
    the password of its userinfo (everything between "://" and the last "@", but the
    user name unless ``keep_user`` is false), and the values of query or conninfo
    parameters named like secrets (``password=``, ``sslpassword=``, ``token=``,
    ``api_key=``...)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        if not keep_user:
            rest = f"***@{host}"
        elif ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            # a user part that looks like more than a name (a "/" or "?") is not shown
            user = "***" if re.search(r"[/?#&=]", user) else user
            rest = f"{user}:***@{host}"
        elif re.search(r"[/?#&=]", userinfo):  # the last "@" is past the authority
            rest = f"***@{host}"
        url = f"{scheme}://{rest}"
    return _SECRET_PARAM.sub(r"\1***", url)
