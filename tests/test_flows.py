"""The three built-in plugins together, in call flows (ICE, ACE, DiCE), in-process and
on the real server: the example config, a concurrent load on one account, and a crash
with records waiting in the CRM outbox."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from core.store import open_store
from plugins.allowlist import Allowlist
from plugins.credit import Credit, Tariff
from plugins.crm import Crm
from tests.conftest import run_cli
from tests.fake_crm import FakeCrm

from tests.helpers import KEY, SECRET, ace, dice, ice, post, wait_for, webapp

pytestmark = pytest.mark.usefixtures("backend")

REPO = Path(__file__).resolve().parent.parent
CRM_SECRET = "crm-flow-secret"


@pytest.fixture
def trio(backend):
    rt = backend.runtime(
        {"allowlist": Allowlist(), "credit": Credit(), "crm": Crm()},
        plugins={
            "allowlist": {
                "allow": ["+15612600684"],
                "max_duration": 600,
                "deny_prompt": "Not allowed.",
            },
            "credit": {
                "account_from": "cli",
                "rates": {"+1": "0.02"},
                "initial_accounts": {"+12015555555": "1.00"},
            },
        },
    )
    rt.start()
    yield rt, webapp(rt)
    rt.close()


def test_allowed_call_flow(trio):
    rt, app = trio
    r = post(app, ice("f1"))
    assert r.json == {
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 600}
    }
    assert post(app, ace("f1")).json == {"action": {"name": "continue"}}
    rt.pipeline.wait_idle()
    # 1.00 at 0.02/min buys 50 minutes; the answer caps at 10, so only 10 stay reserved
    assert rt.store.query("SELECT amount, max_duration FROM credit_reservations") == [(20, 600)]
    assert post(app, dice("f1", duration=185)).body == b""
    assert rt.store.query("SELECT balance FROM credit_accounts") == [(92,)]  # 4 minutes at 0.02
    call = rt.store.query(
        "SELECT caller, destination, duration, ice_answer, ice_trace FROM crm_calls"
    )[0]
    assert call[:3] == ("+12015555555", "+15612600684", 185)
    assert json.loads(call[3])["action"]["maxDuration"] == 600
    trace = json.loads(call[4])
    assert [p["plugin"] for p in trace["plugins"]] == ["allowlist", "credit"]
    assert trace["rule"] == "allow-default"


def test_denied_call_flow(trio):
    rt, app = trio
    r = post(app, ice("f2", to="+19005550100"))
    assert r.json == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "Not allowed.", "locale": "en-US"},
        ],
        "action": {"name": "hangup"},
    }
    rt.pipeline.wait_idle()
    assert rt.store.query("SELECT status FROM credit_reservations WHERE callid = 'f2'") == [
        ("released",)
    ]
    post(app, dice("f2", duration=0, result="FAILED", reason="CALLERHANGUP"))
    assert rt.store.query("SELECT balance FROM credit_accounts") == [(100,)]
    record = rt.store.query("SELECT result, ice_answer FROM crm_calls WHERE callid = 'f2'")[0]
    assert record[0] == "FAILED" and json.loads(record[1])["action"]["name"] == "hangup"


def test_caller_without_credit_is_denied_and_recorded(trio):
    rt, app = trio
    r = post(app, ice("f3", cli="14155550000"))
    assert r.json["action"]["name"] == "hangup"
    trace = json.loads(rt.store.traces("f3")[0]["trace"])
    assert trace["decided_by"] == ["credit"]
    assert "unknown account +14155550000" in trace["plugins"][1]["decision"]["reason"]


# ---------------------------------------------------------------- the example config


def test_example_config_on_the_real_server(serve, tmp_path, backend):
    text = (REPO / "config.toml").read_text().replace("port = 8080", "port = 0")
    text = text.replace(
        'url = "sqlite:///switchboard.db"', f'url = "{backend.url(tmp_path, "switchboard")}"'
    )
    server = serve(text, name="config")
    status, _, body = server.post(ice("ex-1"))
    assert status == 200
    assert json.loads(body) == {
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 600}
    }
    assert json.loads(server.post(ace("ex-1"))[2]) == {"action": {"name": "continue"}}
    assert server.post(dice("ex-1", duration=61))[::2] == (200, b"")
    assert json.loads(server.post(ice("ex-2", to="+14155550000"))[2]) == {
        "action": {"name": "hangup"}
    }
    assert server.stop() == 0
    show = run_cli(server.config, "credit", "show", "demo")
    assert "balance   4.96" in show.stdout, show.stdout + show.stderr  # 5.00 - 2 minutes at 0.02
    export = run_cli(server.config, "crm", "export")
    assert [json.loads(line)["callid"] for line in export.stdout.splitlines()] == ["ex-1"]
    sim_server = serve(text, name="config")
    sim = run_cli(sim_server.config, "simulate", "ice", "--url", sim_server.url)
    assert (
        sim.returncode == 0
        and '"name": "connectPstn"' in sim.stdout
        and "allowlist: decided" in sim.stdout
    )


# ---------------------------------------------------------------- concurrency on one account

LOAD_CONFIG = f"""
[server]
port = 0
threads = 8
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "@STORE@"
[plugins]
enabled = ["allowlist", "credit", "crm"]
[plugins.allowlist]
allow = ["+1*"]
[plugins.credit]
account_from = "fixed"
account = "shared"
rates = {{ "+1" = "0.60" }}
increments = "1/1"
minimum_seconds = 30
max_duration = 120
initial_accounts = {{ shared = "20.00" }}
"""


def test_concurrent_calls_on_one_account_never_overspend(serve, tmp_path, backend):
    server = serve(LOAD_CONFIG.replace("@STORE@", backend.url(tmp_path, "load")), name="load")
    tariff = Tariff(Decimal("0.60"), 1, 1, 0, 100)
    rng = random.Random(7)
    caps: dict[str, int] = {}
    durations: dict[str, int] = {}

    def call(callid):
        status, _, body = server.post(ice(callid, to="+14155550000"))
        assert status == 200
        answer = json.loads(body)["action"]
        if answer["name"] == "connectPstn":
            caps[callid] = answer["maxDuration"]

    def hang_up(callid):
        duration = rng.randint(0, caps[callid]) if callid in caps else 0
        durations.setdefault(callid, duration)
        for _ in range(2):  # every DiCE is delivered twice
            assert server.post(dice(callid, duration=durations[callid]))[0] == 200

    with ThreadPoolExecutor(16) as pool:
        wave1 = [f"load-a{i}" for i in range(30)]
        list(pool.map(call, wave1))
        wave2 = [f"load-b{i}" for i in range(30)]
        # the second wave's ICEs race the first wave's DiCEs
        list(
            pool.map(
                lambda job: job[0](job[1]),
                [(call, c) for c in wave2] + [(hang_up, c) for c in wave1],
            )
        )
        list(pool.map(hang_up, wave2))
    assert caps, "some calls must have been allowed"
    assert server.stop() == 0

    store = open_store(backend.url(tmp_path, "load"))
    try:
        balance = store.query("SELECT balance FROM credit_accounts WHERE account = 'shared'")[0][0]
        ledger = store.query(
            "SELECT kind, amount, callid FROM credit_ledger WHERE account = 'shared'"
        )
        assert balance >= 0
        assert balance == sum(amount for _, amount, _ in ledger)
        charges = {callid: -amount for kind, amount, callid in ledger if kind == "call"}
        assert len([1 for kind, _, _ in ledger if kind == "call"]) == len(charges)  # once per call
        assert set(charges) == set(caps)  # every allowed call settled
        for callid, charged in charges.items():
            assert durations[callid] <= caps.get(callid, 0)
            assert charged == tariff.cost(durations[callid])
        # before any call ended, the calls allowed together could not cost more than the balance
        wave1_caps = [caps[c] for c in wave1 if c in caps]
        assert 10 <= len(wave1_caps) < len(wave1)
        assert sum(tariff.cost(c) for c in wave1_caps) <= 2000
        assert 2000 - balance == sum(charges.values())
        assert store.query("SELECT COUNT(*) FROM credit_reservations WHERE status = 'open'") == [
            (0,)
        ]
        assert store.query("SELECT COUNT(*) FROM crm_calls")[0][0] == 60
    finally:
        store.close()


# ---------------------------------------------------------------- crash with records in the outbox


def test_killing_the_server_mid_outbox_loses_nothing(serve, tmp_path, backend):
    with FakeCrm(CRM_SECRET, fail_first=10**6) as crm:
        config = f"""
