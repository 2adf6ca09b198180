"""The benchmark's work, written by hand: one bottle app on waitress, no plugin system.

    python bench/samework.py --port 8082 --threads 8 --db samework.db --seed accounts.json

This is what a developer would write instead of Switchboard for the configuration that
``bench/run.py`` gives Switchboard (allowlist ``+1*`` with the built-in high-risk ranges
denied, prepaid credit per caller at 0.02/min for ``+1`` in 60/60 increments, call
records), with the same guarantees for that traffic:

* the Sinch ``application`` signature is verified exactly as Sinch signs
  (HMAC-SHA256 with the base64-decoded secret over ``POST``, the base64 MD5 of the raw
  body, the Content-Type as sent, ``x-timestamp:<value>`` and the callback path), and
  ``x-timestamp`` must be within ``--window`` seconds: 401 otherwise;
* body size (413), content type (415), JSON and the fields used (400) are checked;
* each callback is handled once per ``(callid, event)``: a repeated ICE or ACE gets the
  answer stored the first time, a repeated DiCE changes nothing;
* ICE: the destination must match an allow rule (most specific rule wins, deny wins a
  tie, no rule: deny), the caller's account must have the credit for at least
  ``MIN_SECONDS`` (balance minus other calls' open reservations); the cost of the
  granted duration is reserved and the answer is ``connectPstn`` to the dialled number
  with ``maxDuration`` = the smaller of the allowlist's cap and what the credit buys;
  otherwise ``hangup``;
* DiCE: the call is settled once (the answered duration at the reserved rate, never
  past the grant nor the reservation nor the balance), a ledger entry written, the
  reservation closed, a call record written (with the ICE's answer and when ICE and ACE
  arrived) and, with ``--outbox``, an outbox row for a CRM (Switchboard's ``crm`` plugin
  writes one only when a ``webhook_url`` is set, which the benchmark does not set);
* every callback is one SQLite transaction (WAL, ``synchronous=FULL``) committed, so on
  disk, before the answer is sent. A crash before the commit leaves nothing behind, so
  Sinch's redelivery is processed as new.

What it does not do, and Switchboard does: answer within a time budget with a fallback
when the work is slow, isolate one policy's failure from the others, keep a decision
trace per callback, metrics, retry a DiCE's work that failed, rotate keys, PostgreSQL.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import bottle
import waitress

PATH = "/sinch/callback"
MAX_BODY = 65536

# ---- policy: the configuration bench/run.py gives Switchboard
ALLOW = ("+1",)  # destination prefixes that may be called
HIGH_RISK = (  # premium-rate and IRSF ranges, denied unless a longer allow rule matches
    "+1900", "+4490", "+4491", "+4498", "+4470", "+49900", "+3389", "+39899", "+34803",
    "+34806", "+34807", "+31900", "+31906", "+31909", "+61190", "+870", "+881", "+882",
    "+883", "+53", "+224", "+232", "+247", "+252", "+290", "+674", "+675", "+677", "+682",
    "+683", "+688", "+690",
)  # fmt: skip
ALLOW_MAX_DURATION = 3600  # the allowlist's cap on every call it allows
RATES = {"+1": Decimal("0.02")}  # price per minute by destination prefix
FIRST, NEXT = 60, 60  # billing increments, seconds
MIN_SECONDS = 60  # a call the credit buys less of is denied
CREDIT_MAX_DURATION = 3600
GRACE = 300.0  # an unsettled reservation expires this long after its maxDuration
CENTS = 100

HANGUP = '{"action":{"name":"hangup"}}'
CONTINUE = '{"action":{"name":"continue"}}'

SCHEMA = """
CREATE TABLE IF NOT EXISTS callbacks (
    callid TEXT NOT NULL, event TEXT NOT NULL, received_at REAL NOT NULL,
    answer TEXT, reason TEXT, body TEXT, PRIMARY KEY (callid, event));
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS reservations (
    callid TEXT PRIMARY KEY, account TEXT NOT NULL, rate TEXT NOT NULL,
    seconds INTEGER NOT NULL, amount INTEGER NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (account, status);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY, account TEXT NOT NULL, at REAL NOT NULL, amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL, callid TEXT, details TEXT);
CREATE TABLE IF NOT EXISTS calls (
    callid TEXT PRIMARY KEY, caller TEXT, destination TEXT, started_at TEXT,
    answered_at TEXT, ended_at TEXT, duration INTEGER, result TEXT, reason TEXT,
    debit_amount TEXT, debit_currency TEXT, charged INTEGER NOT NULL, ice_answer TEXT,
    recorded_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    callid TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL);
