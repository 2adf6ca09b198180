"""The store: one source of truth for the core (dedupe, traces, retries) and the plugins.

SQLite (``core.store.sqlite``) is the embedded default; PostgreSQL
(``core.store.postgres``) the shared store of several server processes. The interface
and the core's callbacks table are in ``core.store.base``. ``open_store`` opens the one a
``store.url`` names.
"""

from __future__ import annotations

import os

from core.store.base import (
    CORE_MIGRATIONS,
    HEALTH_UPSERT,
    INSPECT_TIMEOUT,
    Claim,
    Deferred,
    InspectTimeout,
    Migration,
    Received,
    Store,
    StoreError,
    StoreTimeout,
    Summary,
    Tx,
    Waiting,
    one_line,
    redact_url,
)
from core.store.postgres import PostgresStore
from core.store.shadow import ShadowStore
from core.store.sqlite import MIN_FREE_BYTES, GroupFlush, SqliteStore

__all__ = [
    "CORE_MIGRATIONS",
    "HEALTH_UPSERT",
    "INSPECT_TIMEOUT",
    "MIN_FREE_BYTES",
    "Claim",
    "Deferred",
    "GroupFlush",
    "InspectTimeout",
    "Migration",
    "PostgresStore",
    "Received",
    "ShadowStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreTimeout",
    "Summary",
    "Tx",
    "Waiting",
    "one_line",
    "open_store",
    "redact_url",
]


def open_store(
    url: str,
    base_dir: str | os.PathLike[str] = ".",
    *,
    pool_size: int = 16,
    sqlite_synchronous: str = "full",
    inspect_timeout: float = INSPECT_TIMEOUT,
) -> Store:
    """The store a ``store.url`` names: ``sqlite:///relative/path``, ``sqlite:////abs/path``,
    ``sqlite://`` (a private temporary file) or ``postgresql://user@host:port/db``;
    ``inspect_timeout``: seconds an operator's read may run (``Store.inspect``)."""
    store = _open(url, base_dir, pool_size, sqlite_synchronous)
    store.inspect_timeout = inspect_timeout
    return store


def _open(
    url: str, base_dir: str | os.PathLike[str], pool_size: int, sqlite_synchronous: str
) -> Store:
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
