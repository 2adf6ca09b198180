"""``serve.py replay``: a candidate configuration run on the recorded calls of a real
server, in a sandbox (core.replay)."""

from __future__ import annotations

import json
import time

import pytest

from core.replay import compare, mask
from core.store import open_store
from core.trace import Trace
from tests.conftest import run_cli
from tests.fake_crm import FakeCrm
from tests.helpers import KEY, SECRET, dice, ice
from tests.test_plugins import make_dist

pytestmark = pytest.mark.usefixtures("backend")

CRM_SECRET = "a-crm-secret"
UK = "+4420794600"  # + two digits: the calls a candidate's new rule denies
US = "+1561260068"  # + one digit


def _config(url: str, *, allowlist: str = "", credit: bool = True, crm: str = "") -> str:
    enabled = '"allowlist", "credit", "crm"' if credit else '"allowlist", "crm"'
    text = (
        f'[server]\nport = 0\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "{url}"\n'
        f"[plugins]\nenabled = [{enabled}]\n"
        '[plugins.allowlist]\nallow = ["+1561260068*", "+4420794600*"]\nmax_duration = 600\n'
        f"{allowlist}"
    )
    if crm:
        text += f'[plugins.crm]\nwebhook_url = "{crm}"\nwebhook_secret = "{CRM_SECRET}"\n'
    if credit:
        text += (
            '[plugins.credit]\ncurrency = "USD"\naccount_from = "fixed"\naccount = "demo"\n'
            'rates = { "+1" = "0.02", "+44" = "0.05" }\ninitial_accounts = { demo = "1000.00" }\n'
        )
    return text


def _dump(url: str, base) -> dict[str, list[str]]:
    """Every row of every table of a store, as text, in a fixed order."""
    store = open_store(url, base)
    try:
        return {t: sorted(repr(r) for r in store.query(f"SELECT * FROM {t}")) for t in store.tables()}
    finally:
        store.close()


def _traffic(server, calls: int = 200) -> dict[str, str]:
    """``calls`` calls, a quarter of them to the UK and every fifth from one caller;
    the allowed ones answered and hung up. Returns each call's destination."""
    sent = {}
    for n in range(calls):
        callid = f"call-{n:03d}"
        to = f"{UK}{n % 100:02d}" if n % 4 == 0 else f"{US}{n % 10}"
        caller = "+12015550100" if n % 5 == 0 else f"+1201555{n:04d}"
        status, _, body = server.post(ice(callid, to=to, cli=caller))
        assert status == 200
        if json.loads(body)["action"]["name"] != "hangup":
            assert server.post(dice(callid, to=to, from_=caller, duration=30))[0] == 200
        sent[callid] = to
    return sent


