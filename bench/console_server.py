"""The operator console on the real server over a long history: its pages timed over
HTTP, and the callbacks' latency while operators refresh it under load.

    python bench/console_server.py                       # 1,000,000 calls, scratch SQLite store
    python bench/console_server.py --calls 100000        # a shorter history
    python bench/console_server.py --keep /tmp/calls.db  # fill once, reuse (fill it again
                                                         # when its newest call is old)
    python bench/console_server.py --store postgresql://postgres@127.0.0.1:5432/test
    python bench/console_server.py --smoke               # seconds: 2,000 calls (the tests)

The store is filled as ``bench/console.py`` fills it (a week of traffic ending now:
callbacks with their answers and traces, credit's reservations and settlements, crm's
records and dead letters). Then the real server (``serve.py``, allowlist + credit + crm,
signatures on, ``bench/run.py``'s configuration) starts on it with the console on a
port of its own, pinned to one core (wrk and the console's clients on the others), as
``bench/run.py`` runs it.

**Pages**: one operator logs in (the login form's CSRF token, the session cookie) and
times ``GET`` of the Overview (the default 3 hours, 1 hour and 24 hours), the Calls page
(first page, the next page, filtered pages) and one call's page, each ``--runs`` times
after one warm-up, over one keep-alive connection; each must answer 200 with what it
should show (the newest call, a denied call, the call's ICE, ACE and DiCE), or the run
fails.

**Load**: wrk replays pre-signed callbacks (``bench/run.py``'s ICE and call-mix files,
each request once, 16 connections) in turn: alone, and while another process plays
operators, each logged in with a session of its own (``--loads``, by default: ``4xmax``,
4 operators each loading the next page as soon as the last one answered, the console's
4 threads always busy; ``3x1``, 3 operators each loading one page a second; both load
the Overview, the Calls page and one call's page in turn; ``3x5:calls``, 3 operators at
5 pages a second each, the Calls page and one call only). After every run the
benchmark's own calls are deleted (``--no-prune`` keeps them), so every run finds the
same store and the Overview's window the same calls. The conditions take turns
(rotating order) over ``--rounds`` rounds; every figure is the median over rounds and
every ratio the median of the per-round ratios against the run alone of the same round.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import console as fill  # bench/console.py: the bulk fill
import run as bench  # bench/run.py: the server, its traffic, wrk

TOKEN = "bench-console-admin-token-0123456789"
CONNS = 16
PAGE_SETS = {  # what each operator loads, in turn
    "all": ("/", "/calls", "/calls/{call}"),  # the Overview, the Calls page, one call
    "calls": ("/calls", "/calls/{call}"),  # the paginated pages only
}
HOURS = {"/": 3, "/?hours=1": 1, "/?hours=24": 24}  # the Overview's windows


# ---------------------------------------------------------------------------- a client


class Client:
    """One operator: a keep-alive connection and a session cookie."""

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookies: dict[str, str] = {}
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, str, dict[str, str]]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):  # once more on a fresh connection if the old one was closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read().decode()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            for line in resp.msg.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(line).items():
                    self.cookies[name] = morsel.value
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, text, {k.lower(): v for k, v in resp.getheaders()}
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, str]:
        status, text, _ = self.request("GET", path)
        return status, text

    def login(self, token: str) -> None:
        status, page = self.get("/login")
        found = re.search(r'name="_csrf" value="([^"]+)"', page)
        if status != 200 or found is None:
            raise SystemExit(f"console login form: {status} {page[:200]!r}")
        form = {"_csrf": found.group(1), "name": "", "password": token, "next": "/"}
        status, page, _ = self.request("POST", "/login", urllib.parse.urlencode(form).encode())
        if status != 303 or "switchboard_console" not in self.cookies:
            raise SystemExit(f"console login refused: {status} {page[:200]!r}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ---------------------------------------------------------------------------- the store


@dataclass
class Store:
    url: str
    calls: int
    callbacks: int
    newest: float  # received_at of the newest call
    newest_call: str
    newest_caller: str
    denied_call: str  # the newest call the allowlist or credit denied
    a_call: str  # a connected call with its ICE, ACE and DiCE, 100 calls back
    cleanup: list[Any] = field(default_factory=list)


def prepare_store(args: argparse.Namespace) -> Store:
    """The store, filled unless it already holds calls (``--keep``)."""
    cleanup: list[Any] = []
    if args.store:
        import psycopg

        schema = f"bench_cserver_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.store, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")

        def drop() -> None:
            with psycopg.connect(args.store, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")

        cleanup.append(drop)
        sep = "&" if "?" in args.store else "?"
        url = f"{args.store}{sep}options=-csearch_path%3D{schema}"
        path = ""
    else:
        if args.keep:
            path = os.path.abspath(args.keep)
        else:
            folder = tempfile.mkdtemp(prefix="switchboard-cserver-")
            path = os.path.join(folder, "calls.db")

            def remove() -> None:
                for name in os.listdir(folder):
                    os.unlink(os.path.join(folder, name))
                os.rmdir(folder)

            cleanup.append(remove)
        url = f"sqlite:///{path}"
    rt = fill.Runtime.build(fill.settings(url))  # the migrations, as the server applies them
    try:
        rt.start(serving=False)
        store = rt.store
        have = store.query("SELECT COUNT(*) FROM callbacks WHERE event = 'ice'")[0][0]
        if have == 0:
            began = time.perf_counter()
            if args.store:
                fill.load_postgres(url, args.calls, args.days * fill.DAY)
            else:
                fill.load_sqlite(path, args.calls, args.days * fill.DAY)
            print(f"loaded {args.calls:,} calls in {time.perf_counter() - began:.0f} s", flush=True)
        else:
            print(f"reusing {have:,} calls", flush=True)
            if args.prune:
                prune(url)  # a run stopped half-way left its calls

        def one(sql: str) -> Any:
            return store.query(sql)[0]

        newest, newest_call, newest_caller = one(
            "SELECT received_at, callid, caller FROM callbacks WHERE event = 'ice' "
            "ORDER BY received_at DESC, callid DESC LIMIT 1"
        )
        out = Store(
            url=url,
            calls=one("SELECT COUNT(*) FROM callbacks WHERE event = 'ice'")[0],
            callbacks=one("SELECT COUNT(*) FROM callbacks")[0],
            newest=newest,
            newest_call=newest_call,
            newest_caller=newest_caller,
            denied_call=one(
                "SELECT callid FROM callbacks WHERE event = 'ice' AND rule = 'deny' "
                "ORDER BY received_at DESC, callid DESC LIMIT 1"
            )[0],
            a_call=one(
                "SELECT c.callid FROM callbacks c JOIN callbacks a ON a.callid = c.callid "
                "AND a.event = 'ace' WHERE c.event = 'ice' AND c.outcome = 'connectPstn' "
                "ORDER BY c.received_at DESC LIMIT 1 OFFSET 100"
            )[0],
            cleanup=cleanup,
        )
    except BaseException:
        rt.close()
        for step in cleanup:
            step()
        raise
    rt.close()
    age = (time.time() - out.newest) / 3600
    if age > 1:
        print(f"note: the newest stored call is {age:.1f} h old: the Overview's windows "
              "hold fewer calls than live traffic would leave", flush=True)  # fmt: skip
    return out


TAG = "bench-"  # the callids of the benchmark's own traffic start so; the bulk's are hex


def connect(url: str) -> Any:
    """A connection of this process to the server's store (not the server's own)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        db = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None, timeout=30)
        return db
    import psycopg

    return psycopg.connect(url, autocommit=True)


