"""credit's books in the store: accounts, reservations, settlements and the ledger.

At ICE the call is capped at what the account's available balance buys (balance minus
other calls' open reservations), and that amount is reserved for the call in the same
transaction. Below ``minimum_seconds`` there is no reservation: the call is denied.
Once the answer is sent, the reservation is fitted to it: released for a call answered
with hangup, lowered for a call capped shorter than it was reserved for.

At DiCE the call is settled exactly once (duration at the reserved rate, or Sinch's
``debit`` with ``settle_with = "debit"``): a ledger entry is written, the balance
debited (never below zero), the reservation closed. A duplicate DiCE changes nothing;
a DiCE for a call never reserved is recorded in ``credit_settled`` as ``unreserved``.

Every change of a balance is a ledger entry, written by ``book`` under the account's
lock (``credit:account:<account>``); a settlement takes the call's lock
(``credit:call:<callid>``) first, so the locks are always taken in one order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, NamedTuple

from core import Dice, Migration, Store, Tx
from plugins.credit.rating import Tariff, fmt, parse_amount
from plugins.credit.settings import CreditSettings

MAX_BALANCE = 10**18  # minor units an account may hold (below 2**63)

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
    ),
    Migration(
        2,
        (
            # partial: a reservation is in it only while open, so it stays small, and
            # "the open reservations" (the console's panel, the metrics gauge) is read
            # from it instead of every reservation ever made
            "CREATE INDEX credit_reservations_open_at ON credit_reservations (created_at) "
            "WHERE status = 'open'",
        ),
        "the open reservations alone",
    ),
]


# ------------------------------------------------------------------ accounts


def create(tx: Tx, settings: CreditSettings, account: str) -> None:
    tx.execute(
        "INSERT INTO credit_accounts (account, currency, balance, updated_at) VALUES (?, ?, 0, ?)",
        (account, settings.currency, time.time()),
    )


def book(
    tx: Tx,
    account: str,
    kind: str,
    amount: int,
    callid: str | None,
    details: Any,
    current: int | None = None,
    now: float | None = None,
) -> int:
    """Write a ledger entry and move the balance by ``amount``; return the new balance.

    The caller holds the account's lock (``credit:account:<account>``); ``current``
    is the balance when the caller has just read it under that lock; ``now`` stamps
    the entry (default: the time)."""
    if current is None:
        row = tx.one("SELECT balance FROM credit_accounts WHERE account = ?", (account,))
        if row is None:
            raise ValueError(f"unknown account {account!r}")
        current = int(row[0])
    balance = current + amount
    if balance < 0:
        raise ValueError(f"account {account!r} would go below zero")
    if balance > MAX_BALANCE:  # the store's integers are 64-bit: refuse, never overflow
        raise ValueError(f"account {account!r}: the balance would be more than it can hold")
    seq = tx.one(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM credit_ledger WHERE account = ?", (account,)
    )
    now = time.time() if now is None else now
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


def open_initial_accounts(store: Store, settings: CreditSettings) -> None:
    """Create the ``initial_accounts`` that do not exist yet, with their balance."""
    for account, minor in settings.initial_accounts.items():
        with store.transaction() as tx:
            tx.lock(f"credit:account:{account}")
            if tx.one("SELECT 1 FROM credit_accounts WHERE account = ?", (account,)) is None:
                create(tx, settings, account)
                if minor:
                    book(tx, account, "initial", minor, None, {"source": "initial_accounts"})


def topup(
    store: Store,
    settings: CreditSettings,
    account: str,
    amount: str,
    details: dict[str, Any] | None = None,
) -> int:
    """Add ``amount`` (major units) to the account, created if new; return the balance.
    ``details`` go on the ledger entry (default: ``{"source": "cli"}``)."""
    minor = parse_amount(amount, settings.decimals)
    if minor <= 0:
        raise ValueError(f"amount must be greater than 0, got {amount!r}")
    with store.transaction() as tx:
        tx.lock(f"credit:account:{account}")
        if tx.one("SELECT 1 FROM credit_accounts WHERE account = ?", (account,)) is None:
            create(tx, settings, account)
        return book(tx, account, "topup", minor, None, details or {"source": "cli"})


def show(store: Store, account: str) -> dict[str, Any] | None:
    """Balance, reserved and available credit of an account; None if there is none. An
    operator's read (the console, ``credit show``): ``Store.inspect``."""
    rows = store.inspect(
        "SELECT balance, currency FROM credit_accounts WHERE account = ?", (account,)
    )
    if not rows:
        return None
    balance, currency = rows[0]
    reserved = store.inspect(
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


def entries(store: Store, account: str) -> list[tuple[Any, ...]]:
    """The account's ledger, oldest first: (seq, at, kind, amount, balance_after, callid).
    An operator's read (``credit ledger``): ``Store.inspect``."""
    return store.inspect(
        "SELECT seq, at, kind, amount, balance_after, callid FROM credit_ledger WHERE account = ? ORDER BY seq",
        (account,),
    )


# ------------------------------------------------------------------ ICE: reserve


class Reserved(NamedTuple):
    """A call's reservation: its seconds, and what they cost in the account's currency
    (``amount`` None: reserved earlier, by the delivery that a takeover repeats)."""

    seconds: int
    amount: int | None = None
    currency: str | None = None


def reserve(
    store: Store,
    settings: CreditSettings,
    callid: str,
    account: str,
    tariff: Tariff,
    *,
    now: float | None = None,
) -> Reserved | str:
    """Reserve for the call what the account's available balance buys at ``tariff``;
    return the reservation, or the reason there is none. ``now``: the call's time
    (``CallContext.now``)."""
    now = time.time() if now is None else now
    with store.transaction() as tx:
        tx.lock(f"credit:account:{account}")
        row: tuple[Any, ...] = tx.one(  # one round trip: earlier reservation, account
            "SELECT (SELECT max_duration FROM credit_reservations WHERE callid = ?), "
            "(SELECT status FROM credit_reservations WHERE callid = ?), "
            "balance, currency, "
            "(SELECT COALESCE(SUM(amount), 0) FROM credit_reservations "
            "WHERE account = ? AND status = 'open') "
            "FROM (SELECT 1) AS one LEFT JOIN credit_accounts ON account = ?",
            (callid, callid, account, account),
        ) or (None, None, None, None, 0)  # (the query always gives one row)
        held_seconds, held_status, balance, currency, reserved = row
        if held_status is not None:  # a takeover after a crash: keep what was reserved
            if held_status != "open":
                return f"reservation already {held_status}"
            return Reserved(held_seconds)
        if balance is None:
            return f"unknown account {account}"
        if currency != settings.currency:
            return f"account {account} is in {currency}, rates in {settings.currency}"
        available = balance - int(reserved)
        seconds = tariff.affordable(available, settings.max_duration)
        if seconds < settings.minimum_seconds:
            return (
                f"account {account}: {fmt(available, settings.decimals)} {currency} "
                f"buys {seconds} s"
            )
        amount = tariff.cost(seconds)
        tx.execute(
            "INSERT INTO credit_reservations (callid, account, amount, rate, first_increment, next_increment, "
            "minimum_charge, max_duration, status, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            (
                callid,
                account,
                amount,
                str(tariff.rate),
                tariff.first,
                tariff.nxt,
                tariff.minimum,
                seconds,
                now,
                now + seconds + settings.grace,
            ),
        )
    return Reserved(seconds, amount, currency)