"""


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- signature


def parse_timestamp(text: str) -> datetime:
    """``2024-06-06T17:20:14.1234567Z`` (or an offset); up to 7 fractional digits."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text)
    if m is None:
        raise ValueError(text)
    moment = datetime.fromisoformat(m[1] + ("." + m[2][:6].ljust(6, "0") if m[2] else ""))
    zone = m[3] or "Z"
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        moment -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return moment.replace(tzinfo=UTC)


class Signature:
    """Sinch's ``application`` signature: one key, its base64 secret, the signed path."""

    def __init__(self, key: str, secret: str, window: float, path: str = PATH) -> None:
        self.key = key
        self.secret = base64.b64decode(secret + "=" * (-len(secret) % 4))
        self.window = window
        self.path = path

    def check(self, environ: dict[str, Any], body: bytes) -> None:
        scheme, _, credential = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key, _, given = credential.partition(":")
        if scheme.lower() != "application" or key != self.key or not given:
            raise BadRequest(401, "bad Authorization header")
        stamp = environ.get("HTTP_X_TIMESTAMP", "")
        if not stamp:
            raise BadRequest(401, "missing x-timestamp")
        if self.window:
            try:
                sent = parse_timestamp(stamp.strip())
            except ValueError:
                raise BadRequest(401, "bad x-timestamp") from None
            if abs((datetime.now(UTC) - sent).total_seconds()) > self.window:
                raise BadRequest(401, "stale x-timestamp")
        digest = base64.b64encode(hashlib.md5(body).digest()).decode()
        method = environ.get("REQUEST_METHOD", "POST").upper()
        to_sign = "\n".join(
            (method, digest, environ.get("CONTENT_TYPE", ""), "x-timestamp:" + stamp, self.path)
        )
        mac = hmac.new(self.secret, to_sign.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(mac), given.encode("ascii", "replace")):
            raise BadRequest(401, "signature does not match")