[server]
port = 0
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "{backend.url(tmp_path, "crash")}"
[plugins]
enabled = ["crm"]
[plugins.crm]
webhook_url = "{crm.url}"
backoff = 0.1
max_backoff = 0.2
poll_interval = 0.05
max_attempts = 1000
"""
        env = {"SWITCHBOARD_CRM_SECRET": CRM_SECRET}
        first = serve(config, name="crash", env=env)
        callids = [f"crash-{i}" for i in range(10)]
        for callid in callids:
            assert first.post(dice(callid))[0] == 200
        assert wait_for(lambda: crm.attempts >= 10, timeout=10)
        first.kill()  # SIGKILL: no shutdown hooks, no goodbye
        assert crm.received == []
        crm.fail_first = 0
        second = serve(config, name="crash", env=env)
        assert wait_for(lambda: len(set(crm.received)) == len(callids), timeout=15)
        time.sleep(0.3)
        assert sorted(crm.received) == sorted(callids)
        second.stop()
        outbox = run_cli(second.config, "crm", "outbox", env=env)
        assert "0 record(s) waiting" in outbox.stdout


# ---------------------------------------------------------------- several instances, one store


def test_two_instances_share_one_truth(serve, tmp_path, backend):
    with FakeCrm(CRM_SECRET) as crm:
        config = f"""
