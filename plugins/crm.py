"""crm: records every finished call and delivers it to a CRM without losing one.

On DiCE a call record (caller, destination, start/answer/end as known, duration,
result, reason, debit, the ICE answer and its trace) is committed to the store before
the DiCE is answered. With ``webhook_url`` set, the record also goes into a durable
outbox in the same transaction; a background worker POSTs it as JSON with an
``Idempotency-Key`` (the call id) and an HMAC signature header
(``X-Switchboard-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` with
``X-Switchboard-Timestamp``), retries with exponential backoff, and moves it to a
dead-letter table after ``max_attempts``. The DiCE answer never waits for the CRM.

Several servers may share the outbox. Each record is claimed on its own, for one
attempt: a claim sets a lease (``2 x delivery_timeout + 5 s``: the connection and the
answer may each take up to the timeout) and a claim token, and succeeds only if no one
else holds the record. After the POST, a failure is booked only by the holder of the
claim; a success always removes the record, whoever holds it. So a record is POSTed
twice only when its lease runs out first: a server that died, or stalled past its lease,
between the claim and the bookkeeping.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from core import (
    CallContext,
    Dice,
    Key,
    Migration,
    Store,
    StoreGauges,
    hookimpl,
    pass_runtime,
    positive,
)

log = logging.getLogger("switchboard.plugin.crm")

MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE crm_calls (
                callid TEXT PRIMARY KEY, caller TEXT, destination TEXT, started_at TEXT, answered_at TEXT,
                ended_at TEXT, duration INTEGER, result TEXT, reason TEXT, debit_amount TEXT, debit_currency TEXT,
                ice_answer TEXT, ice_trace TEXT, recorded_at DOUBLE PRECISION NOT NULL,
                delivered_at DOUBLE PRECISION)""",
            "CREATE INDEX crm_calls_recorded ON crm_calls (recorded_at)",
            """CREATE TABLE crm_outbox (
                callid TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL,
                next_attempt_at DOUBLE PRECISION NOT NULL, last_error TEXT, created_at DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX crm_outbox_due ON crm_outbox (next_attempt_at)",
            """CREATE TABLE crm_dead (
                callid TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
                failed_at DOUBLE PRECISION NOT NULL)""",
        ),
        "call records, outbox, dead letters",
    ),
    Migration(
        2,
        ("ALTER TABLE crm_outbox ADD COLUMN claim TEXT",),
        "outbox records are claimed one at a time, with a token",
    ),
]

LEASE_MARGIN = 5.0  # seconds a claim outlives the longest attempt


def _url(value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")


KEYS = {
    "webhook_url": Key(str, None, "where call records are POSTed (none: record only)", check=_url),
    "webhook_secret": Key(
        str, None, "HMAC key for X-Switchboard-Signature", secret=True, env="SWITCHBOARD_CRM_SECRET"
    ),
    "delivery_timeout": Key(float, 5.0, "seconds per delivery attempt", check=positive),
    "max_attempts": Key(
        int, 8, "attempts before a record goes to the dead-letter table", check=positive
    ),
    "backoff": Key(float, 2.0, "seconds before the first retry; doubles each time", check=positive),
    "max_backoff": Key(float, 600.0, "longest wait between retries", check=positive),
    "poll_interval": Key(float, 1.0, "seconds between outbox checks when idle", check=positive),
    "batch": Key(
        int, 20, "records attempted in one pass, each claimed on its own", check=positive
    ),
}


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return (
        "v1="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


class Crm:
    """One instance per server."""

    def __init__(self) -> None:
        self.config: Mapping[str, Any] = {}
        self.store: Store | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return KEYS

    @hookimpl
    def switchboard_store_migrations(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        if config["webhook_url"] and not config["webhook_secret"]:
            raise ValueError(
                "webhook_url needs webhook_secret (or SWITCHBOARD_CRM_SECRET in the environment)"
            )
        self.config = config

    @hookimpl
    def switchboard_startup(self, store: Store, serving: bool) -> None:
        self.store = store
        if serving and self.config["webhook_url"]:
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="crm-outbox", daemon=True)
            self._worker.start()

    @hookimpl
    def switchboard_metrics(self, registry: Any) -> None:
        if self.store is not None:
            registry.register(
                StoreGauges(
                    self.store,
                    "SELECT (SELECT COUNT(*) FROM crm_outbox), (SELECT COUNT(*) FROM crm_dead)",
                    ("switchboard_crm_outbox_depth", "Call records waiting for CRM delivery"),
                    ("switchboard_crm_dead_letters", "Call records that exhausted their attempts"),
                )
            )

    @hookimpl
    def switchboard_shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=self.config["delivery_timeout"] + 5)
            self._worker = None

    # ------------------------------------------------------------------ DiCE: record

    @hookimpl
    def switchboard_dice(self, event: Dice, ctx: CallContext) -> None:
        started = answered = None
        ice_answer = ice_trace = None
        for row in ctx.store.traces(event.callid):
            trace = json.loads(row["trace"]) if row["trace"] else {}
            if row["event"] == "ice":
                started, ice_answer, ice_trace = (
                    trace.get("received_at"),
                    row["answer"],
                    row["trace"],
                )
            elif row["event"] == "ace":
                answered = trace.get("received_at")
        record = {
            "callid": event.callid,
            "caller": event.from_e164 or event.from_,
            "destination": event.to.e164
            if event.to and event.to.e164
            else (event.to.endpoint if event.to else None),
            "started_at": started,
            "answered_at": answered,
            "ended_at": event.timestamp,
            "duration": event.duration,
            "result": event.result,
            "reason": event.reason,
            "debit_amount": str(event.debit.amount) if event.debit else None,
            "debit_currency": event.debit.currency_id if event.debit else None,
            "ice_answer": ice_answer,
            "ice_trace": ice_trace,
        }
        now = time.time()
        with ctx.store.transaction() as tx:
            tx.lock(f"crm:call:{event.callid}")
            if tx.one("SELECT 1 FROM crm_calls WHERE callid = ?", (event.callid,)) is not None:
                return
            columns = list(record)
            tx.execute(
                f"INSERT INTO crm_calls ({', '.join(columns)}, recorded_at) "  # noqa: S608 - fixed column names
                f"VALUES ({', '.join('?' for _ in columns)}, ?)",
                [*record.values(), now],
            )
            if self.config["webhook_url"]:
                tx.execute(
                    "INSERT INTO crm_outbox (callid, payload, attempts, next_attempt_at, created_at) "
                    "VALUES (?, ?, 0, ?, ?)",
                    (
                        event.callid,
                        json.dumps(self.payload(record), separators=(",", ":")),
                        now,
                        now,
                    ),
                )
        self._wake.set()

    @staticmethod
    def payload(record: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k not in ("ice_answer", "ice_trace")}
        out["ice_answer"] = json.loads(record["ice_answer"]) if record.get("ice_answer") else None
        trace = json.loads(record["ice_trace"]) if record.get("ice_trace") else None
        out["ice_decision"] = (
            None
            if trace is None
            else {
                "rule": trace.get("rule"),
                "decided_by": trace.get("decided_by"),
                "plugins": trace.get("plugins"),
            }
        )
        return out

    # ------------------------------------------------------------------ delivery

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

    def drain(self, now: float | None = None, only: str | None = None) -> int:
        """Attempt up to ``batch`` due records, each claimed just before its own
        attempt; return how many were attempted."""
        attempted = 0
        while attempted < self.config["batch"]:
            if self._stop.is_set() and only is None:
                break
            claimed = self._claim(now, only)
            if claimed is None:
                break
            self._attempt(*claimed)
            attempted += 1
        return attempted

    def _claim(self, now: float | None, only: str | None) -> tuple[str, str, int, str] | None:
        """Claim the most overdue record for one attempt: (callid, payload, attempt
        number, claim token), or None when nothing is due. The claim is exclusive: the
        UPDATE succeeds only while the record is due, i.e. not leased by anyone."""
        assert self.store is not None
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

    def _attempt(self, callid: str, payload: str, attempt: int, token: str) -> None:
        assert self.store is not None
        error = self._post(callid, payload.encode())
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
                    self._lost(callid, error)
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
                    self._lost(callid, error)
                    return
                log.warning(
                    "call %s: CRM delivery attempt %d failed (%s); retry in %.1f s",
                    callid,
                    attempt,
                    error,
                    delay,
                )

    @staticmethod
    def _lost(callid: str, error: str) -> None:
        log.warning(
            "call %s: CRM delivery attempt failed (%s) after the claim ran out; "
            "the record is left to whoever holds it now",
            callid,
            error,
        )

    def _post(self, callid: str, body: bytes) -> str | None:
        """POST one record; None on success, else a short error (never the secret)."""
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            self.config["webhook_url"],
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": callid,
                "X-Switchboard-Timestamp": timestamp,
                "X-Switchboard-Signature": sign(self.config["webhook_secret"], timestamp, body),
                "User-Agent": "switchboard-crm",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config["delivery_timeout"]) as resp:  # noqa: S310
                resp.read()
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            with exc:
                return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"

    # ------------------------------------------------------------------ operator tools

    def replay(self, callid: str | None = None) -> list[str]:
        """Move dead letters (one, or all) back to the outbox, due now."""
        assert self.store is not None
        now = time.time()
        with self.store.transaction() as tx:
            tx.lock("crm:outbox")
            sql = "SELECT callid, payload FROM crm_dead"
            rows = tx.all(sql + " WHERE callid = ?", (callid,)) if callid else tx.all(sql)
            for cid, payload in rows:
                tx.execute("DELETE FROM crm_dead WHERE callid = ?", (cid,))
                tx.execute(
                    "INSERT INTO crm_outbox (callid, payload, attempts, next_attempt_at, created_at) "
                    "VALUES (?, ?, 0, ?, ?)",
                    (cid, payload, now, now),
                )
        return [r[0] for r in rows]

    @hookimpl
    def switchboard_register_commands(self, cli: click.Group) -> None:
        @cli.group(help="call records and CRM delivery: outbox, dead, replay, export")
        def crm() -> None:
            pass

        @crm.command(help="records waiting for delivery")
        @pass_runtime
        def outbox(runtime: Any) -> int:
            return self._cmd_outbox(runtime)

        @crm.command(help="records that exhausted their attempts")
        @pass_runtime
        def dead(runtime: Any) -> int:
            return self._cmd_dead(runtime)

        @crm.command(help="deliver dead letters again (all, or one call)")
        @click.argument("callid", required=False)
        @pass_runtime
        def replay(runtime: Any, callid: str | None) -> int:
            return self._cmd_replay(runtime, callid)

        @crm.command(help="call records as CSV or JSON lines")
        @click.option(
            "--format",
            "format_",
            type=click.Choice(["csv", "jsonl"]),
            default="jsonl",
            show_default=True,
        )
        @click.option("--since", help="only calls recorded at or after this ISO-8601 time")
        @pass_runtime
        def export(runtime: Any, format_: str, since: str | None) -> int:
            return self._cmd_export(runtime, format_, since)

    def _cmd_outbox(self, runtime: Any) -> int:
        rows = runtime.store.query(
            "SELECT callid, attempts, next_attempt_at, last_error FROM crm_outbox ORDER BY created_at"
        )
        for callid, attempts, due, error in rows:
            print(f"{callid} attempts={attempts} next={_iso(due)} last_error={error or '-'}")
        print(f"{len(rows)} record(s) waiting")
        return 0

    def _cmd_dead(self, runtime: Any) -> int:
        rows = runtime.store.query(
            "SELECT callid, attempts, failed_at, last_error FROM crm_dead ORDER BY failed_at"
        )
        for callid, attempts, failed, error in rows:
            print(f"{callid} attempts={attempts} failed={_iso(failed)} last_error={error}")
        print(f"{len(rows)} dead letter(s)")
        return 0

    def _cmd_replay(self, runtime: Any, callid: str | None) -> int:
        if not self.config["webhook_url"]:
            print("error: no webhook_url configured for the crm plugin")
            return 2
        moved = self.replay(callid)
        if callid and not moved:
            print(f"error: no dead letter for call {callid!r}")
            return 1
        failed = 0
        for moved_id in moved:
            self.drain(only=moved_id)
            left = runtime.store.query(
                "SELECT last_error FROM crm_outbox WHERE callid = ?", (moved_id,)
            )
            if left:
                failed += 1
                print(
                    f"{moved_id}: delivery failed ({left[0][0]}); it stays in the outbox and is retried"
                )
            else:
                print(f"{moved_id}: delivered")
        print(f"{len(moved) - failed} of {len(moved)} delivered")
        return 1 if failed else 0

    def _cmd_export(self, runtime: Any, format_: str, since_text: str | None) -> int:
        columns = [
            "callid",
            "caller",
            "destination",
            "started_at",
            "answered_at",
            "ended_at",
            "duration",
            "result",
            "reason",
            "debit_amount",
            "debit_currency",
            "ice_answer",
            "recorded_at",
            "delivered_at",
        ]
        sql = f"SELECT {', '.join(columns)} FROM crm_calls"  # noqa: S608 - fixed column names
        params: list[Any] = []
        if since_text:
            try:
                since = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
            except ValueError:
                print(f"error: --since must be an ISO-8601 time, got {since_text!r}")
                return 2
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            sql += " WHERE recorded_at >= ?"
            params.append(since.timestamp())
        rows = runtime.store.query(sql + " ORDER BY recorded_at", params)
        records = []
        for row in rows:
            record = dict(zip(columns, row, strict=True))
            record["recorded_at"] = _iso(record["recorded_at"])
            record["delivered_at"] = _iso(record["delivered_at"])
            records.append(record)
        if format_ == "jsonl":
            for record in records:
                record["ice_answer"] = (
                    json.loads(record["ice_answer"]) if record["ice_answer"] else None
                )
                print(json.dumps(record, separators=(",", ":")))
        else:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
            print(out.getvalue(), end="")
        return 0
