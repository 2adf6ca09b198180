"""The calls view with a long history: a store filled with 1,000,000 calls, then the
queries of ``switchboard calls`` and the console timed, with their plans.

    python bench/console.py                          # 1,000,000 calls, scratch SQLite store
    python bench/console.py --calls 2000             # a smoke run
    python bench/console.py --store postgresql://postgres@127.0.0.1:5432/test
    python bench/console.py --keep /tmp/calls.db     # keep (or reuse) the SQLite file

The store is the one the server would use (the core's and the built-in plugins'
migrations, applied by a runtime with allowlist, credit and crm), filled by a bulk
insert (``executemany`` in large transactions on SQLite, ``COPY`` on PostgreSQL) with
what a week of traffic leaves: per call an ICE (its answer and trace), an ACE for the
answered ones, a DiCE (its body and trace), credit's reservation and settlement and
crm's call record; denials by the allowlist and by credit, fallbacks, redeliveries,
plugin timeouts, parked DiCE work and dead CRM letters in realistic shares.

Then each query runs ``--runs`` times after one warm-up and the median is reported:
the first page of recent calls (without and with the plugins' details), a page 10,000
calls back (keyset), filtered pages (broad and narrow number prefixes, answers and
plugins that match nothing, combinations), one call's timeline, the overview of the
last hour and of the last day, and credit's Accounts list (``--accounts`` accounts,
100,000 by default, with ``--ledger`` ledger entries, 1,000,000: the first page, a page
deep, a search by prefix). ``EXPLAIN QUERY PLAN`` (SQLite) or ``EXPLAIN`` (PostgreSQL,
after ``VACUUM ANALYZE``, as autovacuum would have done) of every read a query made
shows the index each uses. On PostgreSQL the scratch schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core import calls  # noqa: E402
from core.calls import Filters  # noqa: E402
from core.config import parse  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.testing import TEST_KEY, TEST_SECRET  # noqa: E402

DAY = 86400.0
CHUNK = 20_000

COLUMNS = (
    "callid, event, sub, state, answer, trace, outcome, received_at, lease_until, "
    "finished_at, body, attempts, progress, last_error, owner, caller, destination, "
    "duration, result, rule, decided_by, capped_at, capped_by, fallback, elapsed_ms, "
    "failed, redeliveries, call_redeliveries"
)

ICE_TRACE = (
    '{"callid":"%(c)s","event":"ice","received_at":"%(iso)s","rule":"%(rule)s",'
    '"duplicate":false,"plugins":[{"plugin":"allowlist","status":"%(a_status)s","ms":0.21,'
    '"decision":%(a_decision)s},{"plugin":"credit","status":"%(c_status)s","ms":0.48%(c_more)s},'
    '{"plugin":"crm","status":"abstained","ms":0.01}],"decided_by":%(by)s,'
    '"capped_by":%(capped_by)s,"conflicts":[],"notes":[],"answer":%(answer)s,'
    '"elapsed_ms":%(ms)s}'
)
DICE_TRACE = (
    '{"callid":"%(c)s","event":"dice","received_at":"%(iso)s","rule":"observed",'
    '"duplicate":false,"plugins":[{"plugin":"credit","status":"ok","ms":0.61},'
    '{"plugin":"crm","status":"ok","ms":0.35}],"decided_by":[],"capped_by":null,'
    '"conflicts":[],"notes":[],"answer":null,"elapsed_ms":1.4}'
)
DICE_BODY = (
    '{"event":"dice","callid":"%(c)s","timestamp":"%(iso)s","reason":"CALLERHANGUP",'
    '"result":"%(result)s","version":1,"debit":{"currencyId":"USD","amount":0.02},'
    '"userRate":{"currencyId":"USD","amount":0.02},"to":{"type":"number",'
    '"endpoint":"%(to)s"},"duration":%(duration)d,"from":"%(cli)s"}'
)


# ---------------------------------------------------------------------------- data


def numbers(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """Callers (mostly +1, some +44 and others), dialled numbers, premium numbers."""
    us = [f"+1{rng.randrange(2012000000, 9899999999)}" for _ in range(20_000)]
    uk = [f"+44{rng.randrange(2000000000, 7999999999)}" for _ in range(8_000)]
    other = [
        f"+{p}{rng.randrange(100000000, 999999999)}" for p in (33, 49, 61) for _ in range(1500)
    ]
    callers = us * 7 + uk * 2 + other  # weights
    dialled = [f"+1561{rng.randrange(2000000, 9999999)}" for _ in range(5000)] + [
        f"+442{rng.randrange(100000000, 999999999)}" for _ in range(1500)
    ]
    premium = [f"+1900{rng.randrange(2000000, 9999999)}" for _ in range(200)]
    return callers, dialled, premium


def iso(at: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}+00:00"
    )


def generate(
    n: int, span: float, seed: int = 7
) -> Iterator[tuple[list[tuple], list[tuple], list[tuple]]]:
    """Chunks of (callbacks rows, credit rows, crm rows) for ``n`` calls over ``span``
    seconds ending now, oldest first."""
    rng = random.Random(seed)
    callers, dialled, premium = numbers(rng)
    now = time.time()
    start = now - span
    step = span / n
    cb: list[tuple] = []
    credit: list[tuple] = []
    crm: list[tuple] = []
    for i in range(n):
        at = round(start + i * step + rng.random() * step, 3)  # milliseconds: ties happen
        c = uuid.UUID(int=rng.getrandbits(128)).hex
        cli = rng.choice(callers)
        r = rng.random()
        to = rng.choice(premium) if r < 0.05 else rng.choice(dialled)
        ms = round(rng.lognormvariate(0.7, 0.5), 2)
        a_status, c_status, c_more, failed = "decided", "decided", "", None
        capped_by = "null"
        cap = None
        fallback = 0
        if r < 0.05:  # a premium number: the allowlist denies
            rule, outcome, by = "deny", "hangup", "allowlist"
            a_decision = '{"kind":"deny","reason":"%s denied by rule \'+1900*\'"}' % to
            answer = '{"action":{"name":"hangup"}}'
            c_more = ',"decision":{"kind":"cap","reason":"reserved","max_duration":3600}'
        elif r < 0.09:  # no credit: credit denies
            rule, outcome, by = "deny", "hangup", "credit"
            a_decision = '{"kind":"allow","reason":"allowed","max_duration":3600}'
            answer = '{"action":{"name":"hangup"}}'
            c_more = ',"decision":{"kind":"deny","reason":"account %s: 0.01 USD buys 0 s"}' % cli
        elif r < 0.092:  # credit timed out: on_error deny
            rule, outcome, by = "deny", "hangup", "credit"
            a_decision = '{"kind":"allow","reason":"allowed","max_duration":3600}'
            answer = '{"action":{"name":"hangup"}}'
            c_status, failed = "timeout", "credit:timeout"
            c_more = ',"error":"still running after 1.500 s","on_error":"deny"'
            ms = 1500.0 + ms
        elif r < 0.095:  # the budget ran out: the fallback
            rule, outcome, by = "budget", "hangup", None
            a_decision = '{"kind":"allow","reason":"allowed","max_duration":3600}'
            answer = '{"action":{"name":"hangup"}}'
            c_status, failed, fallback = "timeout", "credit:timeout", 1
            c_more = ',"error":"still running after 2.000 s","on_error":"deny"'
            ms = 1950.0 + ms
        else:  # connected, capped by the allowlist or (low balance) by credit
            rule, outcome, by = "allow-default", "connectPstn", "allowlist"
            cap = 3600 if rng.random() < 0.9 else rng.choice((300, 600, 1200))
            if cap < 3600:
                capped_by = '"credit"'
            a_decision = (
                '{"kind":"allow","reason":"allowed","default_action":{"name":"connectPstn",'
                '"number":"%s","maxDuration":3600},"max_duration":3600}' % to
            )
            answer = '{"action":{"name":"connectPstn","number":"%s","maxDuration":%d}}' % (to, cap)
            c_more = (
                ',"decision":{"kind":"cap","reason":"%s: reserved for %d s","max_duration":%d}'
                % (
                    cli,
                    cap,
                    cap,
                )
            )
        again = 1 if rng.random() < 0.01 else 0
        trace = ICE_TRACE % {
            "c": c,
            "iso": iso(at),
            "rule": rule,
            "a_status": a_status,
            "a_decision": a_decision,
            "c_status": c_status,
            "c_more": c_more,
            "by": f'["{by}"]' if by else "[]",
            "capped_by": capped_by,
            "answer": answer,
            "ms": ms,
        }
        cb.append(
            (c, "ice", "", "done", answer, trace, outcome, at, at + 4, at + ms / 1000, None, 1,
             None, None, "bench", cli, to, None, None, rule, by, cap,
             None if capped_by == "null" else "credit", fallback, ms, failed, again, again)
        )  # fmt: skip
        connected = outcome == "connectPstn"
        if connected and rng.random() < 0.8:
            duration = min(cap or 3600, int(rng.expovariate(1 / 150)))
            result = "ANSWERED"
            t_ace = at + rng.uniform(3, 20)
            cb.append(
                (c, "ace", "", "done", '{"action":{"name":"continue"}}', '{"event":"ace"}',
                 "continue", t_ace, t_ace + 4, t_ace, None, 1, None, None, "bench", None,
                 None, None, None, "event-default", None, None, None, 0, 0.4, None, 0, 0)
            )  # fmt: skip
        else:
            duration, result = 0, ("NOANSWER" if connected else "FAILED")
        t_dice = at + 20 + duration
        state, attempts, error = "done", 1, None
        if rng.random() < 0.0002:
            state, attempts, error = "parked", 12, "crm: OperationalError: database is locked"
        body = DICE_BODY % {
            "c": c,
            "iso": iso(t_dice),
            "result": result,
            "to": to,
            "duration": duration,
            "cli": cli,
        }
        cb.append(
            (c, "dice", "", state, None, DICE_TRACE % {"c": c, "iso": iso(t_dice)}, "observed",
             t_dice, t_dice + 4, t_dice, body, attempts, None, error, "bench", cli, to,
             duration, result, "observed", None, None, None, 0, 1.4, None, 0, 0)
        )  # fmt: skip
        if by != "credit" or failed:  # credit reserved (and settled or released)
            status = "settled" if connected else "released"
            charge = 2 * -(-duration // 60) if connected else 0
            credit.append((c, cli, cap or 3600, status, at, duration, charge, t_dice))
        crm.append((c, cli, to, duration, result, t_dice, rng.random() < 0.999))
        if len(cb) >= CHUNK:
            yield cb, credit, crm
            cb, credit, crm = [], [], []
    if cb:
        yield cb, credit, crm


def credit_rows(chunk: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    reservations, settled = [], []
    for c, account, seconds, status, at, _duration, charge, t_dice in chunk:
        reservations.append(
            (
                c,
                account,
                2 * -(-seconds // 60),
                "0.02",
                60,
                60,
                0,
                seconds,
                status,
                at,
                at + seconds + 300,
            )
        )
        if status == "settled":
            settled.append((c, account, charge, "settled", t_dice, '{"rate":"0.02"}'))
    return reservations, settled


def crm_rows(chunk: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    records, dead = [], []
    for c, cli, to, duration, result, t_dice, delivered in chunk:
        records.append(
            (c, cli, to, duration, result, "CALLERHANGUP", t_dice, t_dice if delivered else None)
        )
        if not delivered:
            dead.append((c, "{}", 8, "HTTP 503", t_dice + 600))
    return records, dead


RESERVATIONS = (
    "credit_reservations (callid, account, amount, rate, first_increment, next_increment, "
    "minimum_charge, max_duration, status, created_at, expires_at)"
)
SETTLED = "credit_settled (callid, account, amount, status, at, details)"
RECORDS = (
    "crm_calls (callid, caller, destination, duration, result, reason, recorded_at, delivered_at)"
)
DEAD = "crm_dead (callid, payload, attempts, last_error, failed_at)"


# ---------------------------------------------------------------------------- loading


ACCOUNTS = "credit_accounts (account, currency, balance, updated_at)"
LEDGER = "credit_ledger (account, seq, at, kind, amount, balance_after, callid, details)"


def accounts(n: int, entries: int, seed: int = 11) -> Iterator[tuple[list[tuple], list[tuple]]]:
    """Chunks of (account rows, ledger rows): ``n`` prepaid accounts, the callers' numbers
    first (as ``account_from = "cli"`` makes them), ``entries`` ledger entries in all
    (top-ups and settlements, the balance after each)."""
    rng = random.Random(seed)
    names = list(dict.fromkeys(numbers(random.Random(7))[0]))[:n]
    seen = set(names)
    while len(names) < n:
        name = f"+{rng.choice((1, 1, 1, 44, 33, 49))}{rng.randrange(2012000000, 9899999999)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    names.sort()
    now = time.time()
    rows: list[tuple] = []
    ledger: list[tuple] = []
    for i, name in enumerate(names):
        count = entries // n + (1 if i < entries % n else 0)
        balance, at = 0, now - 30 * DAY
        for seq in range(1, count + 1):
            amount = 1000 if seq == 1 or balance < 100 else -rng.randrange(2, 60)
            balance += amount
            at += rng.uniform(0, 2 * DAY / max(1, count))
            kind = "topup" if amount > 0 else "settle"
            details = '{"source":"bench"}' if amount > 0 else '{"rate":"0.02"}'
            ledger.append((name, seq, at, kind, amount, balance, None, details))
        rows.append((name, "USD", balance, at))
        if len(ledger) >= CHUNK:
            yield rows, ledger
            rows, ledger = [], []
    if rows or ledger:
        yield rows, ledger


def load_sqlite(path: str, n: int, span: float, n_accounts: int = 0, entries: int = 0) -> None:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -262144")
    marks = ", ".join("?" for _ in COLUMNS.split(","))
    for rows, ledger in accounts(n_accounts, entries) if n_accounts else ():
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO {ACCOUNTS} VALUES (?, ?, ?, ?)", rows)
        db.executemany(f"INSERT INTO {LEDGER} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ledger)
        db.execute("COMMIT")
    for cb, credit, crm in generate(n, span) if n else ():
        reservations, settled = credit_rows(credit)
        records, dead = crm_rows(crm)
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO callbacks ({COLUMNS}) VALUES ({marks})", cb)
        db.executemany(f"INSERT INTO {RESERVATIONS} VALUES ({', '.join('?' * 11)})", reservations)
        db.executemany(f"INSERT INTO {SETTLED} VALUES (?, ?, ?, ?, ?, ?)", settled)
        db.executemany(f"INSERT INTO {RECORDS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", records)
        db.executemany(f"INSERT INTO {DEAD} VALUES (?, ?, ?, ?, ?)", dead)
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def load_postgres(url: str, n: int, span: float, n_accounts: int = 0, entries: int = 0) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        for rows, ledger in accounts(n_accounts, entries) if n_accounts else ():
            with conn.cursor() as cur:
                for table, data in ((ACCOUNTS, rows), (LEDGER, ledger)):
                    with cur.copy(f"COPY {table} FROM STDIN") as copy:
                        for row in data:
                            copy.write_row(row)
            conn.commit()
        for cb, credit, crm in generate(n, span) if n else ():
            reservations, settled = credit_rows(credit)
            records, dead = crm_rows(crm)
            with conn.cursor() as cur:
                for table, rows in (
                    (f"callbacks ({COLUMNS})", cb),
                    (RESERVATIONS, reservations),
                    (SETTLED, settled),
                    (RECORDS, records),
                    (DEAD, dead),
                ):
                    with cur.copy(f"COPY {table} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


# ---------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median milliseconds over ``runs`` after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def plan(store: Any, sql: str, params: Any) -> list[str]:
    if store.backend == "sqlite":
        return [row[-1] for row in store.query("EXPLAIN QUERY PLAN " + sql, params)]
    return [row[0] for row in store.query("EXPLAIN " + sql, params)]


class Seen:
    """The store as the queries see it, remembering the operators' reads they make."""

    def __init__(self, store: Any) -> None:
        self.store, self.backend, self.reads = store, store.backend, []

    def inspect(self, sql: str, params: Any = ()) -> Any:
        self.reads.append((sql, list(params)))
        return self.store.inspect(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def plans(store: Any, fn: Callable[[Any], Any]) -> list[str]:
    """The plan of every read ``fn`` makes (called once more, through ``Seen``)."""
    seen = Seen(store)
    fn(seen)
    out = []
    for sql, params in seen.reads:
        out.append(f"[{sql[:60]}...]")
        out += ["  " + line for line in plan(store, sql, params)]
    return out


def settings(store_url: str) -> Any:
    return parse(
        {
            "sinch": {"keys": [{"key": TEST_KEY, "secret": TEST_SECRET}]},
            "store": {"url": store_url},
            "logging": {"level": "WARNING"},
            "plugins": {
                "enabled": ["allowlist", "credit", "crm"],
                "allowlist": {"allow": ["+1561*", "+44*"], "max_duration": 3600},
                "credit": {"account_from": "cli", "rates": {"+1": "0.02", "+44": "0.05"}},
                "crm": {},
            },
        },
        None,
        env={},
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    schema = None
    folder = None
    if args.store:
        import psycopg

        schema = f"bench_console_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.store, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.store else "?"
        url = f"{args.store}{sep}options=-csearch_path%3D{schema}"
    else:
        if args.keep:
            path = os.path.abspath(args.keep)
        else:
            folder = tempfile.mkdtemp(prefix="switchboard-console-")
            path = os.path.join(folder, "calls.db")
        url = f"sqlite:///{path}"
    rt = Runtime.build(settings(url))
    try:
        rt.start(serving=False)
        store = rt.store
        have = store.query("SELECT COUNT(*) FROM callbacks WHERE event = 'ice'")[0][0]
        held = store.query("SELECT COUNT(*) FROM credit_accounts")[0][0]
        n = 0 if have else args.calls
        n_accounts, entries = (0, 0) if held else (args.accounts, args.ledger)
        if n or n_accounts:
            began = time.perf_counter()
            if args.store:
                load_postgres(url, n, args.days * DAY, n_accounts, entries)
            else:
                load_sqlite(path, n, args.days * DAY, n_accounts, entries)
            loaded = time.perf_counter() - began
            print(
                f"loaded {n:,} calls, {n_accounts:,} accounts and {entries:,} ledger entries "
                f"in {loaded:.0f} s",
                flush=True,
            )
        if have or held:
            print(f"reusing {have:,} calls and {held:,} accounts", flush=True)
        return measure(rt, args.runs)
    finally:
        rt.close()
        if schema is not None:
            import psycopg

            with psycopg.connect(args.store, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
        if folder is not None:
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.rmdir(folder)


def measure(rt: Runtime, runs: int) -> dict[str, Any]:
    store, plugins = rt.store, rt.plugins
    total = store.query("SELECT COUNT(*) FROM callbacks WHERE event = 'ice'")[0][0]
    rows = store.query("SELECT COUNT(*) FROM callbacks")[0][0]
    now = time.time()
    newest = store.query("SELECT MAX(received_at) FROM callbacks WHERE event = 'ice'")[0][0]
    hour = (newest - 3600, newest + 1)
    back = min(10_000, total - 1)
    deep_row = calls.recent_calls(store, limit=1, after=_cursor_back(store, back)).rows
    deep = calls.encode_cursor(deep_row[0]) if deep_row else None
    a_caller = store.query(
        "SELECT caller FROM callbacks WHERE event = 'ice' ORDER BY received_at DESC LIMIT 1"
    )[0][0]
    a_call = store.query(
        "SELECT callid FROM callbacks WHERE event = 'ice' AND outcome = 'connectPstn' "
        "ORDER BY received_at DESC LIMIT 1 OFFSET 100"
    )[0][0]
    cases: list[tuple[str, Filters, str | None, bool]] = [
        ("first page", Filters(), None, False),
        ("first page + details (credit, crm)", Filters(), None, True),
        (f"page {back:,} calls back (cursor)", Filters(), deep, False),
        ("denied, last hour (rule=deny, since)", Filters(rule="deny", since=hour[0]), None, False),
        ("denied, all time (rule=deny)", Filters(rule="deny"), None, False),
        ("one caller (exact number)", Filters(caller=a_caller), None, True),
        ("caller prefix +1 (70 % of calls)", Filters(caller="+1"), None, False),
        ("caller prefix +4420 (narrow)", Filters(caller="+4420"), None, False),
        ("number prefix +44 (caller or destination)", Filters(number="+44"), None, False),
        ("number prefix +3361 (narrow)", Filters(number="+3361"), None, False),
        ("destination prefix +1900", Filters(destination="+1900"), None, False),
        ("fallbacks", Filters(fallbacks=True), None, False),
        ("redelivered", Filters(duplicates=True), None, False),
        ("outcome=hangup", Filters(outcome="hangup"), None, False),
        ("outcome=park (no call)", Filters(outcome="park"), None, False),
        ("plugin=credit", Filters(plugin="credit"), None, False),
        ("plugin=crm (decides no call)", Filters(plugin="crm"), None, False),
        ("caller +44, outcome=hangup", Filters(caller="+44", outcome="hangup"), None, False),
        ("caller +1, plugin=credit, fallbacks", Filters(caller="+1", plugin="credit", fallbacks=True), None, False),
        ("destination +1561, rule=budget, duplicates", Filters(destination="+1561", rule="budget", duplicates=True), None, False),
        ("outcome=connectPstn, rule=deny (no call)", Filters(outcome="connectPstn", rule="deny"), None, False),
        ("caller +1, destination +44", Filters(caller="+1", destination="+44"), None, False),
    ]  # fmt: skip
    out: dict[str, Any] = {
        "backend": store.backend,
        "calls": total,
        "callbacks": rows,
        "runs": runs,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "queries": [],
    }
    for name, filters, after, details in cases:

        def page(st: Any, f: Filters = filters, a: str | None = after, d: bool = details) -> Any:
            return calls.recent_calls(st, f, limit=50, after=a, plugins=plugins if d else None)

        ms, got = timed(lambda: page(store), runs)
        stopped = getattr(got, "scanned_to", None)
        out["queries"].append(
            {
                "query": name,
                "ms": round(ms, 2),
                "rows": len(got.rows),
                "note": ""
                if stopped is None
                else f"stopped {(newest - stopped) / 3600:.1f} h back",
                "plan": plans(store, page),
            }
        )
    ms, found = timed(lambda: calls.timeline(store, a_call, plugins), runs)
    out["queries"].append(
        {
            "query": "one call's timeline + details",
            "ms": round(ms, 2),
            "rows": len(found.callbacks) if found else 0,
            "plan": plan(store, calls.TIMELINE, (a_call,)) + plan(store, calls.CALL, (a_call,)),
        }
    )
    out["queries"] += accounts_pages(rt, runs)
    for label, window in (("last hour", hour), ("last day", (newest - DAY, newest + 1))):
        ms, seen = timed(lambda w=window: calls.overview(store, *w), runs)
        out["queries"].append(
            {
                "query": f"overview, {label}",
                "ms": round(ms, 2),
                "rows": seen.calls,
                "plan": plan(store, calls.OVERVIEW_CALLS, window)
                + plan(store, calls.OVERVIEW_ANSWERS, window)
                + plan(store, calls.OVERVIEW_CALLBACKS, window)
                + plan(store, calls.OVERVIEW_WAITING, ()),
            }
        )
    return out


def accounts_pages(rt: Runtime, runs: int) -> list[dict[str, Any]]:
    """credit's Accounts list as the console renders it: the first page, a page 50,000
    accounts in (its cursor), a search by a broad and a narrow prefix, and by one that
    matches nothing."""
    from core import ConsoleRequest
    from plugins.credit import console as credit_console

    store = rt.store
    total = store.query("SELECT COUNT(*) FROM credit_accounts")[0][0]
    if not total:
        return []
    entries = store.query("SELECT COUNT(*) FROM credit_ledger")[0][0]
    settings = rt.plugins.pm.get_plugin("credit").settings
    middle = store.query(
        f"SELECT account FROM credit_accounts ORDER BY account LIMIT 1 OFFSET {total // 2}"
    )[0][0]
    cases = [
        ("first page", {}),
        (f"a page {total // 2:,} accounts in (cursor)", {"after": middle}),
        ("accounts starting +1 (broad)", {"q": "+1"}),
        ("accounts starting +4420 (narrow)", {"q": "+4420"}),
        ("accounts starting +999 (none)", {"q": "+999"}),
    ]
    out = []
    for name, params in cases:

        def page(st: Any, p: dict[str, str] = params) -> str:
            request = ConsoleRequest(
                user="bench", plugin="credit", store=st, config={}, params=p, page_path="accounts"
            )
            return credit_console.accounts_page(settings, request)

        ms, html = timed(lambda: page(store), runs)
        out.append(
            {
                "query": f"Accounts ({total:,}, {entries:,} ledger entries): {name}",
                "ms": round(ms, 2),
                "rows": html.count('<th scope="row">'),
                "note": "",
                "plan": plans(store, page),
            }
        )
    return out


def _cursor_back(store: Any, n: int) -> str | None:
    """A cursor ``n`` calls back from the newest."""
    if n <= 0:
        return None
    row = store.query(
        "SELECT received_at, callid FROM callbacks WHERE event = 'ice' "
        f"ORDER BY received_at DESC, callid DESC LIMIT 1 OFFSET {int(n) - 1}"
    )
    if not row:
        return None
    raw = json.dumps([row[0][0], row[0][1]], separators=(",", ":")).encode()
    import base64

    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def report(out: dict[str, Any], plans: bool) -> None:
    print(
        f"\n{out['backend']}: {out['calls']:,} calls ({out['callbacks']:,} callbacks), "
        f"median of {out['runs']} runs"
    )
    print(f"{'ms':>9}  {'rows':>5}  query")
    for q in out["queries"]:
        note = f"  ({q['note']})" if q.get("note") else ""
        print(f"{q['ms']:>9.2f}  {q['rows']:>5}  {q['query']}{note}")
    if plans:
        print("\nplans:")
        for q in out["queries"]:
            print(f"  {q['query']}:")
            for line in q["plan"]:
                print(f"      {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0, help="the history's span")
    parser.add_argument("--accounts", type=int, default=100_000, help="credit accounts")
    parser.add_argument("--ledger", type=int, default=1_000_000, help="their ledger entries")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--store", help="a PostgreSQL URL (a scratch schema, dropped after)")
    parser.add_argument("--keep", help="SQLite file to fill and keep (reused when full)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-plans", action="store_true")
    args = parser.parse_args(argv)
    out = run(args)
    report(out, not args.no_plans)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
