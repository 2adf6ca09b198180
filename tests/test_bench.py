"""The benchmarks keep working, and the hand-written same-work app they compare
Switchboard with (bench/samework.py) gives Switchboard's answers and business results."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.app import make_app, wsgi_post
from core.config import load
from core.runtime import Runtime
from core.signing import sign_headers
from tests.helpers import VECTORS

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import run as bench  # noqa: E402  (bench/run.py: the benchmark's traffic and configuration)
import samework  # noqa: E402

LOW, BROKE = "+15550000001", "+15550000002"  # accounts with 0.10 and 0.01 of credit


def test_inprocess_benchmark_runs_and_reports_cpu_per_callback():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "inprocess.py"), "dice", "-n", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^dice: \d+ µs CPU and \d+ µs wall per callback over 20 ", run.stdout, re.M)


def test_inprocess_blocks_time_the_steps_of_a_callback():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "inprocess.py"), "ice", "-n", "30", "--blocks"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    table = run.stdout.split("µs/cb  block\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(table) >= 5, run.stdout
    assert "MainThread" in run.stdout


def test_sample_profile_spreads_samples_over_functions(tmp_path):
    import sample_profile

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (/x/serve.py:1);handle (/x/core/pipeline.py:139);verify (/x/core/signing.py:145) 3\n"
        "main (/x/serve.py:1);handle (/x/core/pipeline.py:139) 1\n"
    )
    text = sample_profile.summarise(raw, cpu_us=400.0, top=5, held=0.5)
    assert "Python with the GIL ~200 µs" in text
    assert " 75.0%   150.0 µs  /x/core/signing.py:145 verify" in text  # own, 3 of 4
    assert "100.0%   200.0 µs  /x/core/pipeline.py:139 handle" in text  # inclusive


def test_inprocess_benchmark_drives_the_same_work_app_too():
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "inprocess.py"),
            "mix",
            "-n",
            "30",
            "--app",
            "samework",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(
        r"^samework mix: \d+ µs CPU and \d+ µs wall per callback over 30 ", run.stdout, re.M
    )


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS["vectors"] if not v["id"].startswith("node-")],  # node-*: quirks
    ids=lambda v: v["id"],
)
def test_samework_checks_signatures_as_sinch_signs(vector):
    check = samework.Signature(
        vector["application_key"], vector["application_secret"], 0, vector["path"]
    )
    environ = {"REQUEST_METHOD": vector["method"]}
    for name, value in vector["headers"].items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    try:
        check.check(environ, vector["body"].encode())
        valid = True
    except samework.BadRequest as exc:
        assert exc.status == 401
        valid = False
    assert valid is vector["expected_valid"]


def _signed(event: dict, **changes: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = sign_headers(bench.CRED, "POST", "/sinch/callback", body)
    headers.update(changes)
    return headers, body


def _traffic() -> list[tuple[str, dict[str, str], bytes]]:
    """(label, headers, body): the benchmark's events, then the other outcomes."""
    out = []

    def add(label: str, ev: dict, **changes: str) -> None:
        out.append((label, *_signed(ev, **changes)))

    for kind in ("ice", "ace", "dice"):  # caller +12015550003, to +14155550100, 95 s
        add(kind, bench.event(kind, "call-1", 3))
    add("ice again", bench.event("ice", "call-1", 3))
    add("dice again", bench.event("dice", "call-1", 3))
    for label, endpoint in (("premium", "+19005550100"), ("no rule", "+442071234567")):
        ev = bench.event("ice", f"call-{label}", 4)
        ev["to"]["endpoint"] = endpoint
        add(label, ev)
    ev = bench.event("ice", "call-did", 4)
    ev["to"]["type"] = "did"
    add("did", ev)
    for label, cli in (("unknown", "15559999999"), ("low", LOW), ("broke", BROKE)):
        ev = bench.event("ice", f"call-{label}", 4)
        ev["cli"] = cli
        add(label, ev)
    dice = bench.event("dice", "call-low", 4)
    dice["from"], dice["duration"] = LOW, 1000  # past its grant of 300 s
    add("dice low", dice)
    add("long", bench.event("ice", "call-long", 6))  # caller +12015550006, granted 3600 s
    dice = bench.event("dice", "call-long", 6)
    dice["duration"] = 5000  # past its grant
    add("dice long", dice)
    dice = bench.event("dice", "call-never", 7)  # no ICE: recorded, not charged
    add("dice unreserved", dice)
    add(
        "bad signature",
        bench.event("ice", "call-x", 5),
        Authorization=f"application {bench.KEY}:AAAA",
    )
    add("stale", bench.event("ice", "call-x", 5), **{"x-timestamp": "2014-06-02T15:39:31.2729234Z"})
    body = b'{"event":"ice","callid":'
    out.append(("not json", sign_headers(bench.CRED, "POST", "/sinch/callback", body), body))
    body = b'{"event":"ice","callid":"call-y","duration":"long"}'
    out.append(("bad field", sign_headers(bench.CRED, "POST", "/sinch/callback", body), body))
    return out


