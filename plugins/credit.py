"""credit: prepaid control that cannot overrun or double-charge.

Balances are integers in minor units (cents); rates and prices are ``Decimal``; a
charge is rounded up to the next minor unit. At ICE the call's account is looked up
(by ``account_from``), the price per minute is found (longest destination prefix of
``rates``, or Sinch's ``userRate`` plus ``markup_percent``), and the call is capped at
what the available balance buys (balance minus other calls' open reservations),
billed in ``increments`` (e.g. ``60/60``, ``1/1``) with a ``minimum_charge``. That
amount is reserved for the call in the same transaction. Below ``minimum_seconds`` the
call is denied.

At DiCE the call is settled exactly once (duration at the reserved rate, or Sinch's
``debit`` with ``settle_with = "debit"``): a ledger entry is written, the balance
debited (never below zero), the reservation closed. A duplicate DiCE changes nothing;
a DiCE for a call never reserved is recorded in ``credit_settled`` as ``unreserved``.
A sweeper expires reservations whose DiCE never came, ``grace`` seconds after their
``maxDuration``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import click

from core import (
    MAX_DURATION,
    Answer,
    CallContext,
    Decision,
    Dice,
    Event,
    Ice,
    Key,
    Migration,
    Say,
    Store,
    StoreGauges,
    Trace,
    Tx,
    between,
    hookimpl,
    non_negative,
    pass_runtime,
    positive,
)
from plugins.numbers import longest_prefix, parse_pattern
from plugins.refusal import DENY_ANSWER, Refusal

log = logging.getLogger("switchboard.plugin.credit")

MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE credit_accounts (
                account TEXT PRIMARY KEY, currency TEXT NOT NULL, balance BIGINT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL, CHECK (balance >= 0))""",
            """CREATE TABLE credit_ledger (
                account TEXT NOT NULL, seq INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL, amount BIGINT NOT NULL, balance_after BIGINT NOT NULL,
                callid TEXT, details TEXT, PRIMARY KEY (account, seq))""",
            """CREATE TABLE credit_reservations (
                callid TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL,
                rate TEXT NOT NULL, first_increment INTEGER NOT NULL, next_increment INTEGER NOT NULL,
                minimum_charge BIGINT NOT NULL, max_duration INTEGER NOT NULL, status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX credit_reservations_open ON credit_reservations (account, status)",
            """CREATE TABLE credit_settled (
                callid TEXT PRIMARY KEY, account TEXT, amount BIGINT NOT NULL, status TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL, details TEXT)""",
        ),
        "accounts, ledger, reservations, settlements",
    )
]


TARIFF_MEMO = 1024  # tariffs kept by rate, and costs kept by duration in each
REMEMBERED_MAX = 100_000  # reservations remembered between ICE and its answer

KEYS = {
    "currency": Key(str, "USD", "currency of accounts and rates (ISO 4217)"),
    "decimals": Key(int, 2, "digits of the minor unit (2: cents)", check=non_negative),
    "account_from": Key(
        str, "cli", "how a call names its account: cli, custom, header:NAME or fixed"
    ),
    "account": Key(str, None, "the account when account_from = 'fixed'"),
    "rates": Key(
        dict, {}, "price per minute by destination prefix, e.g. { '+1' = 0.02, '+44' = '0.05' }"
    ),
    "rate_source": Key(
        str,
        "table",
        "table, or user_rate (Sinch's userRate, then the table)",
        choices=("table", "user_rate"),
    ),
    "markup_percent": Key(Decimal, Decimal(0), "added to Sinch's userRate", check=non_negative),
    "increments": Key(str, "60/60", "billing increments: first/next in seconds, e.g. 60/60 or 1/1"),
    "minimum_charge": Key(
        Decimal, Decimal(0), "smallest charge for an answered call", check=non_negative
    ),
    "minimum_seconds": Key(
        int,
        60,
        "deny calls the balance buys fewer seconds of",
        check=between(1, MAX_DURATION, "seconds"),
    ),
    "max_duration": Key(
        int, MAX_DURATION, "cap for any call", check=between(1, MAX_DURATION, "seconds")
    ),
    "deny_prompt": Key(str, None, "said before a call without credit is hung up"),
    "deny_answer": DENY_ANSWER,
    "announce": Key(bool, False, "answer and say the minutes left before connecting"),
    "prompt_locale": Key(str, "en-US", "locale of the prompts"),
    "settle_with": Key(
        str,
        "rate",
        "rate (duration x reserved rate) or debit (Sinch's debit)",
        choices=("rate", "debit"),
    ),
    "grace": Key(
        float,
        300.0,
        "seconds after maxDuration before an unsettled reservation expires",
        check=positive,
    ),
    "sweep_interval": Key(
        float, 30.0, "seconds between sweeps for expired reservations", check=positive
    ),
    "initial_accounts": Key(
        dict, {}, "accounts created with this balance when absent, e.g. { demo = '5.00' }"
    ),
}


class Tariff:
    """Billing of one call: rate per minute, increments, minimum charge, in minor units."""

    def __init__(self, rate: Decimal, first: int, nxt: int, minimum: int, scale: int) -> None:
        self.rate, self.first, self.nxt, self.minimum, self.scale = rate, first, nxt, minimum, scale
        self._costs: dict[int, int] = {}  # seconds -> cost, for tariffs kept between calls

    def billed_seconds(self, seconds: int) -> int:
        if seconds <= 0:
            return 0
        if seconds <= self.first:
            return self.first
        return self.first + math.ceil((seconds - self.first) / self.nxt) * self.nxt

    def cost(self, seconds: int) -> int:
        """Minor units charged for a call of ``seconds``."""
        known = self._costs.get(seconds)
        if known is not None:
            return known
        billed = self.billed_seconds(seconds)
        if billed == 0:
            return 0
        raw = (self.rate * billed * self.scale / 60).to_integral_value(rounding=ROUND_CEILING)
        cost = max(int(raw), self.minimum)
        if len(self._costs) < TARIFF_MEMO:
            self._costs[seconds] = cost
        return cost

    def affordable(self, available: int, limit: int) -> int:
        """The longest call (at most ``limit`` s) whose cost fits in ``available``."""
        if self.cost(1) > available:
            return 0
        if self.cost(limit) <= available:
            return limit
        lo, hi = 1, limit  # cost(lo) fits, cost(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cost(mid) <= available:
                lo = mid
            else:
                hi = mid
        return lo


def parse_amount(text: Any, decimals: int, what: str = "amount") -> int:
    """A major-unit amount (``'12.50'``) as minor units; refuses fractions of a minor unit."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"{what} must be a number, got {text!r}")
    minor = value.scaleb(decimals)
    if minor != minor.to_integral_value():
        raise ValueError(f"{what} has more than {decimals} decimals: {text!r}")
    return int(minor)


