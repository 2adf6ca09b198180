"""The store a shadow plugin gets (``[plugins] shadow``): the real store, read for real,
whose writes never commit.

A shadow plugin runs on live traffic to show what it would decide, so it must read
what an enabled plugin would read (the real tables), yet nothing it writes may be seen
by anyone: not by the enabled plugins, not by the core, not by its own next call.
``ShadowStore`` wraps the running store so that:

* ``query`` and ``inspect`` read the real store;
* ``transaction()`` opens a real transaction (the same locks, the same view of its own
  writes) and always rolls it back at the end of its block, whether the block ended
  normally or not;
* ``write()`` runs its statement in such a transaction and returns the rows it would
  have changed;
* ``deferred_flush``, ``flush`` and ``sync`` do nothing durable, and ``close`` leaves the
  real store open (it is the runtime's).

Every other ``Store`` method (``claim``, ``finish``, ``migrate``...) is built on these,
so it too leaves no trace. What a rollback does not undo stays: a PostgreSQL sequence
drawn from still advances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from core.store.base import Deferred, Store, Tx


class _RollBack(Exception):
    """Raised inside the real transaction to make it roll back; never escapes."""


class ShadowStore(Store):
    """``store`` as a shadow plugin sees it (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._real = store
        self.backend = store.backend
        self.errors = store.errors
        self.instance = store.instance

    def __repr__(self) -> str:
        return f"ShadowStore({type(self._real).__name__})"

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self._real.transaction() as tx:
                yield tx
                raise _RollBack
        except _RollBack:
            pass

    def write(self, sql: str, params: Sequence[Any] = (), *, durable: bool = True) -> int:
        with self.transaction() as tx:
            return int(tx.execute(sql, params).rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._real.query(sql, params)

    def inspect(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._real.inspect(sql, params)

    def deferred_flush(self) -> AbstractContextManager[Deferred]:
        return nullcontext(Deferred())

    def flush(self, seq: int) -> None:
        pass

    def sync(self) -> None:
        pass

    def run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        return self._real.run(conn, sql, params)

    def lock(self, conn: Any, key: str) -> None:
        self._real.lock(conn, key)

    def alive(self, owner: str) -> bool:
        return self._real.alive(owner)

    def tables(self) -> list[str]:
        return self._real.tables()

    def write_fault(self) -> str | None:
        return self._real.write_fault()

    def close(self) -> None:
        pass  # the real store is the runtime's to close