EXPECTED = {
    "ice": (200, '{"action":{"name":"connectPstn","number":"+14155550100","maxDuration":3600}}'),
    "ace": (200, '{"action":{"name":"continue"}}'),
    "dice": (200, ""),
    "ice again": (
        200,
        '{"action":{"name":"connectPstn","number":"+14155550100","maxDuration":3600}}',
    ),
    "dice again": (200, ""),
    "premium": (200, samework.HANGUP),
    "no rule": (200, samework.HANGUP),
    "did": (200, samework.HANGUP),
    "unknown": (200, samework.HANGUP),
    "low": (200, '{"action":{"name":"connectPstn","number":"+14155550100","maxDuration":300}}'),
    "broke": (200, samework.HANGUP),
    "dice low": (200, ""),
    "long": (200, '{"action":{"name":"connectPstn","number":"+14155550100","maxDuration":3600}}'),
    "dice long": (200, ""),
    "dice unreserved": (200, ""),
    "bad signature": (401, None),
    "stale": (401, None),
    "not json": (400, None),
    "bad field": (400, None),
}


def test_samework_policy_matches_the_benchmark_configuration():
    assert samework.allowed("+14155550100")
    for denied in ("+19005550100", "+442071234567", "+5312345678", "+8821234567"):
        assert not samework.allowed(denied), denied
    rate = samework.RATES["+1"]
    assert [samework.cost(rate, s) for s in (0, 1, 60, 61, 95, 3600)] == [0, 2, 2, 4, 4, 120]
    assert samework.affordable(rate, 10, 3600) == 300
    assert samework.affordable(rate, 11, 3600) == 300
    assert samework.affordable(rate, 1, 3600) == 0
    assert samework.affordable(rate, 10**7, 3600) == 3600