def fmt(minor: int, decimals: int) -> str:
    return f"{Decimal(minor).scaleb(-decimals):.{decimals}f}"


class Credit:
    """One instance per server."""

    def __init__(self) -> None:
        self.rates: dict[str, Decimal] = {}
        self.first = self.nxt = 60
        self.scale = 100
        self.minimum = 0
        self.store: Store | None = None
        self.config: Mapping[str, Any] = {}
        self.refusal = Refusal()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        # seconds reserved at ICE, by call id, until switchboard_after_answer has fitted
        # the reservation to the answer sent: saves it a read when nothing changes
        self._reserved: dict[str, int] = {}
        self._tariffs: dict[Decimal, Tariff] = {}  # by rate; see _tariff
        self._overruns: Any = None  # the overrun counter, once metrics are registered

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return KEYS

    @hookimpl
    def switchboard_store_migrations(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.refusal = Refusal.of(config)
        self._tariffs = {}
        self.scale = 10 ** config["decimals"]
        source = config["account_from"]
        if source not in ("cli", "custom", "fixed") and not (
            source.startswith("header:") and len(source) > 7
        ):
            raise ValueError(
                f"account_from must be cli, custom, header:NAME or fixed, got {source!r}"
            )
        if source == "fixed" and not config["account"]:
            raise ValueError("account_from = 'fixed' needs account")
        self.rates = {}
        for prefix, price in config["rates"].items():
            pattern = parse_pattern(prefix.rstrip("*") + "*")
            try:
                rate = Decimal(str(price))
            except InvalidOperation:
                raise ValueError(
                    f"rates[{prefix!r}] must be a price per minute, got {price!r}"
                ) from None
            if not rate.is_finite() or rate < 0:
                raise ValueError(f"rates[{prefix!r}] must be a price of 0 or more, got {price!r}")
            self.rates[pattern.digits or "+"] = rate
        if not self.rates and config["rate_source"] == "table":
            raise ValueError(
                "rates is empty: give prices per minute by prefix, e.g. rates = { '+1' = 0.02 }"
            )
        first, sep, nxt = config["increments"].partition("/")
        if not (sep and first.isdigit() and nxt.isdigit() and int(first) > 0 and int(nxt) > 0):
            raise ValueError(
                f"increments must look like 60/60 or 1/1, got {config['increments']!r}"
            )
        self.first, self.nxt = int(first), int(nxt)
        self.minimum = parse_amount(config["minimum_charge"], config["decimals"], "minimum_charge")
        for account, amount in config["initial_accounts"].items():
            if parse_amount(amount, config["decimals"], f"initial_accounts.{account}") < 0:
                raise ValueError(f"initial_accounts.{account} must not be negative")

    @hookimpl
    def switchboard_startup(self, store: Store, config: Mapping[str, Any], serving: bool) -> None:
        self.store = store
        for account, amount in config["initial_accounts"].items():
            minor = parse_amount(amount, config["decimals"])
            with store.transaction() as tx:
                tx.lock(f"credit:account:{account}")
                if tx.one("SELECT 1 FROM credit_accounts WHERE account = ?", (account,)) is None:
                    self._create(tx, account)
                    if minor:
                        self._book(
                            tx, account, "initial", minor, None, {"source": "initial_accounts"}
                        )
        if serving:
            self._stop.clear()
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="credit-sweeper", daemon=True
            )
            self._sweeper.start()

    @hookimpl
    def switchboard_metrics(self, registry: Any) -> None:
        from prometheus_client import Counter

        if self.store is not None:
            registry.register(
                StoreGauges(
                    self.store,
                    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM credit_reservations "
                    "WHERE status = 'open'",
                    ("switchboard_credit_reservations_open", "Calls holding a credit reservation"),
                    (
                        "switchboard_credit_reserved_minor_units",
                        "Credit held by open reservations (minor units)",
                    ),
                )
            )
        self._overruns = Counter(
            "switchboard_credit_overruns_total",
            "Calls whose DiCE reported more than they were granted (or a debit above the "
            "reservation): charged the grant, the rest recorded on the ledger entry",
            registry=registry,
        )

    @hookimpl
    def switchboard_shutdown(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
            self._sweeper = None

    # ------------------------------------------------------------------ ICE: reserve

    def account_of(self, event: Any) -> str | None:
        source = self.config["account_from"]
        if source == "fixed":
            return self.config["account"]
        if source == "cli":
            return event.cli_e164 or event.cli or None
        if source == "custom":
            return event.custom or None
        name = source.split(":", 1)[1]
        for header in getattr(event, "call_headers", ()):
            if header.key == name:
                return header.value or None
        return None

    def rate_for(self, event: Any) -> tuple[Decimal, str] | None:
        cfg = self.config
        if cfg["rate_source"] == "user_rate" and event.user_rate is not None:
            if (event.user_rate.currency_id or cfg["currency"]) == cfg["currency"]:
                markup = 1 + cfg["markup_percent"] / 100
                return event.user_rate.amount * markup, "userRate"
        dest = event.to.e164 if event.to is not None else None
        if dest is None:
            return None
        prefix = longest_prefix(dest, list(self.rates))
        return None if prefix is None else (self.rates[prefix], f"rate {prefix}")

    @hookimpl
    def switchboard_ice(self, event: Ice, ctx: CallContext) -> Decision:
        cfg = ctx.config
        account = self.account_of(event)
        if account is None:
            return self.refusal.deny("the call names no account")
        found = self.rate_for(event)
        if found is None:
            return self.refusal.deny("no rate for this destination")
        rate, rate_from = found
        tariff = self._tariff(rate)
        now = time.time()
        with ctx.store.transaction() as tx:
            tx.lock(f"credit:account:{account}")
            row: tuple[Any, ...] = tx.one(  # one round trip: earlier reservation, account
                "SELECT (SELECT max_duration FROM credit_reservations WHERE callid = ?), "
                "(SELECT status FROM credit_reservations WHERE callid = ?), "
                "balance, currency, "
                "(SELECT COALESCE(SUM(amount), 0) FROM credit_reservations "
                "WHERE account = ? AND status = 'open') "
                "FROM (SELECT 1) AS one LEFT JOIN credit_accounts ON account = ?",
                (event.callid, event.callid, account, account),
            ) or (None, None, None, None, 0)  # (the query always gives one row)
            held_seconds, held_status, balance, currency, reserved = row
            if held_status is not None:  # a takeover after a crash: keep what was reserved
                if held_status != "open":
                    return self.refusal.deny(f"reservation already {held_status}")
                self._remember(event.callid, held_seconds)
                return Decision.cap(held_seconds, f"reserved earlier for {account}")
            if balance is None:
                return self.refusal.deny(f"unknown account {account}")
            if currency != cfg["currency"]:
                return self.refusal.deny(
                    f"account {account} is in {currency}, rates in {cfg['currency']}"
                )
            available = balance - int(reserved)
            seconds = tariff.affordable(available, cfg["max_duration"])
            if seconds < cfg["minimum_seconds"]:
                return self.refusal.deny(
                    f"account {account}: {fmt(available, cfg['decimals'])} {currency} buys {seconds} s",
                )
            amount = tariff.cost(seconds)
            tx.execute(
                "INSERT INTO credit_reservations (callid, account, amount, rate, first_increment, next_increment, "
                "minimum_charge, max_duration, status, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                (
                    event.callid,
                    account,
                    amount,
                    str(rate),
                    self.first,
                    self.nxt,
                    self.minimum,
                    seconds,
                    now,
                    now + seconds + cfg["grace"],
                ),
            )
        self._remember(event.callid, seconds)
        reason = (
            f"{account}: reserved {fmt(amount, cfg['decimals'])} {currency} for {seconds} s "
            f"at {rate}/min ({rate_from})"
        )
        if cfg["announce"]:
            minutes = seconds // 60
            text = f"You have {minutes} minute{'s' if minutes != 1 else ''} of credit."
            return Decision(
                max_duration=seconds,
                reason=reason,
                instructions=(Answer(), Say(text=text, locale=cfg["prompt_locale"])),
            )
        return Decision.cap(seconds, reason)

    def _tariff(self, rate: Decimal) -> Tariff:
        """The tariff of ``rate``, kept between calls (with what it has computed)."""
        tariff = self._tariffs.get(rate)
        if tariff is None:
            if len(self._tariffs) >= TARIFF_MEMO:  # many userRate prices: start afresh
                self._tariffs.clear()
            tariff = self._tariffs[rate] = Tariff(
                rate, self.first, self.nxt, self.minimum, self.scale
            )
        return tariff

    def _remember(self, callid: str, seconds: int) -> None:
        if len(self._reserved) >= REMEMBERED_MAX:  # answers never observed: start afresh
            self._reserved.clear()
        self._reserved[callid] = seconds

    @hookimpl
    def switchboard_after_answer(
        self, event: Event, answer: Mapping[str, Any] | None, trace: Trace
    ) -> None:
        """Fit the reservation to the answer that was sent.

        A call answered with hangup will not run: its reservation is released. A call
        capped lower than what was reserved (another plugin's cap, the action's own
        maxDuration) keeps only what that shorter call can cost.
        """
        if event.name != "ice" or answer is None or self.store is None or trace.duplicate:
            return  # a repeated delivery's answer says nothing new about the call
        reserved = self._reserved.pop(event.callid, None)
        action = answer["action"]
        if action["name"] == "hangup":
            self.store.write(
                "UPDATE credit_reservations SET status = 'released' WHERE callid = ? AND status = 'open'",
                (event.callid,),
            )
            return
        cap = action.get("maxDuration")
        if cap is None or (reserved is not None and cap >= reserved):
            return  # the call may run as long as it was reserved for
        rows = self.store.query(
            "SELECT rate, first_increment, next_increment, minimum_charge, max_duration, created_at "
            "FROM credit_reservations WHERE callid = ? AND status = 'open'",
            (event.callid,),
        )
        if not rows or cap >= rows[0][4]:
            return
        rate, first, nxt, minimum, _, created = rows[0]
        tariff = Tariff(Decimal(rate), first, nxt, minimum, self.scale)
        self.store.write(  # only ever lowers a reservation that is still open
            "UPDATE credit_reservations SET amount = ?, max_duration = ?, expires_at = ? "
            "WHERE callid = ? AND status = 'open' AND max_duration > ?",
            (tariff.cost(cap), cap, created + cap + self.config["grace"], event.callid, cap),
        )

    # ------------------------------------------------------------------ DiCE: settle

    @hookimpl
    def switchboard_dice(self, event: Dice, ctx: CallContext) -> None:
        cfg = ctx.config
        now = time.time()
        answered = (event.result or "").upper() == "ANSWERED" or (
            event.result is None and (event.duration or 0) > 0
        )
        duration = (event.duration or 0) if answered else 0
        with ctx.store.transaction() as tx:
            tx.lock(f"credit:call:{event.callid}")
            if tx.one("SELECT 1 FROM credit_settled WHERE callid = ?", (event.callid,)) is not None:
                return  # settled already: a replay changes nothing
            res = tx.one(
                "SELECT account, amount, rate, first_increment, next_increment, minimum_charge, max_duration, status "
                "FROM credit_reservations WHERE callid = ?",
                (event.callid,),
            )
            details: dict[str, Any] = {
                "duration": duration,
                "result": event.result,
                "reason": event.reason,
            }
            if res is None:
                details["debit"] = str(event.debit.amount) if event.debit else None
                tx.execute(
                    "INSERT INTO credit_settled (callid, account, amount, status, at, details) "
                    "VALUES (?, NULL, 0, 'unreserved', ?, ?)",
                    (event.callid, now, json.dumps(details)),
                )
                ctx.log.warning(
                    "DiCE for call %s that was never reserved: recorded, not charged", event.callid
                )
                return
            account, reserved, rate, first, nxt, minimum, cap, status = res
            tx.lock(f"credit:account:{account}")  # always after the call's lock: no cycles
            tariff = Tariff(Decimal(rate), first, nxt, minimum, self.scale)
            # never past the grant: the seconds the call was answered with (none for a
            # call answered hangup), and never more than was reserved for them
            granted = 0 if status == "released" else int(cap)
            billed = min(duration, granted)
            charge = tariff.cost(billed)
            details.update(
                rate=rate,
                billed_seconds=tariff.billed_seconds(billed),
                cap=granted,
                reserved=reserved,
            )
            if cfg["settle_with"] == "debit" and event.debit is not None and duration > 0:
                if (event.debit.currency_id or cfg["currency"]) == cfg["currency"]:
                    charge = int(
                        (event.debit.amount * self.scale).to_integral_value(rounding=ROUND_CEILING)
                    )
                    details["settled_by"] = "debit"
                else:
                    details["note"] = f"debit in {event.debit.currency_id}, settled by rate"
            if charge < 0:  # a call never adds credit, whatever Sinch's debit says
                details["refused_negative_charge"] = charge
                charge = 0
            limit = min(int(reserved), tariff.cost(granted))
            if duration > granted or charge > limit:
                details["overrun"] = {
                    "reported_seconds": duration,
                    "granted_seconds": granted,
                    "asked": charge,
                    "limit": limit,
                }
                charge = min(charge, limit)
                if self._overruns is not None:
                    self._overruns.inc()
                ctx.log.warning(
                    "call %s: %s s reported against a grant of %s s (charge asked %s): "
                    "charged %s, not more",
                    event.callid,
                    duration,
                    granted,
                    fmt(details["overrun"]["asked"], cfg["decimals"]),
                    fmt(charge, cfg["decimals"]),
                )
            balance = tx.one("SELECT balance FROM credit_accounts WHERE account = ?", (account,))
            applied = min(charge, balance[0] if balance else 0)
            if applied < charge:
                details["uncollected"] = charge - applied
                ctx.log.warning(
                    "call %s: %s could not be collected from %s",
                    event.callid,
                    charge - applied,
                    account,
                )
            current = int(balance[0]) if balance else None  # None: _book names the missing account
            self._book(tx, account, "call", -applied, event.callid, details, current)
            tx.execute(
                "UPDATE credit_reservations SET status = 'settled' WHERE callid = ?",
                (event.callid,),
            )
            tx.execute(
                "INSERT INTO credit_settled (callid, account, amount, status, at, details) "
                "VALUES (?, ?, ?, 'settled', ?, ?)",
                (event.callid, account, applied, now, json.dumps(details)),
            )

    # ------------------------------------------------------------------ sweeper

    def sweep(self, now: float | None = None) -> list[str]:
        """Expire open reservations past maxDuration + grace; return their call ids."""
        if self.store is None:
            return []
        now = time.time() if now is None else now
        with self.store.transaction() as tx:
            rows = tx.all(
                "SELECT callid, account, amount FROM credit_reservations WHERE status = 'open' AND expires_at < ?",
                (now,),
            )
            for callid, _, _ in rows:
                tx.execute(
                    "UPDATE credit_reservations SET status = 'expired' WHERE callid = ?", (callid,)
                )
        for callid, account, amount in rows:
            log.warning(
                "reservation of call %s expired (no DiCE): released %s from account %s",
                callid,
                fmt(amount, self.config["decimals"]),
                account,
            )
        return [r[0] for r in rows]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config["sweep_interval"]):
            try:
                self.sweep()
            except Exception:
                log.exception("reservation sweep failed")

    # ------------------------------------------------------------------ accounts

    def _create(self, tx: Tx, account: str) -> None:
        tx.execute(
            "INSERT INTO credit_accounts (account, currency, balance, updated_at) VALUES (?, ?, 0, ?)",
            (account, self.config["currency"], time.time()),
        )

    def _book(
        self,
        tx: Tx,
        account: str,
        kind: str,
        amount: int,
        callid: str | None,
        details: Any,
        current: int | None = None,
    ) -> int:
        """Write a ledger entry and move the balance by ``amount``; return the new balance.

        The caller holds the account's lock (``credit:account:<account>``); ``current``
        is the balance when the caller has just read it under that lock."""
        if current is None:
            row = tx.one("SELECT balance FROM credit_accounts WHERE account = ?", (account,))
            if row is None:
                raise ValueError(f"unknown account {account!r}")
            current = int(row[0])
        balance = current + amount
        if balance < 0:
            raise ValueError(f"account {account!r} would go below zero")
        seq = tx.one(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM credit_ledger WHERE account = ?", (account,)
        )
        now = time.time()
        tx.execute(
            "INSERT INTO credit_ledger (account, seq, at, kind, amount, balance_after, callid, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account,
                seq[0] if seq else 1,
                now,
                kind,
                amount,
                balance,
                callid,
                json.dumps(details, default=str),
            ),
        )
        tx.execute(
            "UPDATE credit_accounts SET balance = ?, updated_at = ? WHERE account = ?",
            (balance, now, account),
        )
        return balance

    def topup(self, store: Store, account: str, amount: str) -> int:
        minor = parse_amount(amount, self.config["decimals"])
        if minor <= 0:
            raise ValueError(f"amount must be greater than 0, got {amount!r}")
        with store.transaction() as tx:
            tx.lock(f"credit:account:{account}")
            if tx.one("SELECT 1 FROM credit_accounts WHERE account = ?", (account,)) is None:
                self._create(tx, account)
            return self._book(tx, account, "topup", minor, None, {"source": "cli"})

    def show(self, store: Store, account: str) -> dict[str, Any] | None:
        rows = store.query(
            "SELECT balance, currency FROM credit_accounts WHERE account = ?", (account,)
        )
        if not rows:
            return None
        balance, currency = rows[0]
        reserved = store.query(
            "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM credit_reservations WHERE account = ? AND status = 'open'",
            (account,),
        )[0]
        return {
            "account": account,
            "currency": currency,
            "balance": balance,
            "reserved": int(reserved[0]),
            "open_calls": reserved[1],
            "available": balance - int(reserved[0]),
        }

    # ------------------------------------------------------------------ CLI

    @hookimpl
    def switchboard_register_commands(self, cli: click.Group) -> None:
        @cli.group(help="prepaid accounts: topup, show, ledger")
        def credit() -> None:
            pass

        @credit.command(
            help="add credit to an account (created if new); AMOUNT in major units, e.g. 10.00"
        )
        @click.argument("account")
        @click.argument("amount")
        @pass_runtime
        def topup(runtime: Any, account: str, amount: str) -> int:
            return self._cmd_topup(runtime, account, amount)

        @credit.command(help="balance, reserved and available credit")
        @click.argument("account")
        @pass_runtime
        def show(runtime: Any, account: str) -> int:
            return self._cmd_show(runtime, account)

        @credit.command(help="every booking of an account, oldest first")
        @click.argument("account")
        @pass_runtime
        def ledger(runtime: Any, account: str) -> int:
            return self._cmd_ledger(runtime, account)

    def _cmd_topup(self, runtime: Any, account: str, amount: str) -> int:
        try:
            balance = self.topup(runtime.store, account, amount)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        d = self.config["decimals"]
        print(
            f"{account}: +{fmt(parse_amount(amount, d), d)}, balance {fmt(balance, d)} "
            f"{self.config['currency']}"
        )
        return 0

    def _cmd_show(self, runtime: Any, account: str) -> int:
        info = self.show(runtime.store, account)
        if info is None:
            print(f"error: no account {account!r}")
            return 1
        d = self.config["decimals"]
        print(f"account   {info['account']} ({info['currency']})")
        print(f"balance   {fmt(info['balance'], d)}")
        print(f"reserved  {fmt(info['reserved'], d)} for {info['open_calls']} call(s)")
        print(f"available {fmt(info['available'], d)}")
        return 0

    def _cmd_ledger(self, runtime: Any, account: str) -> int:
        rows = runtime.store.query(
            "SELECT seq, at, kind, amount, balance_after, callid FROM credit_ledger WHERE account = ? ORDER BY seq",
            (account,),
        )
        if not rows and self.show(runtime.store, account) is None:
            print(f"error: no account {account!r}")
            return 1
        d = self.config["decimals"]
        for seq, at, kind, amount, after, callid in rows:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            print(
                f"{seq:>5} {when} {kind:<8} {fmt(amount, d):>12} {fmt(after, d):>12} {callid or ''}"
            )
        print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
        return 0