# ---------------------------------------------------------------- parsing helpers


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_float=Decimal, parse_constant=_no_constants)
    except ValueError as exc:
        raise BadRequest(400, f"body is not JSON: {str(exc)[:60]}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object")
    event = data.get("event")
    if not isinstance(event, str) or event.lower() not in ("ice", "ace", "pie", "dice", "notify"):
        raise BadRequest(400, "field 'event' is missing or unknown")
    data["event"] = event = event.lower()
    callid = data.get("callid")
    if not (isinstance(callid, str) and callid) and not (event == "notify" and callid is None):
        raise BadRequest(400, "field 'callid' must be a non-empty string")
    for name in ("cli", "from", "result", "reason", "timestamp"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise BadRequest(400, f"field '{name}' must be a string")
    for name in ("to", "debit", "userRate"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise BadRequest(400, f"field '{name}' must be an object")
    duration = data.get("duration")
    if duration is not None and (
        not isinstance(duration, int) or isinstance(duration, bool) or not 0 <= duration <= 86400
    ):
        raise BadRequest(400, "field 'duration' must be an integer of 0 to 86400")
    return data


_NUMBER = re.compile(r"\+?[0-9]{2,15}")


def e164(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().replace(" ", "").replace("-", "")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not _NUMBER.fullmatch(text):
        return None
    return text if text.startswith("+") else "+" + text


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- policy


def allowed(dest: str) -> bool:
    """The most specific rule wins; deny wins a tie; no rule matches: deny."""
    for n in range(len(dest), 1, -1):
        prefix = dest[:n]
        if prefix in HIGH_RISK:
            return False
        if prefix in ALLOW:
            return True
    return False


def rate_for(dest: str) -> Decimal | None:
    for n in range(len(dest), 1, -1):
        if dest[:n] in RATES:
            return RATES[dest[:n]]
    return None


def cost(rate: Decimal, seconds: int) -> int:
    """Cents charged for a call of ``seconds`` (increments, rounded up to a cent)."""
    if seconds <= 0:
        return 0
    billed = FIRST if seconds <= FIRST else FIRST + math.ceil((seconds - FIRST) / NEXT) * NEXT
    return int((rate * billed * CENTS / 60).to_integral_value(rounding=ROUND_CEILING))


def affordable(rate: Decimal, available: int, limit: int) -> int:
    """The longest call, at most ``limit`` seconds, whose cost fits in ``available``."""
    if cost(rate, limit) <= available:
        return limit
    lo, hi = 0, limit  # cost(lo) fits, cost(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(rate, mid) <= available:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------- storage


class Db:
    """One SQLite connection, one writer at a time; every callback one transaction."""

    def __init__(self, path: str, synchronous: str = "full") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (NORMAL: a power cut may lose the last)
        self.conn.execute(f"PRAGMA synchronous={'NORMAL' if synchronous == 'normal' else 'FULL'}")
        self.conn.executescript(SCHEMA)
        self.lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def seed(self, accounts: dict[str, str]) -> None:
        now = time.time()
        with self.transaction() as db:
            for account, amount in accounts.items():
                cents = int(Decimal(amount) * CENTS)
                if db.execute(
                    "INSERT INTO accounts (account, balance) VALUES (?, ?) "
                    "ON CONFLICT (account) DO NOTHING",
                    (account, cents),
                ).rowcount:
                    db.execute(
                        "INSERT INTO ledger (account, at, amount, balance_after, details) "
                        "VALUES (?, ?, ?, ?, 'initial')",
                        (account, now, cents, cents),
                    )

    def expire(self) -> int:
        with self.transaction() as db:
            return db.execute(
                "UPDATE reservations SET status = 'expired' WHERE status = 'open' AND expires_at < ?",
                (time.time(),),
            ).rowcount


# ---------------------------------------------------------------- the callbacks


class Handler:
    def __init__(self, db: Db, signature: Signature | None, outbox: bool) -> None:
        self.db, self.signature, self.outbox = db, signature, outbox

    def handle(self, environ: dict[str, Any], body: bytes) -> str:
        """The answer's body (SVAML, or "" for DiCE and Notify); raises BadRequest."""
        if self.signature is not None:
            self.signature.check(environ, body)
        ev = parse_body(body)
        now = time.time()
        kind = ev["event"]
        if kind == "ice":
            return self.ice(ev, now)
        if kind == "dice":
            return self.dice(ev, body, now)
        # ACE, PIE: nothing to decide for this configuration; Notify: keep it
        sub = kind if kind == "ace" else f"{kind}:{hashlib.sha256(body).hexdigest()[:32]}"
        answer = "" if kind == "notify" else CONTINUE
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO callbacks (callid, event, received_at, answer, body) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (callid, event) DO NOTHING",
                (ev.get("callid") or "", sub, now, answer, body.decode() if not answer else None),
            )
        return answer

    def ice(self, ev: dict[str, Any], now: float) -> str:
        callid = ev["callid"]
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT answer FROM callbacks WHERE callid = ? AND event = 'ice'", (callid,)
            ).fetchone()
            if row is not None:  # a repeated delivery: the same answer
                return str(row[0])
            answer, reason = self.decide(db, ev, now)
            db.execute(
                "INSERT INTO callbacks (callid, event, received_at, answer, reason) "
                "VALUES (?, 'ice', ?, ?, ?)",
                (callid, now, answer, reason),
            )
        return answer

    def decide(self, db: sqlite3.Connection, ev: dict[str, Any], now: float) -> tuple[str, str]:
        to = ev.get("to") or {}
        kind = str(to.get("type") or "").lower()
        dest = e164(to.get("endpoint")) if kind in ("number", "did", "") else None
        if dest is None:
            return HANGUP, "destination is not a phone number"
        if kind == "did":
            return HANGUP, f"{dest} is one of our own numbers and has no forward target"
        if not allowed(dest):
            return HANGUP, f"{dest} is not allowed"
        account = e164(ev.get("cli")) or ev.get("cli")
        if not account:
            return HANGUP, "the call names no account"
        rate = rate_for(dest)
        if rate is None:
            return HANGUP, f"no rate for {dest}"
        row = db.execute(
            "SELECT balance, (SELECT COALESCE(SUM(amount), 0) FROM reservations "
            "WHERE account = ? AND status = 'open') FROM accounts WHERE account = ?",
            (account, account),
        ).fetchone()
        if row is None:
            return HANGUP, f"unknown account {account}"
        available = row[0] - row[1]
        seconds = affordable(rate, available, min(CREDIT_MAX_DURATION, ALLOW_MAX_DURATION))
        if seconds < MIN_SECONDS:
            return HANGUP, f"{account}: {available} cents buy {seconds} s"
        amount = cost(rate, seconds)
        db.execute(
            "INSERT INTO reservations (callid, account, rate, seconds, amount, status, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
            (ev["callid"], account, str(rate), seconds, amount, now, now + seconds + GRACE),
        )
        answer = {"action": {"name": "connectPstn", "number": dest, "maxDuration": seconds}}
        return (
            json.dumps(answer, separators=(",", ":")),
            f"{dest} allowed; {account}: reserved {amount} cents for {seconds} s",
        )

    def dice(self, ev: dict[str, Any], body: bytes, now: float) -> str:
        callid = ev["callid"]
        result = ev.get("result")
        duration = ev.get("duration") or 0
        answered = (result or "").upper() == "ANSWERED" or (result is None and duration > 0)
        if not answered:
            duration = 0
        debit = ev.get("debit") or {}
        with self.db.transaction() as db:
            if not db.execute(
                "INSERT INTO callbacks (callid, event, received_at, body) VALUES (?, 'dice', ?, ?) "
                "ON CONFLICT (callid, event) DO NOTHING",
                (callid, now, body.decode()),
            ).rowcount:
                return ""  # settled and recorded already
            charged = 0
            res = db.execute(
                "SELECT account, rate, seconds, amount, status FROM reservations WHERE callid = ?",
                (callid,),
            ).fetchone()
            # an expired reservation too: the call ran, its DiCE came late
            if res is not None and res[4] in ("open", "expired"):
                account, rate, granted, reserved, _ = res
                charge = min(cost(Decimal(rate), min(duration, granted)), reserved)
                balance = db.execute(
                    "SELECT balance FROM accounts WHERE account = ?", (account,)
                ).fetchone()[0]
                charged = min(charge, balance)
                db.execute(
                    "UPDATE accounts SET balance = ? WHERE account = ?",
                    (balance - charged, account),
                )
                db.execute(
                    "INSERT INTO ledger (account, at, amount, balance_after, callid, details) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        account,
                        now,
                        -charged,
                        balance - charged,
                        callid,
                        f"{duration} s at {rate}/min (granted {granted} s)",
                    ),
                )
                db.execute("UPDATE reservations SET status = 'settled' WHERE callid = ?", (callid,))
            seen = {
                event: (received, answer)
                for event, received, answer in db.execute(
                    "SELECT event, received_at, answer FROM callbacks "
                    "WHERE callid = ? AND event IN ('ice', 'ace')",
                    (callid,),
                )
            }
            ice, ace = seen.get("ice", (None, None)), seen.get("ace", (None, None))
            to = ev.get("to") or {}
            record = {
                "callid": callid,
                "caller": e164(ev.get("from")) or ev.get("from"),
                "destination": e164(to.get("endpoint")) or to.get("endpoint"),
                "started_at": iso(ice[0]),
                "answered_at": iso(ace[0]),
                "ended_at": ev.get("timestamp"),
                "duration": ev.get("duration"),
                "result": result,
                "reason": ev.get("reason"),
                "debit_amount": str(debit["amount"]) if "amount" in debit else None,
                "debit_currency": debit.get("currencyId"),
                "charged": charged,
                "ice_answer": ice[1],
            }
            db.execute(
                "INSERT INTO calls (callid, caller, destination, started_at, answered_at, "
                "ended_at, duration, result, reason, debit_amount, debit_currency, charged, "
                "ice_answer, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*record.values(), now),
            )
            if self.outbox:
                db.execute(
                    "INSERT INTO outbox (callid, payload, next_attempt_at) VALUES (?, ?, ?)",
                    (callid, json.dumps(record, separators=(",", ":")), now),
                )
        return ""