@pytest.fixture
def samework_server(tmp_path):
    """bench/samework.py on a free port, seeded as bench/run.py seeds it, plus two
    accounts with little credit."""
    accounts = {**bench.ACCOUNTS, LOW: "0.10", BROKE: "0.01"}
    (tmp_path / "accounts.json").write_text(json.dumps(accounts))
    db = tmp_path / "samework.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "samework.py"),
            *("--port", "0", "--db", str(db), "--seed", str(tmp_path / "accounts.json")),
            *("--window", "3600", "--outbox"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on " in line, line + proc.stderr.read()
        yield line.split("listening on ")[1].split()[0], db
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()


def _post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def test_samework_answers_and_books_what_switchboard_does(samework_server, tmp_path):
    url, db_path = samework_server
    text = bench.CONFIG.format(threads=8, synchronous="full", store_url="sqlite:///bench.db")
    text = text.replace(
        "initial_accounts = { ", f'initial_accounts = {{ "{LOW}" = "0.10", "{BROKE}" = "0.01", '
    )
    (tmp_path / "config.toml").write_text(text)
    runtime = Runtime.build(load(tmp_path / "config.toml"))
    try:
        runtime.start()
        app = make_app(runtime)
        for label, headers, body in _traffic():
            status, answer = _post(url, headers, body)
            want_status, want_body = EXPECTED[label]
            assert status == want_status, (label, answer)
            if want_body is not None:
                assert answer == want_body, label
            sb_status, sb_answer = wsgi_post(app, "/sinch/callback", headers, body)
            assert sb_status == status, (label, sb_answer)
            if status == 200:
                assert sb_answer == answer, label
        runtime.pipeline.wait_idle()
        sb_balances = dict(runtime.store.query("SELECT account, balance FROM credit_accounts"))
    finally:
        runtime.close()

    db = sqlite3.connect(db_path)
    balances = dict(db.execute("SELECT account, balance FROM accounts"))
    # 95 s billed as 120 s at 0.02/min: 4 cents, once; the low account's 1000 s call
    # charged its grant of 300 s (10 cents), never more
    assert balances["+12015550003"] == 10_000_000 - 4
    assert balances[LOW] == 0 and balances[BROKE] == 1
    assert balances["+12015550006"] == 10_000_000 - 120  # its grant of 3600 s, not 5000 s
    assert balances["+12015550007"] == 10_000_000
    assert balances == sb_balances
    assert db.execute("SELECT status FROM reservations WHERE callid = 'call-1'").fetchone() == (
        "settled",
    )
    assert db.execute("SELECT COUNT(*) FROM ledger WHERE callid = 'call-1'").fetchone() == (1,)
    call = db.execute(
        "SELECT caller, destination, duration, charged, ice_answer, answered_at FROM calls "
        "WHERE callid = 'call-1'"
    ).fetchone()
    assert call[:4] == ("+12015550003", "+14155550100", 95, 4)
    assert json.loads(call[4])["action"]["maxDuration"] == 3600 and call[5] is not None
    assert db.execute("SELECT charged FROM calls WHERE callid = 'call-never'").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (4,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_run_smoke_compares_switchboard_with_both_baselines(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["workload"]: r for r in json.loads(out.read_text())["summary"]}
    assert set(rows) == {f"{k}@{c}" for k in ("ice", "ace", "dice", "mix") for c in (1, 16)}
    for row in rows.values():
        for app in ("switchboard", "samework", "constant"):
            assert row[app]["non_200"] == 0, (row["workload"], app)
            assert row[app]["rps"] > 0
        assert row["vs_samework"]["p99"] > 0 and row["vs_constant"]["cpu"] >= 0
    assert "CPU/req vs samework @16" in run.stdout


def test_console_benchmark_fills_a_store_and_times_the_calls_view(tmp_path):
    out = tmp_path / "console.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "console.py"),
            *("--calls", "2000", "--accounts", "120", "--ledger", "1000"),
            *("--runs", "1", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "loaded 2,000 calls" in run.stdout
    got = json.loads(out.read_text())
    assert got["calls"] == 2000 and got["callbacks"] > 4000
    queries = {q["query"]: q for q in got["queries"]}
    assert queries["first page"]["rows"] == 50
    assert any("calls_started" in line for line in queries["first page"]["plan"])
    denied = queries["denied, all time (rule=deny)"]
    assert denied["rows"] == 50 and any("calls_rule" in line for line in denied["plan"])
    assert queries["one call's timeline + details"]["rows"] >= 2
    assert queries["overview, last day"]["rows"] > 200
    accounts = queries["Accounts (120, 1,000 ledger entries): first page"]
    assert accounts["rows"] == 50 and any("credit_accounts" in line for line in accounts["plan"])


def test_console_server_benchmark_times_pages_and_callbacks_under_console_load(tmp_path):
    """bench/console_server.py on 2,000 calls: the real server with its console, logged
    in over HTTP; every page answered 200 with the calls it must show, and (with wrk)
    the callbacks ran alone and while operators refreshed the console."""
    out = tmp_path / "console_server.json"
    have_wrk = shutil.which("wrk") is not None
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "console_server.py"),
            *("--smoke", "--json", str(out)),
            *(() if have_wrk else ("--skip", "load")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "loaded 2,000 calls" in run.stdout
    got = json.loads(out.read_text())
    assert got["calls"] == 2000
    pages = {p["page"]: p for p in got["pages"]}
    assert {
        "Overview, last 3 hours (the default)",
        "Calls, first page",
        "Calls, denied (rule=deny)",
        "Calls, the next page (cursor)",
        "One call",
    } <= set(pages)
    for page in pages.values():
        assert page["status"] == 200 and page["ok"] and not page["missing"], page
        assert page["ms"] > 0 and page["bytes"] > 1000
    assert "after=" in pages["Calls, the next page (cursor)"]["path"]
    assert pages["Overview, last 24 hours"]["window_calls"] > 200
    if not have_wrk:
        return
    rows = {(r["workload"], r["condition"]): r for r in got["load"]["summary"]}
    assert set(rows) == {
        (w, c) for w in ("ice@16", "mix@16") for c in ("alone", "2xmax", "2x5:calls")
    }
    for (_, condition), row in rows.items():
        assert row["non_200"] == 0 and row["rps"] > 0 and row["p99_ms"] > 0
        if condition != "alone":
            assert row["console"]["non_200"] == 0 and row["console"]["pages_per_s"] > 0
            assert row["vs_alone"]["p99_us"] > 0
    flat = rows[("ice@16", "2xmax")]["console"]["by_path"]  # the Overview, Calls, one call
    assert len(flat) == 3 and {"/", "/calls"} < set(flat)
    assert all(p["median_ms"] for p in flat.values())  # each was loaded under load
    # the benchmark's own calls are deleted after each run (a bulk call may have left the
    # window in between: they are minutes apart)
    before = pages["Overview, last 3 hours (the default)"]["window_calls"]
    assert before - 1 <= got["load"]["window_calls_before"] <= before