def release(store: Store, callid: str) -> None:
    """Release the call's open reservation: it was answered with hangup and will not run."""
    store.write(
        "UPDATE credit_reservations SET status = 'released' WHERE callid = ? AND status = 'open'",
        (callid,),
    )


def lower(store: Store, settings: CreditSettings, callid: str, cap: int) -> None:
    """Lower the call's open reservation to what a call of ``cap`` seconds can cost."""
    rows = store.query(
        "SELECT rate, first_increment, next_increment, minimum_charge, max_duration, created_at "
        "FROM credit_reservations WHERE callid = ? AND status = 'open'",
        (callid,),
    )
    if not rows or cap >= rows[0][4]:
        return
    rate, first, nxt, minimum, _, created = rows[0]
    tariff = Tariff(Decimal(rate), first, nxt, minimum, settings.scale)
    store.write(  # only ever lowers a reservation that is still open
        "UPDATE credit_reservations SET amount = ?, max_duration = ?, expires_at = ? "
        "WHERE callid = ? AND status = 'open' AND max_duration > ?",
        (tariff.cost(cap), cap, created + cap + settings.grace, callid, cap),
    )


# ------------------------------------------------------------------ DiCE: settle


def settle(
    store: Store,
    settings: CreditSettings,
    event: Dice,
    log: logging.Logger,
    on_overrun: Callable[[], None],
    *,
    now: float | None = None,
) -> None:
    """Settle the call of ``event`` exactly once (see the module's docstring);
    ``on_overrun`` is called when the DiCE reports more than the call was granted.
    ``now``: the DiCE's time (``CallContext.now``)."""
    now = time.time() if now is None else now
    answered = (event.result or "").upper() == "ANSWERED" or (
        event.result is None and (event.duration or 0) > 0
    )
    duration = (event.duration or 0) if answered else 0
    with store.transaction() as tx:
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
            log.warning(
                "DiCE for call %s that was never reserved: recorded, not charged", event.callid
            )
            return
        account, reserved, rate, first, nxt, minimum, cap, status = res
        tx.lock(f"credit:account:{account}")  # always after the call's lock: no cycles
        tariff = Tariff(Decimal(rate), first, nxt, minimum, settings.scale)
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
        if settings.settle_with == "debit" and event.debit is not None and duration > 0:
            if (event.debit.currency_id or settings.currency) == settings.currency:
                charge = int(
                    (event.debit.amount * settings.scale).to_integral_value(rounding=ROUND_CEILING)
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
            on_overrun()
            log.warning(
                "call %s: %s s reported against a grant of %s s (charge asked %s): "
                "charged %s, not more",
                event.callid,
                duration,
                granted,
                fmt(details["overrun"]["asked"], settings.decimals),
                fmt(charge, settings.decimals),
            )
        balance = tx.one("SELECT balance FROM credit_accounts WHERE account = ?", (account,))
        applied = min(charge, balance[0] if balance else 0)
        if applied < charge:
            details["uncollected"] = charge - applied
            log.warning(
                "call %s: %s could not be collected from %s",
                event.callid,
                charge - applied,
                account,
            )
        current = int(balance[0]) if balance else None  # None: book names the missing account
        book(tx, account, "call", -applied, event.callid, details, current, now)
        tx.execute(
            "UPDATE credit_reservations SET status = 'settled' WHERE callid = ?",
            (event.callid,),
        )
        tx.execute(
            "INSERT INTO credit_settled (callid, account, amount, status, at, details) "
            "VALUES (?, ?, ?, 'settled', ?, ?)",
            (event.callid, account, applied, now, json.dumps(details)),
        )


# ------------------------------------------------------------------ the calls view


def call_details(
    store: Store, settings: CreditSettings, callids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """What the books say of these calls, for the calls view: the account, the charge
    (or what is reserved while the call runs), the reservation's state and an overrun.
    One query for the whole page: settlements and reservations by primary key."""
    if not callids:
        return {}
    marks = ", ".join("?" for _ in callids)
    rows = store.inspect(
        "SELECT s.callid, COALESCE(s.account, r.account), s.amount, s.status, s.details, "
        "r.amount, r.status, r.max_duration FROM credit_settled s "
        f"LEFT JOIN credit_reservations r ON r.callid = s.callid WHERE s.callid IN ({marks}) "
        "UNION ALL "
        "SELECT r.callid, r.account, NULL, NULL, NULL, r.amount, r.status, r.max_duration "
        f"FROM credit_reservations r WHERE r.callid IN ({marks}) AND NOT EXISTS "
        "(SELECT 1 FROM credit_settled s WHERE s.callid = r.callid)",
        [*callids, *callids],
    )
    d, currency = settings.decimals, settings.currency
    out: dict[str, dict[str, str]] = {}
    for callid, account, charged, settled, notes, reserved, status, seconds in rows:
        shown = out[callid] = {}
        if account is not None:
            shown["account"] = account
        if settled == "unreserved":
            shown["charge"] = "none (no reservation: not charged)"
            continue
        if charged is not None:
            shown["charge"] = f"{fmt(int(charged), d)} {currency}"
        elif status == "open":
            shown["charge"] = f"pending ({fmt(int(reserved), d)} {currency} reserved)"
        elif status is not None:
            shown["charge"] = f"none (reservation {status})"
        if status is not None:
            shown["reservation"] = f"{status}: {fmt(int(reserved), d)} {currency} for {seconds} s"
        facts = json.loads(notes) if notes else {}
        overrun = facts.get("overrun") if isinstance(facts, dict) else None
        if overrun:
            shown["overrun"] = (
                f"{overrun['reported_seconds']} s reported against {overrun['granted_seconds']} s "
                f"granted; asked {fmt(int(overrun['asked']), d)}, charged at most "
                f"{fmt(int(overrun['limit']), d)} {currency}"
            )
        if isinstance(facts, dict) and facts.get("uncollected"):
            shown["uncollected"] = f"{fmt(int(facts['uncollected']), d)} {currency}"
    return out


# ------------------------------------------------------------------ replay


def rewind(store: Store, since: float) -> None:
    """Undo, in a replay's sandbox (``switchboard_replay_rewind``), what the calls
    replayed from ``since`` did to the accounts: the calls that began since (their
    reservation made since, or none) lose their reservation, settlement and charge, and
    each balance gets its charges back. The replay then makes them again, in order.
    Calls that began before ``since`` keep what they did (their DiCE is not replayed),
    and so do top-ups and other entries made since: the replay starts with them."""
    undone = (  # the calls replayed: not a reservation made before the window
        "callid NOT IN (SELECT callid FROM credit_reservations WHERE created_at < ?)"
    )
    with store.transaction() as tx:
        tx.execute(
            "UPDATE credit_accounts SET balance = balance - COALESCE((SELECT SUM(l.amount) "
            "FROM credit_ledger AS l WHERE l.account = credit_accounts.account "
            f"AND l.kind = 'call' AND l.at >= ? AND l.{undone}), 0)",
            (since, since),
        )
        tx.execute(
            f"DELETE FROM credit_ledger WHERE kind = 'call' AND at >= ? AND {undone}",
            (since, since),
        )
        tx.execute(f"DELETE FROM credit_settled WHERE at >= ? AND {undone}", (since, since))
        tx.execute("DELETE FROM credit_reservations WHERE created_at >= ?", (since,))