def test_a_new_rule_changes_exactly_the_calls_it_matches_and_no_real_table(
    serve, tmp_path, backend
):
    url = backend.url(tmp_path, "replay")
    server = serve(_config(url), name="live")
    sent = _traffic(server)
    before = _dump(url, tmp_path)
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(_config(url, allowlist='deny = ["+44207946001*"]\n'))  # +4420794600*

    out = run_cli(server.config, "replay", "--config", str(candidate), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    uk = sorted(c for c, to in sent.items() if to.startswith("+44207946001"))
    assert len(uk) == 4
    assert report["calls"] == 200 and report["compared"] == 200
    assert sorted(r["callid"] for r in report["results"] if r["change"] != "same") == uk
    (group,) = report["summary"]
    assert group["calls"] == uk and group["plugin"] == "allowlist"
    assert group["text"] == (
        "4 calls to +44207946001* now denied by allowlist: <number> denied by rule "
        "'+44207946001*'"
    )
    changed = next(r for r in report["results"] if r["callid"] == uk[0])
    assert changed["recorded"]["action"]["name"] == "connectPstn"
    assert changed["candidate"]["action"]["name"] == "hangup"
    assert changed["revision"] == json.loads(
        run_cli(server.config, "revisions", "--json").stdout
    )["loads"][0]["revision"]
    assert report["candidate"] != changed["revision"]
    assert any("state" in line for line in report["limits"])

    text = run_cli(server.config, "replay", "--config", str(candidate))
    assert text.returncode == 0, text.stderr
    assert f"{len(uk)} of 200 answer(s) would change" in text.stdout
    assert f"{uk[0]} ice" in text.stdout and "limits of a replay:" in text.stdout
    assert SECRET not in text.stdout + out.stdout

    assert _dump(url, tmp_path) == before  # the server is still running: nothing moved
    assert server.stop() == 0
    assert _dump(url, tmp_path) == before


def test_the_same_configuration_replays_to_the_same_answers(serve, tmp_path, backend):
    """Money and counters are put back to the window's start, so the recorded
    configuration reproduces every recorded answer, caps included."""
    url = backend.url(tmp_path, "replay")
    server = serve(
        _config(url).replace('initial_accounts = { demo = "1000.00" }', 'initial_accounts = { demo = "0.60" }'),
        name="live",
    )
    _traffic(server, 60)
    out = run_cli(server.config, "replay", "--config", str(server.config), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    answers = {r["candidate"]["action"].get("maxDuration") for r in report["results"]}
    assert len(answers) > 2  # the balance ran low: credit capped calls ever shorter
    assert [r for r in report["results"] if r["change"] != "same"] == []
    assert report["rewound"] == ["allowlist", "credit"]
    server.stop()


def test_stateful_plugins_count_the_replayed_calls(serve, tmp_path, backend):
    url = backend.url(tmp_path, "replay")
    server = serve(_config(url, credit=False), name="live")
    sent = _traffic(server, 40)
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(_config(url, credit=False, allowlist="caller_limit = 3\n"))
    out = run_cli(server.config, "replay", "--config", str(candidate), "--json")
    report = json.loads(out.stdout)
    # every fifth call is from one caller: its 4th and later calls are over the limit
    busy = sorted(c for c in sent if int(c[-3:]) % 5 == 0)[3:]
    assert sorted(r["callid"] for r in report["results"] if r["change"] != "same") == busy
    assert {g["rule"] for g in report["summary"]} == {
        "caller <number> reached <n> calls per <n> s"
    }
    server.stop()


def test_filters_pick_the_calls(serve, tmp_path, backend):
    url = backend.url(tmp_path, "replay")
    server = serve(_config(url), name="live")
    _traffic(server, 12)
    one = json.loads(
        run_cli(server.config, "replay", "--config", str(server.config), "--callid", "call-004", "--json").stdout
    )
    assert [r["callid"] for r in one["results"]] == ["call-004"]
    few = json.loads(
        run_cli(server.config, "replay", "--config", str(server.config), "--limit", "5", "--json").stdout
    )
    assert [r["callid"] for r in few["results"]] == [f"call-{n:03d}" for n in range(5)]
    later = json.loads(
        run_cli(server.config, "replay", "--config", str(server.config), "--since", "1h", "--until", "0s", "--json").stdout
    )
    assert later["calls"] == 12
    none = json.loads(
        run_cli(server.config, "replay", "--config", str(server.config), "--until", "2h", "--json").stdout
    )
    assert none["calls"] == 0 and none["results"] == []
    server.stop()


def test_a_bad_candidate_is_refused_with_the_key_named(serve, tmp_path, backend):
    url = backend.url(tmp_path, "replay")
    server = serve(_config(url), name="live")
    server.post(ice("one"))
    bad = tmp_path / "bad.toml"
    bad.write_text(_config(url, allowlist="allow = 5\n").replace('allow = ["+1561260068*", "+4420794600*"]\n', ""))
    out = run_cli(server.config, "replay", "--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: candidate configuration: plugins.allowlist.allow: expected a list of strings, got 5"
    missing = run_cli(server.config, "replay", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such configuration file" in missing.stderr
    server.stop()


def test_compare_names_the_change_and_its_cause():
    def trace(**kw):
        return Trace.from_dict({"callid": "c", "event": "ice", "received_at": "", **kw})

    connect = {"action": {"name": "connectPstn", "number": "+1", "maxDuration": 600}}
    shorter = {"action": {"name": "connectPstn", "number": "+1", "maxDuration": 60}}
    hangup = {"action": {"name": "hangup"}}
    capped = trace(
        capped_by="credit",
        plugins=[{"plugin": "credit", "status": "decided", "decision": {"kind": "cap", "reason": "reserved 1.20 USD for 60 s"}}],
    )
    assert compare(connect, connect, capped) == ("same", None, None)
    assert compare(connect, shorter, capped) == ("capped-shorter", "credit", "reserved <n> USD for <n> s")
    assert compare(shorter, connect, capped)[0] == "capped-longer"
    fell_back = trace(rule="budget")
    assert compare(connect, hangup, fell_back) == ("now-denied", None, "rule budget")
    assert mask("+442079460000 denied by rule '+44*'") == "<number> denied by rule '+44*'"
    exact = "+442079460000 denied by rule '+442079460000'"
    assert mask(exact) == "<number> denied by rule '+442079460000'"
    assert mask("demo: reserved 4.80 USD for 14400 s") == "demo: reserved <n> USD for <n> s"


def test_a_replay_sends_nothing_to_the_crm(serve, tmp_path, backend):
    with FakeCrm(CRM_SECRET) as crm:
        url = backend.url(tmp_path, "replay")
        server = serve(_config(url, crm=crm.url), name="live")
        _traffic(server, 8)
        deadline = time.monotonic() + 10
        while len(crm.received) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(crm.received) == [f"call-{n:03d}" for n in range(8)]
        out = run_cli(server.config, "replay", "--config", str(server.config), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["replayed"] == 16  # 8 ICE, 8 DiCE
        server.stop()
        time.sleep(0.5)
        assert len(crm.received) == 8 and crm.attempts == 8


def test_a_plugin_not_yet_enabled_is_replayed_with_its_own_tables(serve, tmp_path, backend):
    """A third-party plugin installed but not enabled: its migrations are applied to
    the sandbox only, its decisions change the answers, and the real store never gets
    its table."""
    site = make_dist(tmp_path / "site", "switchboard-vip", "vip = tests.vip_plugin")
    url = backend.url(tmp_path, "replay")
    server = serve(_config(url, credit=False), name="live", pythonpath=str(site))
    _traffic(server, 10)
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(
        _config(url, credit=False).replace('enabled = ["allowlist"', 'enabled = ["vip", "allowlist"')
        + '[plugins.vip]\ncallers = ["+12015550100"]\nline = "+15612600600"\n'
    )
    out = run_cli(
        server.config, "replay", "--config", str(candidate), "--json", pythonpath=str(site)
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    vip = {"call-000", "call-005"}  # every fifth call is from +12015550100
    assert {r["callid"] for r in report["results"] if r["change"] != "same"} == vip
    assert {(g["change"], g["plugin"]) for g in report["summary"]} == {
        ("action-changed", "vip")
    }
    server.stop()
    store = open_store(url, tmp_path)
    try:
        assert "vip_calls" not in store.tables()
    finally:
        store.close()


def test_callbacks_are_read_a_chunk_of_calls_at_a_time_in_arrival_order(monkeypatch):
    from core import replay as replay_mod
    from core.store import SqliteStore, CORE_MIGRATIONS

    store = SqliteStore(":memory:")
    store.migrate("core", CORE_MIGRATIONS)
    arrivals = [("a", "ice", 1.0), ("b", "ice", 2.0), ("a", "dice", 3.0), ("c", "ice", 4.0),
                ("b", "ace", 4.5), ("b", "dice", 5.0), ("c", "dice", 6.0), ("a", "notify", 7.0)]
    for callid, event, at in arrivals:
        store.claim(callid, event, "", lease=5, now=at, body="{}")
    monkeypatch.setattr(replay_mod, "CHUNK", 1)
    calls = replay_mod._calls(store, None, None, None, None)
    assert calls == [("a", 1.0), ("b", 2.0), ("c", 4.0)]
    got = [(r[0], r[1], r[5]) for r in replay_mod._callbacks(store, calls)]
    assert got == arrivals
    store.close()


def test_credit_rewind_undoes_only_the_calls_the_replay_makes_again():
    """A call that began before the window keeps its reservation, settlement and charge
    (its DiCE is not replayed); a top-up made in the window stays; a call that began in
    it is undone, its charge given back."""
    from core.store import SqliteStore
    from plugins.credit import ledger

    store = SqliteStore(":memory:")
    store.migrate("credit", ledger.MIGRATIONS)
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO credit_accounts (account, currency, balance, updated_at) "
            "VALUES ('a', 'USD', 1000 - 100 - 40 + 500, 0)"
        )
        entries = [
            (1, 10.0, "initial", 1000, None),
            (2, 110.0, "call", -100, "before"),  # began at 90, settled in the window
            (3, 150.0, "topup", 500, None),
            (4, 170.0, "call", -40, "inside"),  # began at 120
        ]
        for seq, at, kind, amount, callid in entries:
            tx.execute(
                "INSERT INTO credit_ledger (account, seq, at, kind, amount, balance_after, "
                "callid, details) VALUES ('a', ?, ?, ?, ?, 0, ?, '{}')",
                (seq, at, kind, amount, callid),
            )
        for callid, created in (("before", 90.0), ("inside", 120.0)):
            tx.execute(
                "INSERT INTO credit_reservations (callid, account, amount, rate, "
                "first_increment, next_increment, minimum_charge, max_duration, status, "
                "created_at, expires_at) VALUES (?, 'a', 300, '0.02', 60, 60, 0, 600, "
                "'settled', ?, 9999)",
                (callid, created),
            )
            tx.execute(
                "INSERT INTO credit_settled (callid, account, amount, status, at, details) "
                "VALUES (?, 'a', 1, 'settled', ?, '{}')",
                (callid, created + 50),
            )
    ledger.rewind(store, 100.0)
    assert store.query("SELECT balance FROM credit_accounts") == [(1000 - 100 + 500,)]
    assert store.query("SELECT callid FROM credit_reservations") == [("before",)]
    assert store.query("SELECT callid, status FROM credit_reservations") == [("before", "settled")]
    assert store.query("SELECT callid FROM credit_settled") == [("before",)]
    assert [r[0] for r in store.query("SELECT seq FROM credit_ledger ORDER BY seq")] == [1, 2, 3]
    store.close()
