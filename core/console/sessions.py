"""The console's sessions, kept in the store (``console_sessions``), so that a restart
logs no operator out and every server process on one store (behind one admin address)
knows every session.

A row holds a SHA-256 digest of the session's id, never the id: the id is a secret only
the operator's cookie carries, and a copy of the table (a backup, a replica, a read
grant) logs nobody in. With the id it holds the operator (``actor``), what the session
logged in with (``core.console.auth.credential``: a digest of the token, or the user's
name and a digest of their password hash), the session's CSRF token, the login time,
the last use, and the messages to show on the next page (after an action).

Reads are cheap: a request looks its session up by primary key (one ``Store.inspect``,
the operators' read path). The last use is written at most once every ``SEEN_EVERY``
seconds per session (a commit that may be lost: it only makes the session end sooner),
so that a page costs no write; the idle timeout counts from it, hence may end a session
up to ``SEEN_EVERY`` seconds before ``admin.session_minutes`` after its last request.
Each login deletes the sessions that have ended and, past ``MAX_SESSIONS``, the least
recently used: the table stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from core.console.auth import Session
from core.store import Migration, Store

MIGRATION = Migration(
    2,
    (
        """CREATE TABLE console_sessions (
            id TEXT PRIMARY KEY,
            actor TEXT NOT NULL,
            credential TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL,
            flash TEXT
        )""",
        "CREATE INDEX console_sessions_seen ON console_sessions (seen_at)",
    ),
    "the operator console's sessions (a digest of each id, never the id)",
)
MAX_SESSIONS = 10_000
SESSION_LIFETIME = 12 * 3600.0  # a session ends this long after its login, used or not
SEEN_EVERY = 30.0  # seconds between two writes of a session's last use
FLASH_KEPT = 5  # messages waiting for the next page
ID_LIMIT = 128  # characters of a cookie worth looking up (ids are 43)
LOCK = "console:sessions"

_COLUMNS = "actor, credential, csrf, created_at, seen_at, flash"


def digest(sid: str) -> str:
    """What the store keeps of a session id."""
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    """The sessions in a store, ended after ``idle`` seconds unused or ``lifetime``
    seconds after their login. Every method takes the store: a reload may bring
    another one."""

    def __init__(self, idle: float, lifetime: float = SESSION_LIFETIME) -> None:
        self.idle, self.lifetime = idle, lifetime

    def new(self, store: Store, user: str, credential: str, now: float | None = None) -> Session:
        """Log ``user`` in: a new session, in the store before its id is given out."""
        now = time.time() if now is None else now
        session = Session(
            secrets.token_urlsafe(32),
            user,
            secrets.token_urlsafe(32),
            now,
            now,
            credential=credential,
        )
        with store.transaction() as tx:
            tx.lock(LOCK)
            self._prune(tx, now)
            tx.execute(
                f"INSERT INTO console_sessions (id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (digest(session.sid), user, credential, session.csrf, now, now),
            )
        return session

    def _prune(self, tx: Any, now: float) -> None:
        """Delete the sessions that have ended, and the least recently used past
        ``MAX_SESSIONS - 1`` (room for the one being made)."""
        tx.execute(
            "DELETE FROM console_sessions WHERE seen_at < ? OR created_at < ?",
            (now - self.idle, now - self.lifetime),
        )
        row = tx.one(
            "SELECT seen_at FROM console_sessions ORDER BY seen_at DESC LIMIT 1 OFFSET ?",
            (MAX_SESSIONS - 1,),
        )
        if row is not None:
            tx.execute("DELETE FROM console_sessions WHERE seen_at <= ?", (row[0],))

    def get(self, store: Store, sid: str | None, now: float | None = None) -> Session | None:
        """The live session of this id, or ``None`` (one ended is deleted)."""
        if not sid or len(sid) > ID_LIMIT:
            return None
        now = time.time() if now is None else now
        key = digest(sid)
        rows = store.inspect(f"SELECT {_COLUMNS} FROM console_sessions WHERE id = ?", (key,))
        if not rows:
            return None
        user, credential, csrf, created, seen, flash = rows[0]
        if now - seen > self.idle or now - created > self.lifetime:
            store.write("DELETE FROM console_sessions WHERE id = ?", (key,))
            return None
        if now - seen >= SEEN_EVERY:  # at most one write of it per SEEN_EVERY
            store.write(
                "UPDATE console_sessions SET seen_at = ? WHERE id = ? AND seen_at < ?",
                (now, key, now),
                durable=False,  # lost, the session only ends sooner
            )
            seen = now
        session = Session(sid, user, csrf, created, seen, credential=credential)
        session.flash[:] = [(str(k), str(t)) for k, t in json.loads(flash or "[]")]
        return session

    def end(self, store: Store, sid: str) -> None:
        store.write("DELETE FROM console_sessions WHERE id = ?", (digest(sid),))

    def flash(self, store: Store, session: Session, kind: str, text: str) -> None:
        """Keep a message for the session's next page (whichever process serves it)."""
        session.flash.append((kind, text))
        session.flash[:] = session.flash[-FLASH_KEPT:]
        store.write(
            "UPDATE console_sessions SET flash = ? WHERE id = ?",
            (json.dumps(session.flash), digest(session.sid)),
        )

    def take_flash(self, store: Store, session: Session) -> tuple[tuple[str, str], ...]:
        """The session's messages, now shown: gone from the store."""
        if not session.flash:
            return ()
        shown, session.flash[:] = tuple(session.flash), []
        store.write("UPDATE console_sessions SET flash = NULL WHERE id = ?", (digest(session.sid),))
        return shown

    def count(self, store: Store) -> int:
        ((n,),) = store.inspect("SELECT COUNT(*) FROM console_sessions")
        return int(n)
