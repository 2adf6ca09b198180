"""crm's outbox: delivers each recorded call to the CRM, with claims and dead letters.

A record put into the durable outbox (in the transaction that commits the call record)
is POSTed by a background worker (``plugins.crm.webhook``), retried with exponential
backoff, and moved to a dead-letter table after ``max_attempts``. The DiCE answer never
waits for the CRM.

Several servers may share the outbox. Each record is claimed on its own, for one
attempt: a claim sets a lease (``2 x delivery_timeout + 5 s``: the connection and the
answer may each take up to the timeout) and a claim token, and succeeds only if no one
else holds the record. After the POST, a failure is booked only by the holder of the
claim; a success always removes the record, whoever holds it. So a record is POSTed
twice only when its lease runs out first: a server that died, or stalled past its lease,
between the claim and the bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from core import Store, Tx
from plugins.crm import webhook

log = logging.getLogger("switchboard.plugin.crm")

LEASE_MARGIN = 5.0  # seconds a claim outlives the longest attempt
REPLAY_BATCH = 200  # dead letters one transaction of a "replay all" moves


def enqueue(tx: Tx, callid: str, payload: str, now: float) -> None:
    """Put a record's payload into the outbox, due ``now``."""
    tx.execute(
        "INSERT INTO crm_outbox (callid, payload, attempts, next_attempt_at, created_at) "
        "VALUES (?, ?, 0, ?, ?)",
        (callid, payload, now, now),
    )


