"""PostgreSQL, the shared store of several server processes (psycopg 3 and its pool)."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.store.base import (
    HEALTH_UPSERT,
    InspectTimeout,
    Store,
    StoreError,
    StoreTimeout,
    Tx,
    deadline_left,
    redact_url,
)

OWNER_BEAT = 0.2  # seconds between a PostgreSQL store's checks of its own process lock
OWNER_CONFIRM = 0.6  # seconds another process's lock must stay free before it is dead
OWNER_TIMEOUT_MS = 1000  # statement timeout of the lock connection
REBOUND_AFTER = 0.05  # seconds: PostgreSQL statements later than this get their timeout again


# what libpq says when it cannot connect, shown as the cause; anything else (a message
# that may quote part of the URL, hence of a password) is named by its type only
SAFE_CAUSES = re.compile(
    r"connection refused|timeout expired|could not translate host name|"
    r"no route to host|network is unreachable|"
    r'role "[^"]*" does not exist|database "[^"]*" does not exist|'
    r'password authentication failed for user "[^"]*"|'
    r"no password supplied|the database system is (starting up|shutting down)|"
    r"too many clients already|server closed the connection unexpectedly",
    re.IGNORECASE,
)


def _why(url: str, exc: Exception) -> str:
    """Why PostgreSQL cannot be reached (``connection refused``, ``role "x" does not
    exist``): the pool only says it timed out, so one direct attempt asks libpq. Only a
    known cause is quoted, never the rest of its message."""
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
    except Exception as direct:  # noqa: BLE001 - any failure: look for a known cause
        found = SAFE_CAUSES.search(str(direct))
        if found is not None:
            cause = found.group(0)
            return cause[:1].lower() + cause[1:]
    return type(exc).__name__


def _check_url(url: str) -> None:
    """Refuse a URL libpq would read otherwise than it looks (its messages would then
    quote part of the password as a host name), naming the problem, never the URL."""
    from psycopg.conninfo import conninfo_to_dict

    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if authority.count("@") > 1:
        raise StoreError(
            "store.url: a user name or password holding '@', ':' or '/' must be "
            "percent-encoded (@ is %40)"
        )
    try:
        conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - its message quotes the URL: not shown
        raise StoreError("store.url is not a valid PostgreSQL URL") from None


class _HidePasswords(logging.Filter):
    """psycopg's pool logs the connection string it failed with: never its password."""

    PATTERN = re.compile(r"(://[^:/@\s]*:)[^@\s]*@|(password\s*=\s*)('[^']*'|\S+)")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        hidden = self.PATTERN.sub(
            lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", text
        )
        if hidden != text:
            record.msg, record.args = hidden, None
        return True


logging.getLogger("psycopg.pool").addFilter(_HidePasswords())


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
        _check_url(url)
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
                f"cannot connect to PostgreSQL at {redact_url(url)}: {_why(url, exc)}"
            ) from None
        threading.Thread(target=self._beat, name="switchboard-store-owner", daemon=True).start()

    def lock(self, conn: Any, key: str) -> None:
        self.run(conn, "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection, waiting at most until the thread's deadline (``until``)."""
        from psycopg_pool import PoolTimeout

        left = deadline_left()
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
        left = deadline_left()
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

    def inspect(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """In a transaction of its own whose ``SET LOCAL statement_timeout`` is
        ``inspect_timeout``: PostgreSQL cancels the statement then, and the connection
        goes back to the pool."""
        import psycopg

        limit = self.inspect_timeout
        with self._connection() as conn, conn.transaction():
            self._bound_at.pop(id(conn), None)  # this statement's own limit, not a deadline's
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(limit * 1000))}")
            try:
                return list(self.run(conn, sql, params).fetchall())
            except psycopg.errors.QueryCanceled:
                raise InspectTimeout(limit) from None

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

        if self._closing.is_set():  # never made again once close() has begun: it would leak
            raise StoreError("the store is closed")
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
        left = deadline_left()
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