def prune(url: str) -> int:
    """Delete what the benchmark's own traffic left (its callbacks, and the plugins'
    rows of its calls, the ledger aside), so that every run finds the same store: the
    bulk-filled history and nothing else. Returns the callbacks deleted."""
    db = connect(url)
    try:
        if url.startswith("sqlite:///"):
            tables = [
                t
                for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if any(col[1] == "callid" for col in db.execute(f"PRAGMA table_info({t})"))
            ]
            mark = "?"
        else:
            tables = [
                t
                for (t,) in db.execute(
                    "SELECT table_name FROM information_schema.columns WHERE column_name = "
                    "'callid' AND table_schema = current_schema()"
                ).fetchall()
            ]
            mark = "%s"
        deleted = 0
        for table in sorted(tables):
            if table == "credit_ledger":  # an account's ledger is a sequence: leave it whole
                continue
            cur = db.execute(f"DELETE FROM {table} WHERE callid LIKE {mark}", (TAG + "%",))
            if table == "callbacks":
                deleted = cur.rowcount
        return deleted
    finally:
        db.close()


def window_calls(url: str, hours: float) -> int:
    """The calls whose ICE arrived in the last ``hours`` (what the Overview reads)."""
    db = connect(url)
    try:
        mark = "?" if url.startswith("sqlite:///") else "%s"
        row = db.execute(
            f"SELECT COUNT(*) FROM callbacks WHERE event = 'ice' AND received_at >= {mark}",
            (time.time() - hours * 3600,),
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


# ---------------------------------------------------------------------------- the server


class Server(bench.Proc):
    """serve.py with the console: the callback listener's line, then the console's."""

    def __init__(self, work: Path, store_url: str, cpus: str | None) -> None:
        from core.config import SERVER_KEYS

        config = bench.CONFIG.format(
            threads=SERVER_KEYS["threads"].default, synchronous="full", store_url=store_url
        )
        config += f'\n[admin]\ntoken = "{TOKEN}"\nconsole = "127.0.0.1:0"\n'
        (work / "config.toml").write_text(config)
        super().__init__(
            [sys.executable, str(REPO / "serve.py"), "--config", str(work / "config.toml")],
            work,
            cpus,
        )
        line = self.p.stdout.readline() if self.p.stdout else ""
        if not line.startswith("switchboard console on "):
            self.stop()
            raise SystemExit(f"the console did not start: {line!r}")
        self.console = line.split()[3].rstrip("/")


# ---------------------------------------------------------------------------- pages


def page_cases(store: Store) -> list[tuple[str, str, list[str]]]:
    """(label, path, what the page must contain)."""
    call = urllib.parse.quote(store.a_call, safe="")
    newest = "/calls/" + urllib.parse.quote(store.newest_call, safe="")
    denied = "/calls/" + urllib.parse.quote(store.denied_call, safe="")
    caller = "/calls?caller=" + urllib.parse.quote(store.newest_caller, safe="")
    return [
        ("Overview, last 3 hours (the default)", "/", ["Plugin health", "calls per minute"]),
        ("Overview, last hour", "/?hours=1", ["Plugin health", "calls per minute"]),
        ("Overview, last 24 hours", "/?hours=24", ["Plugin health", "calls per minute"]),
        ("Calls, first page", "/calls", [newest, 'rel="next"']),
        ("Calls, the next page (cursor)", "{next}", ['rel="next"']),
        ("Calls, denied (rule=deny)", "/calls?rule=deny", [denied]),
        ("Calls, number prefix +44", "/calls?number=%2B44", ["+44"]),
        ("Calls, one caller (exact number)", caller, [newest]),
        ("One call", f"/calls/{call}", [store.a_call, "<h3>ICE", "<h3>ACE", "<h3>DICE"]),
    ]


def time_pages(client: Client, store: Store, runs: int) -> list[dict[str, Any]]:
    status, first = client.get("/calls")
    found = re.search(r'href="[^"]*(/calls\?[^"]*after=[^"]+)" rel="next"', first)
    nxt = found.group(1).replace("&amp;", "&") if found else "/calls?after=none"
    out = []
    for label, path, wanted in page_cases(store):
        path = path.format(next=nxt)
        status, page = client.get(path)  # the warm-up
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            status, page = client.get(path)
            times.append((time.perf_counter() - began) * 1000)
        missing = [w for w in wanted if w not in page]
        hours = HOURS.get(path)
        out.append(
            {
                "page": label,
                "window_calls": None if hours is None else window_calls(store.url, hours),
                "path": path,
                "ms": round(statistics.median(times), 2),
                "min_ms": round(min(times), 2),
                "status": status,
                "bytes": len(page.encode()),
                "ok": status == 200 and not missing,
                "missing": missing,
            }
        )
        print(
            f"  {out[-1]['ms']:9.2f} ms  {status}  {len(page.encode()) / 1024:6.1f} KiB  {label}"
            + (f"  MISSING {missing}" if missing else ""),
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------- operators


def operators_main(argv: list[str]) -> int:
    """The console's load, in a process of its own: ``N`` operators until SIGTERM, then
    one JSON line of what they did (from the moment all were logged in and had loaded a
    page: ``ready`` on stdout)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--operators", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="pages/s each; 0: flat out")
    parser.add_argument("--paths", nargs="+", required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    lock = threading.Lock()
    started = threading.Barrier(args.operators + 1)
    measuring = threading.Event()
    seen: dict[str, list[float]] = {p: [] for p in args.paths}
    bad: list[str] = []

    def operate(index: int) -> None:
        client = Client(args.base)
        client.login(TOKEN)
        n = index  # operators start at different pages
        period = 1.0 / args.rate if args.rate else 0.0
        due = time.monotonic() + period * index / args.operators
        first = True
        try:
            while not stop.is_set():
                if period:
                    if stop.wait(max(0.0, due - time.monotonic())):
                        break
                    due += period
                path = args.paths[n % len(args.paths)]
                n += 1
                began = time.perf_counter()
                status, _ = client.get(path)
                ms = (time.perf_counter() - began) * 1000
                if measuring.is_set():
                    with lock:
                        seen[path].append(ms)
                        if status != 200:
                            bad.append(f"{status} {path}")
                if first:
                    first = False
                    started.wait()
        finally:
            client.close()

    threads = [
        threading.Thread(target=operate, args=(i,), daemon=True) for i in range(args.operators)
    ]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    measuring.set()
    began = time.monotonic()
    print("ready", flush=True)
    while not stop.wait(0.1):
        pass
    elapsed = time.monotonic() - began
    for t in threads:
        t.join(timeout=60)
    with lock:
        pages = {
            p: {
                "pages": len(ms),
                "median_ms": round(statistics.median(ms), 2) if ms else None,
                "p99_ms": round(_pct(ms, 99), 2) if ms else None,
            }
            for p, ms in seen.items()
        }
        total = sum(len(ms) for ms in seen.values())
        print(json.dumps({"seconds": elapsed, "pages": total, "per_s": total / elapsed,
                          "non_200": bad[:20], "by_path": pages}), flush=True)  # fmt: skip
    return 0


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


class Operators:
    """The operators' process, started and ready."""

    def __init__(self, base: str, spec: str, call: str, cpus: str | None) -> None:
        count, rate, pages = parse_load(spec)
        paths = [p.format(call=urllib.parse.quote(call, safe="")) for p in PAGE_SETS[pages]]
        cmd = (["taskset", "-c", cpus] if cpus else []) + [
            sys.executable,
            str(Path(__file__).resolve()),
            "--operate",
            base,
            "--operators",
            str(count),
            "--rate",
            str(rate),
            "--paths",
            *paths,
        ]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline() if self.p.stdout else ""
        if line.strip() != "ready":
            self.p.kill()
            raise SystemExit(f"the console's operators did not start: {line!r}")

    def stop(self) -> dict[str, Any]:
        self.p.send_signal(signal.SIGTERM)
        out, _ = self.p.communicate(timeout=120)
        return dict(json.loads(out.strip().splitlines()[-1]))


def parse_load(spec: str) -> tuple[int, float, str]:
    """``"4xmax"``: 4 operators flat out; ``"3x1"``: 3 operators at 1 page/s each, both
    loading the Overview, the Calls page and one call in turn; ``"3x5:calls"``: 3 at 5
    pages/s each, the Calls page and one call only."""
    load, _, pages = spec.partition(":")
    count, _, rate = load.partition("x")
    if pages not in ("", *PAGE_SETS) or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"--loads: {spec!r}: expected e.g. 4xmax, 3x1 or 3x5:calls")
    return int(count), 0.0 if rate == "max" else float(rate), pages or "all"


def describe_load(spec: str) -> str:
    count, rate, pages = parse_load(spec)
    what = "Overview, Calls, one call" if pages == "all" else "Calls, one call"
    if not rate:
        return f"{count} operators flat out ({what})"
    return f"{count} operators at {rate:g} page/s each ({what})"


# ---------------------------------------------------------------------------- load


def load_phase(
    server: Server, store: Store, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    _, load_cpu = bench.cores()
    conditions = ["alone", *args.loads]
    warm = bench.make_workloads(work, TAG + "warm", args.warmup)
    for kind in args.workloads:
        bench.measure(server, warm[kind], CONNS, load_cpu)
    if args.prune:
        prune(store.url)
    window = window_calls(store.url, 3)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rnd in range(args.rounds):
        shift = rnd % len(conditions)
        for cond in conditions[shift:] + conditions[:shift]:
            files = bench.make_workloads(work, f"{TAG}r{rnd}-{cond}", args.requests)
            for kind in args.workloads:
                operators = (
                    None
                    if cond == "alone"
                    else Operators(server.console, cond, store.a_call, load_cpu)
                )
                try:
                    res = bench.measure(server, files[kind], CONNS, load_cpu)
                finally:
                    console = operators.stop() if operators else None
                res["console"] = console
                res["window_calls_after"] = window_calls(store.url, 3)
                if args.prune:
                    prune(store.url)
                runs.setdefault(kind, {}).setdefault(cond, []).append(res)
                extra = ""
                if console:
                    extra = f"  console {console['per_s']:5.1f} pages/s"
                    if console["non_200"]:
                        extra += f" NON-200 {console['non_200'][:3]}"
                print(
                    f"  {kind:>4} round {rnd} {cond:<6} {res['rps']:7.0f} req/s  "
                    f"p50 {res['p50_us'] / 1000:6.2f} ms  p99 {res['p99_us'] / 1000:7.2f} ms  "
                    f"cpu {res['cpu_us_per_req']:5.0f} us/req  non-200 {res['bad']}{extra}",
                    flush=True,
                )
    return {
        "conditions": conditions,
        "window_calls_before": window,
        "pruned": args.prune,
        "runs": runs,
        "summary": summarise(runs, conditions),
    }


def summarise(runs: dict[str, Any], conditions: list[str]) -> list[dict[str, Any]]:
    rows = []
    for kind, by in runs.items():
        alone = by["alone"]
        for cond in conditions:
            res = by[cond]
            row: dict[str, Any] = {
                "workload": f"{kind}@{CONNS}",
                "condition": cond,
                "rps": statistics.median(r["rps"] for r in res),
                "p50_ms": statistics.median(r["p50_us"] for r in res) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in res) / 1000,
                "cpu_us": statistics.median(r["cpu_us_per_req"] for r in res),
                "non_200": sum(r["bad"] + r["errors_timeout"] for r in res),
            }
            if cond != "alone":
                row["vs_alone"] = {
                    key: bench._ratio(res, alone, key) for key in ("rps", "p50_us", "p99_us")
                }
                consoles = [r["console"] for r in res]
                row["console"] = {
                    "pages_per_s": statistics.median(c["per_s"] for c in consoles),
                    "non_200": sum(len(c["non_200"]) for c in consoles),
                    "by_path": {
                        path: {
                            key: _median_of(c["by_path"][path][key] for c in consoles)
                            for key in ("median_ms", "p99_ms")
                        }
                        for path in consoles[0]["by_path"]
                    },
                }
            rows.append(row)
    return rows


def _median_of(values: Any) -> float | None:
    """The median of the runs' figures, leaving out runs that loaded no such page."""
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


# ---------------------------------------------------------------------------- report


def report(out: dict[str, Any]) -> str:
    lines = [
        (
            f"{out['backend']}: {out['calls']:,} calls ({out['callbacks']:,} callbacks); "
            f"the newest {out['newest_age_h']:.1f} h old"
        )
    ]
    if "pages" in out:
        lines += [
            "",
            (
                f"Pages over HTTP (median of {out['runs']} after one warm-up, one keep-alive "
                "connection, nothing else running):"
            ),
            "",
            "| page | ms | KiB | calls in the Overview's window | 200 with what it should show |",
            "|---|---|---|---|---|",
        ]
        for p in out["pages"]:
            calls = "" if p["window_calls"] is None else f"{p['window_calls']:,}"
            lines.append(
                f"| {p['page']} | {p['ms']:.2f} | {p['bytes'] / 1024:.1f} | {calls} | "
                + ("yes" if p["ok"] else f"NO: {p['status']} {p['missing']}")
                + " |"
            )
    if "load" in out:
        lines += [
            "",
            f"Callbacks at {CONNS} connections, alone and while operators refresh the console "
            f"(medians of {out['rounds']} rounds of {out['requests']} requests; ratios: "
            "medians of per-round ratios against the run alone; the Overview's 3-hour window "
            f"held {out['load']['window_calls_before']:,} calls before each run"
            + (
                ", the benchmark's own calls deleted after each run):"
                if out["load"]["pruned"]
                else ", and grew with the benchmark's own calls):"
            ),
            "",
            (
                "| workload | console | req/s | p50 ms | p99 ms | CPU us/req | req/s vs alone "
                "| p50 vs alone | p99 vs alone | console pages/s | console page median / p99 ms |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in out["load"]["summary"]:
            cond = "none" if r["condition"] == "alone" else describe_load(r["condition"])
            cells = f"| {r['workload']} | {cond} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            cells += f"{r['p99_ms']:.2f} | {r['cpu_us']:.0f} | "
            if "vs_alone" in r:
                v, c = r["vs_alone"], r["console"]
                pages = ", ".join(
                    f"{page_name(path)} "
                    + (
                        "-"
                        if p["median_ms"] is None
                        else f"{p['median_ms']:.0f} / {p['p99_ms']:.0f}"
                    )
                    for path, p in c["by_path"].items()
                )
                cells += (
                    f"{v['rps']:.2f}x | {v['p50_us']:.2f}x | {v['p99_us']:.2f}x | "
                    f"{c['pages_per_s']:.1f} | {pages} |"
                )
            else:
                cells += "- | - | - | - | - |"
            lines.append(cells)
        bad = sum(r["non_200"] for r in out["load"]["summary"])
        bad_pages = sum(r.get("console", {}).get("non_200", 0) for r in out["load"]["summary"])
        lines.append(f"\nnon-200 callbacks: {bad}; non-200 console pages: {bad_pages}")
    return "\n".join(lines)


def page_name(path: str) -> str:
    return {"/": "Overview", "/calls": "Calls"}.get(path, "one call")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--operate"]:
        return operators_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0, help="the history's span")
    parser.add_argument("--store", help="a PostgreSQL URL (a scratch schema, dropped after)")
    parser.add_argument("--keep", help="SQLite file to fill and keep (reused when full)")
    parser.add_argument("--runs", type=int, default=7, help="timed GETs of each page")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6000, help="callbacks per wrk run")
    parser.add_argument("--warmup", type=int, default=600)
    parser.add_argument("--workloads", nargs="+", default=["ice", "mix"], choices=["ice", "mix"])
    parser.add_argument(
        "--loads",
        nargs="+",
        default=["4xmax", "3x1", "3x5:calls"],
        help="the console's loads: OPERATORSxPAGES_PER_S (each), OPERATORSxmax (flat out); "
        "with :calls the Calls page and one call only, else the Overview too",
    )
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="keep the benchmark's own calls between runs (the Overview's window grows)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["pages", "load"])
    parser.add_argument("--smoke", action="store_true", help="2,000 calls, short runs (tests)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    for spec in args.loads:
        parse_load(spec)
    if args.smoke:
        args.calls, args.runs, args.rounds = 2000, 2, 1
        args.requests, args.warmup, args.loads = 150, 30, ["2xmax", "2x5:calls"]
    if "load" not in args.skip:
        bench.ensure_wrk()
    started = datetime.now(UTC)
    server_cpu, load_cpu = bench.cores()
    store = prepare_store(args)
    out: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "pinning": f"server on core {server_cpu}, wrk and operators on {load_cpu}"
        if server_cpu
        else "none (single core)",
        "backend": "postgresql" if args.store else "sqlite",
        "calls": store.calls,
        "callbacks": store.callbacks,
        "newest_age_h": (time.time() - store.newest) / 3600,
        "runs": args.runs,
        "rounds": args.rounds,
        "requests": args.requests,
    }
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="switchboard-cserver-run-") as tmp:
            work = Path(tmp)
            server = Server(work, store.url, server_cpu)
            try:
                print(f"server {server.url}, console {server.console}", flush=True)
                if "pages" not in args.skip:
                    client = Client(server.console)
                    client.login(TOKEN)
                    out["pages"] = time_pages(client, store, args.runs)
                    client.close()
                    failed = not all(p["ok"] for p in out["pages"])
                if "load" not in args.skip:
                    out["load"] = load_phase(server, store, work, args)
                    failed = failed or any(
                        r["non_200"] or r.get("console", {}).get("non_200")
                        for r in out["load"]["summary"]
                    )
                out["peak_rss_kib"] = server.rss_kib("VmHWM")
            finally:
                server.stop()
    finally:
        for step in store.cleanup:
            step()
    print("\n" + report(out))
    print(f"\n(took {(datetime.now(UTC) - started).total_seconds():.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    if failed:
        print("FAILED: a page or a callback did not answer as it should", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
