"""The money invariants of issue 9, checked by reading the store directly.

``wait_for_invariants(url, acked, initial)`` polls the store of a server (SQLite file or
PostgreSQL schema, as ``backend.url`` names it) until every invariant holds
for the calls whose DiCE was answered 200 (``acked``), or the timeout passes; then it
fails with the offending call ids. It never writes to the store.

The invariants, for every DiCE answered 200:

* exactly one ``credit_settled`` row, and (when its ICE reserved) exactly one credit
  ledger entry of kind ``call``; exactly one ``crm_calls`` row;
* the charge (minus the ledger amount) never exceeds the amount reserved for the call;
* no reservation left ``open``;

and for the whole store:

* every account's balance == initial + top-ups - call charges == the sum of its ledger;
* no balance below zero; no ``call`` ledger entry with a positive amount; no call
  charged twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

SETTLE_TIMEOUT = 30.0  # seconds the server's retries get before the checker gives up


class StoreReader:
    """Read-only queries on a server's store, by its ``store.url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.kind = "sqlite"
            self.path = url[len("sqlite:///") :]
            if not self.path.startswith("/"):
                raise ValueError(f"use an absolute SQLite path in tests: {url}")
        else:
            self.kind = "postgres"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path, timeout=10)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    def tables(self) -> set[str]:
        if self.kind == "sqlite":
            return {n for (n,) in self.rows("SELECT name FROM sqlite_master WHERE type='table'")}
        return {
            n
            for (n,) in self.rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        }


def problems(
    reader: StoreReader, acked: Iterable[str], initial: Mapping[str, int]
) -> list[str]:
    """Every broken invariant, one line each (empty: the store is consistent)."""
    acked = set(acked)
    out: list[str] = []
    tables = reader.tables()
    for needed in ("credit_accounts", "credit_ledger", "credit_reservations", "credit_settled"):
        if needed not in tables:
            return [f"table {needed} missing"]

    reservations = {
        callid: (account, int(amount), status)
        for callid, account, amount, status in reader.rows(
            "SELECT callid, account, amount, status FROM credit_reservations"
        )
    }
    settled = Counter(c for (c,) in reader.rows("SELECT callid FROM credit_settled"))
    settled_amount = {
        c: int(a) for c, a in reader.rows("SELECT callid, amount FROM credit_settled")
    }
    ledger = reader.rows("SELECT account, kind, amount, callid FROM credit_ledger")
    call_entries: dict[str, list[int]] = {}
    for _, kind, amount, callid in ledger:
        if kind == "call":
            call_entries.setdefault(callid, []).append(int(amount))
    crm = (
        Counter(c for (c,) in reader.rows("SELECT callid FROM crm_calls"))
        if "crm_calls" in tables
        else Counter()
    )

    def report(what: str, ids: Iterable[str]) -> None:
        ids = sorted(ids)
        if ids:
            shown = ", ".join(ids[:15]) + (f" ... ({len(ids)} in all)" if len(ids) > 15 else "")
            out.append(f"{what}: {shown}")

    report("DiCE answered 200 but not settled exactly once", (c for c in acked if settled[c] != 1))
    report(
        "DiCE answered 200, ICE reserved, but not exactly one ledger 'call' entry",
        (c for c in acked if c in reservations and len(call_entries.get(c, [])) != 1),
    )
    report("DiCE answered 200 but not exactly one crm_calls row", (c for c in acked if crm[c] != 1))
    report(
        "DiCE answered 200 but its reservation is still open",
        (c for c in acked if reservations.get(c, ("", 0, ""))[2] == "open"),
    )
    report("call charged by more than one ledger entry", (c for c, e in call_entries.items() if len(e) > 1))
    report("ledger 'call' entry with a positive amount", (c for c, e in call_entries.items() if any(a > 0 for a in e)))
    report(
        "charge above the reservation of the call (the grant)",
        (
            f"{c} (charged {-sum(e)}, reserved {reservations[c][1]})"
            for c, e in call_entries.items()
            if c in reservations and -sum(e) > reservations[c][1]
        ),
    )
    report(
        "ledger 'call' entry for a call never reserved",
        (c for c in call_entries if c not in reservations),
    )
    report(
        "credit_settled amount differs from the ledger charge",
        (
            f"{c} (settled {settled_amount.get(c)}, ledger {-sum(e)})"
            for c, e in call_entries.items()
            if settled_amount.get(c) != -sum(e)
        ),
    )

    balances = {a: int(b) for a, b in reader.rows("SELECT account, balance FROM credit_accounts")}
    for account, balance in sorted(balances.items()):
        entries = [(k, int(a)) for acc, k, a, _ in ledger if acc == account]
        topups = sum(a for k, a in entries if k == "topup")
        charges = sum(a for k, a in entries if k == "call")  # negative
        others = sorted({k for k, _ in entries} - {"initial", "topup", "call"})
        expected = initial.get(account, 0) + topups + charges
        if balance < 0:
            out.append(f"account {account}: balance {balance} below zero")
        if balance != sum(a for _, a in entries):
            out.append(
                f"account {account}: balance {balance} != sum of its ledger {sum(a for _, a in entries)}"
            )
        if balance != expected:
            out.append(
                f"account {account}: balance {balance} != initial {initial.get(account, 0)} "
                f"+ top-ups {topups} - charges {-charges} = {expected}"
            )
        if others:
            out.append(f"account {account}: unexpected ledger kinds {others}")
    for account in initial:
        if account not in balances:
            out.append(f"account {account} missing")
    return out


def wait_for_invariants(
    url: str,
    acked: Iterable[str],
    initial: Mapping[str, int],
    timeout: float = SETTLE_TIMEOUT,
) -> None:
    """Poll until the invariants hold (the server may still be retrying), else fail."""
    reader = StoreReader(url)
    acked = set(acked)
    end = time.monotonic() + timeout
    found: list[str] = []
    while True:
        try:
            found = problems(reader, acked, initial)
        except Exception as exc:  # noqa: BLE001 - a store mid-fault: look again
            found = [f"store not readable: {type(exc).__name__}: {exc}"]
        if not found or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert not found, (
        f"money invariants broken after {timeout:.0f} s ({len(acked)} DiCEs answered 200):\n  "
        + "\n  ".join(found)
    )


def snapshot(url: str) -> dict[str, Any]:
    """Row counts and balances, to show that duplicates changed nothing."""
    reader = StoreReader(url)
    return {
        "ledger": reader.rows("SELECT COUNT(*) FROM credit_ledger")[0][0],
        "settled": reader.rows("SELECT COUNT(*) FROM credit_settled")[0][0],
        "crm": reader.rows("SELECT COUNT(*) FROM crm_calls")[0][0],
        "balances": sorted(reader.rows("SELECT account, balance FROM credit_accounts")),
    }


def settlement(url: str, callid: str) -> tuple[int, dict[str, Any]] | None:
    """(amount charged, details) of a call's settlement, or None."""
    rows = StoreReader(url).rows(
        "SELECT amount, details FROM credit_settled WHERE callid = ?", (callid,)
    )
    if not rows:
        return None
    amount, details = rows[0]
    return int(amount), json.loads(details) if details else {}


def metric(server_url: str, name: str) -> float | None:
    """The sum of a metric's samples from the server's /metrics (None: not exported)."""
    url = server_url.rsplit("/sinch/callback", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample = head.split("{", 1)[0]
        if sample in (name, name.removesuffix("_total") + "_total") and not sample.endswith(
            "_created"
        ):
            total += float(value)
            seen = True
    return total if seen else None