def make_app(handler: Handler) -> bottle.Bottle:
    app = bottle.Bottle()

    @app.post(PATH)
    def callback() -> Any:
        request, response = bottle.request, bottle.response
        try:
            if (request.content_length or 0) > MAX_BODY:
                raise BadRequest(413, f"body over {MAX_BODY} bytes")
            if request.content_type.split(";")[0].strip().lower() != "application/json":
                raise BadRequest(415, "content type must be application/json")
            answer = handler.handle(request.environ, request.body.read())
        except BadRequest as exc:
            response.status = exc.status
            response.content_type = "application/json"
            return json.dumps({"error": str(exc)})
        if answer:
            response.content_type = "application/json"
        return answer

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--db", default="samework.db")
    parser.add_argument("--key", default="669E367E-6BBA-48AB-AF15-266871C28135")
    parser.add_argument("--secret", default="BeIukql3pTKJ8RGL5zo0DA==")
    parser.add_argument("--window", type=float, default=300, help="x-timestamp skew, s (0: off)")
    parser.add_argument("--seed", type=Path, help='JSON {"account": "balance"} created if absent')
    parser.add_argument("--outbox", action="store_true", help="an outbox row per call record")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    db = Db(args.db, args.synchronous)
    if args.seed:
        db.seed(json.loads(args.seed.read_text()))

    def sweep() -> None:
        while True:
            time.sleep(30)
            db.expire()

    threading.Thread(target=sweep, name="sweeper", daemon=True).start()
    # waitress warns "Task queue depth is N" for every request that waits for a thread:
    # under load that is a log line per request, which no one running this would keep
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = make_app(Handler(db, Signature(args.key, args.secret, args.window), args.outbox))
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads)
    print(f"samework listening on http://{args.host}:{server.effective_port}{PATH}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
