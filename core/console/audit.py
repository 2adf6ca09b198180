"""The console's audit log: who did what, when, from where, and how it ended.

Every change made from the console (a top-up, a retry, a replay, a login, a logout) is
written to ``console_audit`` *before* it runs (outcome ``started``), then given its
outcome (``ok``, ``refused`` or ``failed``) and the text the action returned. So a
change that happened always has its row: when the first write fails, the action does
not run. The table is the first of the console's own migrations (``core.console.schema``),
applied when the console starts on a store.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from core.store import Migration, Store

MIGRATION = Migration(
    1,
    (
        """CREATE TABLE console_audit (
            id TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT,
            address TEXT
        )""",
        "CREATE INDEX console_audit_at ON console_audit (at)",
    ),
    "the audit log of changes made from the operator console",
)
DETAIL_LIMIT = 500  # characters of an action's text kept
ACTOR_LIMIT = 64  # an operator name (core.console.auth.NAME_LIMIT)


@dataclass(frozen=True)
class Entry:
    id: str
    at: float
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: str | None
    address: str | None


def begin(store: Store, actor: str, action: str, target: str | None, address: str | None) -> str:
    """Record that ``actor`` starts ``action`` on ``target``; returns the row's id.
    Raises when the store cannot take it: then the action must not run."""
    entry = uuid.uuid4().hex
    store.write(
        "INSERT INTO console_audit (id, at, actor, action, target, outcome, address) "
        "VALUES (?, ?, ?, ?, ?, 'started', ?)",
        (entry, time.time(), _actor(actor), action, _cut(target), _cut(address)),
    )
    return entry


def finish(store: Store, entry: str, outcome: str, detail: str | None) -> None:
    store.write(
        "UPDATE console_audit SET outcome = ?, detail = ? WHERE id = ?",
        (outcome, _cut(detail), entry),
    )


def record(
    store: Store,
    actor: str,
    action: str,
    target: str | None,
    address: str | None,
    outcome: str,
    detail: str | None = None,
) -> None:
    """One row for something that is done as it is recorded (a login, a logout)."""
    store.write(
        "INSERT INTO console_audit (id, at, actor, action, target, outcome, detail, address) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            uuid.uuid4().hex,
            time.time(),
            _actor(actor),
            action,
            _cut(target),
            outcome,
            _cut(detail),
            _cut(address),
        ),
    )


def recent(
    store: Store, *, before: float | None = None, limit: int = 50
) -> tuple[list[Entry], float | None]:
    """The newest entries (older than ``before``), and the cursor of the next page."""
    sql = "SELECT id, at, actor, action, target, outcome, detail, address FROM console_audit"
    params: list[object] = []
    if before is not None:
        sql += " WHERE at < ?"
        params.append(before)
    rows = store.inspect(sql + f" ORDER BY at DESC LIMIT {int(limit) + 1}", params)
    entries = [Entry(*row) for row in rows[:limit]]
    more = len(rows) > limit
    return entries, (entries[-1].at if more and entries else None)


def _actor(actor: str) -> str:
    return actor[:ACTOR_LIMIT]


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:DETAIL_LIMIT]