class Outbox:
    """The outbox of one server: its drains, and the worker that runs them."""

    def __init__(self, store: Store, config: Mapping[str, Any]) -> None:
        self.store = store
        self.config = config  # the crm plugin's settings
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ worker

    def start(self) -> None:
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="crm-outbox", daemon=True)
        self._worker.start()

    def wake(self) -> None:
        """A record may be due: the worker looks now instead of at its next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=self.config["delivery_timeout"] + 5)
            self._worker = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.drain()
            except Exception:
                log.exception("outbox drain failed")
                worked = 0
            if not worked:
                self._wake.wait(self.config["poll_interval"])
                self._wake.clear()

    # ------------------------------------------------------------------ delivery

    def drain(self, now: float | None = None, only: str | None = None) -> int:
        """Attempt up to ``batch`` due records, each claimed just before its own
        attempt; return how many were attempted."""
        attempted = 0
        while attempted < self.config["batch"]:
            if self._stop.is_set() and only is None:
                break
            claimed = self.claim(now, only)
            if claimed is None:
                break
            self.attempt(*claimed)
            attempted += 1
        return attempted

    def claim(self, now: float | None, only: str | None) -> tuple[str, str, int, str] | None:
        """Claim the most overdue record for one attempt: (callid, payload, attempt
        number, claim token), or None when nothing is due. The claim is exclusive: the
        UPDATE succeeds only while the record is due, i.e. not leased by anyone."""
        at = time.time() if now is None else now
        lease = at + self.config["delivery_timeout"] * 2 + LEASE_MARGIN
        token = uuid.uuid4().hex
        with self.store.transaction() as tx:
            tx.lock("crm:outbox")  # claimers queue here instead of racing for one row
            sql = "SELECT callid, payload, attempts FROM crm_outbox WHERE next_attempt_at <= ?"
            params: list[Any] = [at]
            if only is not None:
                sql += " AND callid = ?"
                params.append(only)
            row = tx.one(sql + " ORDER BY next_attempt_at LIMIT 1", params)
            if row is None:
                return None
            callid, payload, attempts = row
            taken = tx.execute(
                "UPDATE crm_outbox SET next_attempt_at = ?, claim = ? "
                "WHERE callid = ? AND next_attempt_at <= ?",
                (lease, token, callid, at),
            ).rowcount
        return (callid, payload, attempts + 1, token) if taken == 1 else None

    def attempt(self, callid: str, payload: str, attempt: int, token: str) -> None:
        """POST a claimed record and book the outcome: delivered, retried later, or
        moved to the dead letters."""
        error = self.post(callid, payload.encode())
        now = time.time()
        with self.store.transaction() as tx:
            if error is None:
                held = tx.one("SELECT claim FROM crm_outbox WHERE callid = ?", (callid,))
                if held is None or held[0] != token:
                    log.warning(
                        "call %s: the claim ran out before its delivery was recorded; "
                        "it may reach the CRM twice (same Idempotency-Key)",
                        callid,
                    )
                # delivered: the record is done, whoever holds it now
                tx.execute("DELETE FROM crm_outbox WHERE callid = ?", (callid,))
                tx.execute("UPDATE crm_calls SET delivered_at = ? WHERE callid = ?", (now, callid))
                log.info("call %s delivered to the CRM (attempt %d)", callid, attempt)
            elif attempt >= self.config["max_attempts"]:
                moved = tx.execute(
                    "DELETE FROM crm_outbox WHERE callid = ? AND claim = ?", (callid, token)
                ).rowcount
                if moved != 1:
                    _lost(callid, error)
                    return
                tx.execute(
                    "INSERT INTO crm_dead (callid, payload, attempts, last_error, failed_at) VALUES (?, ?, ?, ?, ?)",
                    (callid, payload, attempt, error, now),
                )
                log.error(
                    "call %s moved to the CRM dead letters after %d attempts: %s",
                    callid,
                    attempt,
                    error,
                )
            else:
                delay = min(self.config["backoff"] * 2 ** (attempt - 1), self.config["max_backoff"])
                booked = tx.execute(
                    "UPDATE crm_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                    "claim = NULL WHERE callid = ? AND claim = ?",
                    (attempt, now + delay, error, callid, token),
                ).rowcount
                if booked != 1:
                    _lost(callid, error)
                    return
                log.warning(
                    "call %s: CRM delivery attempt %d failed (%s); retry in %.1f s",
                    callid,
                    attempt,
                    error,
                    delay,
                )

    def post(self, callid: str, body: bytes) -> str | None:
        """POST one record to the configured webhook; None on success, else a short error."""
        return webhook.post(
            self.config["webhook_url"],
            self.config["webhook_secret"],
            self.config["delivery_timeout"],
            callid,
            body,
        )

    # ------------------------------------------------------------------ dead letters

    def replay(self, callid: str | None = None) -> list[str]:
        """Move dead letters (one, or all) back to the outbox, due now: all of them in
        batches of ``REPLAY_BATCH``, one transaction each, in call id order, so the
        write lock is let go between batches (ICEs and DiCEs wait for one batch at
        most, not for every dead letter)."""
        now = time.time()
        sql = "SELECT callid, payload FROM crm_dead"
        if callid:
            return self._move(sql + " WHERE callid = ?", (callid,), now)
        moved: list[str] = []
        batch = self._move(sql + " ORDER BY callid LIMIT ?", (REPLAY_BATCH,), now)
        while True:
            moved += batch
            if len(batch) < REPLAY_BATCH:
                return moved
            batch = self._move(
                sql + " WHERE callid > ? ORDER BY callid LIMIT ?", (batch[-1], REPLAY_BATCH), now
            )

    def _move(self, sql: str, params: tuple[object, ...], now: float) -> list[str]:
        with self.store.transaction() as tx:
            tx.lock("crm:outbox")
            rows = tx.all(sql, params)
            for cid, payload in rows:
                tx.execute("DELETE FROM crm_dead WHERE callid = ?", (cid,))
                enqueue(tx, cid, payload, now)
        return [r[0] for r in rows]


def _lost(callid: str, error: str) -> None:
    log.warning(
        "call %s: CRM delivery attempt failed (%s) after the claim ran out; "
        "the record is left to whoever holds it now",
        callid,
        error,
    )