[server]
port = 0
threads = 8
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "{backend.url(tmp_path, "shared")}"
[plugins]
enabled = ["allowlist", "credit", "crm"]
[plugins.allowlist]
allow = ["+1*"]
[plugins.credit]
account_from = "cli"
rates = {{ "+1" = "0.60" }}
increments = "1/1"
minimum_seconds = 30
max_duration = 120
initial_accounts = {{ "+12015550001" = "6.00", "+12015550002" = "6.00", "+12015550003" = "3.00" }}
[plugins.crm]
webhook_url = "{crm.url}"
poll_interval = 0.05
backoff = 0.1
"""
        env = {"SWITCHBOARD_CRM_SECRET": CRM_SECRET}
        a = serve(config, name="instance-a", env=env)
        b = serve(config, name="instance-b", env=env)
        tariff = Tariff(Decimal("0.60"), 1, 1, 0, 100)
        rng = random.Random(11)
        callers = ["12015550001", "12015550002", "12015550003"]
        calls = [(f"multi-{i}", callers[i % 3]) for i in range(36)]
        caps: dict[str, int] = {}
        durations = {callid: rng.randint(0, 120) for callid, _ in calls}

        def ring(job):
            callid, caller = job
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            status, _, body = first.post(ice(callid, to="+14155550000", cli=caller))
            assert status == 200
            action = json.loads(body)["action"]
            if action["name"] == "connectPstn":
                caps[callid] = action["maxDuration"]
                assert second.post(ace(callid))[0] == 200

        def hang_up(job):
            callid, _ = job
            duration = min(durations[callid], caps.get(callid, 0))
            durations[callid] = duration
            with ThreadPoolExecutor(2) as both:  # the same DiCE reaches both instances at once
                results = list(
                    both.map(lambda s: s.post(dice(callid, duration=duration))[0], (a, b))
                )
            assert results == [200, 200]

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(ring, calls[:18]))
            list(
                pool.map(
                    lambda job: job[0](job[1]),
                    [(ring, c) for c in calls[18:]] + [(hang_up, c) for c in calls[:18]],
                )
            )
            list(pool.map(hang_up, calls[18:]))
        assert wait_for(lambda: len(set(crm.received)) == len(calls), timeout=20)
        time.sleep(0.3)
        assert a.stop() == 0 and b.stop() == 0

    assert sorted(crm.received) == sorted(c for c, _ in calls)  # one CRM delivery per call
    store = open_store(backend.url(tmp_path, "shared"))
    try:
        assert store.query("SELECT COUNT(*) FROM crm_calls")[0][0] == len(calls)  # no lost record
        ledger = store.query("SELECT account, kind, amount, callid FROM credit_ledger")
        charged = [(callid, -amount) for _, kind, amount, callid in ledger if kind == "call"]
        assert len(charged) == len({c for c, _ in charged}) == len(caps)  # no double debit
        for callid, amount in charged:
            assert amount == tariff.cost(durations[callid]) and durations[callid] <= caps[callid]
        for account, balance in store.query("SELECT account, balance FROM credit_accounts"):
            assert balance >= 0  # no overspend
            assert balance == sum(amount for acct, _, amount, _ in ledger if acct == account)
        assert store.query("SELECT COUNT(*) FROM credit_reservations WHERE status = 'open'") == [
            (0,)
        ]
    finally:
        store.close()
