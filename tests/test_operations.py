"""What operators rely on: metrics, readiness, traces by call id, hook tracing, reload."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

import pytest

from core.decisions import Decision
from core.store import CORE_MIGRATIONS
from core.svaml import ConnectConf, ConnectPstn
from plugins.credit import Credit
from plugins.crm import Crm
from tests.conftest import run_cli
from tests.helpers import (
    KEY,
    PATH,
    SECRET,
    Fixed,
    Raising,
    dice,
    ice,
    post,
    signed,
    wait_for,
)
from tests.test_plugins import make_dist

pytestmark = pytest.mark.usefixtures("backend")
TOKEN = "an-admin-token-of-some-length"


def metric(app, name, **labels):
    """The value of one sample in /metrics (0 when absent)."""
    for line in app.get("/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, rest = sample.partition("{")
        found = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        if sample_name == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


def test_metrics_explain_denials_caps_errors_and_rejections(make):
    rt, app = make(
        {
            "guard": Fixed(Decision.denied("blocked"), events=("pie",)),
            "router": Fixed(Decision.propose(ConnectPstn(number="+15612600684", max_duration=600))),
            "limit": Fixed(Decision.cap(60)),
            "conf": Fixed(Decision.propose(ConnectConf(conference_id="x"))),
            "boom": Raising(),
        },
        plugins={"boom": {"on_error": "abstain"}},
    )
    post(app, ice("m1"))
    post(app, {"event": "pie", "callid": "m1", "menuResult": {"type": "sequence", "value": "1"}})
    body, headers = signed(ice("m2"), timestamp="2000-01-01T00:00:00Z")
    app.post(PATH, body, headers=headers, status=401)
    app.post(PATH, body, headers={**headers, "Content-Type": "text/plain"}, status=415)
    assert metric(app, "switchboard_callbacks_total", event="ice", outcome="connectPstn") == 1
    assert metric(app, "switchboard_decisions_total", event="ice", rule="proposal") == 1
    assert metric(app, "switchboard_caps_total", event="ice", plugin="limit") == 1
    assert metric(app, "switchboard_conflicts_total", event="ice") == 1
    assert metric(app, "switchboard_denials_total", event="pie", plugin="guard") == 1
    assert (
        metric(app, "switchboard_plugin_errors_total", plugin="boom", event="ice", kind="error")
        == 1
    )
    assert metric(app, "switchboard_signature_failures_total", reason="stale") == 1
    assert metric(app, "switchboard_rejected_total", status="415") == 1
    assert metric(app, "switchboard_answer_seconds_count", event="ice") == 1
    assert metric(app, "switchboard_plugin_seconds_count", plugin="router", event="ice") == 1


def test_fallbacks_are_counted(make):
    _, app = make({"bad": Fixed(Decision.propose(ConnectPstn()), events=("ace",))})
    post(app, {"event": "ace", "callid": "m3"})
    assert metric(app, "switchboard_fallbacks_total", event="ace", reason="invalid-answer") == 1


def test_plugin_gauges(make):
    credit = Credit()
    rt, app = make(
        {"credit": credit, "crm": Crm()},
        plugins={
            "credit": {
                "account_from": "fixed",
                "account": "a",
                "rates": {"+1": "0.60"},
                "initial_accounts": {"a": "10.00"},
            },
            "crm": {"webhook_url": "http://127.0.0.1:9/x", "webhook_secret": "s", "backoff": 60},
        },
        policy={"ice_default": "connect"},
    )
    post(app, ice("g1"))
    rt.pipeline.wait_idle()
    assert metric(app, "switchboard_credit_reservations_open") == 1
    assert metric(app, "switchboard_credit_reserved_minor_units") == 960
    post(app, dice("g1", duration=30))
    assert metric(app, "switchboard_credit_reservations_open") == 0
    assert wait_for(lambda: metric(app, "switchboard_crm_outbox_depth") == 1)
    assert metric(app, "switchboard_crm_dead_letters") == 0


def test_readiness(make):
    rt, app = make()
    assert app.get("/readyz").json == {"status": "ready"}
    with rt.store.transaction() as tx:
        tx.execute("DELETE FROM schema_migrations WHERE owner = 'core'")
    core = [m.version for m in CORE_MIGRATIONS]
    assert app.get("/readyz", status=503).json["error"] == f"migrations pending: core {core}"
    rt.store.close()
    error = app.get("/readyz", status=503).json["error"]  # closed: unreachable, or PoolClosed
    assert error.startswith(("store unreachable", "store cannot take writes"))
    assert app.get("/healthz").json == {"status": "ok"}  # liveness is not readiness


def test_admin_trace_endpoint(make):
    _, app = make({"router": Fixed(Decision.propose(ConnectPstn()))})
    post(app, ice("t1"))
    assert app.get("/admin/trace/t1", status=404).json["error"] == "no such path: /admin/trace/t1"
    _, app = make({"router": Fixed(Decision.propose(ConnectPstn()))}, admin={"token": TOKEN})
    post(app, ice("t2"))
    assert app.get("/admin/trace/t2", status=401).status_int == 401
    app.get(
        "/admin/trace/t2",
        headers={"Authorization": "Bearer wrong-token-of-some-length"},
        status=401,
    )
    got = app.get("/admin/trace/t2", headers={"Authorization": f"Bearer {TOKEN}"}).json
    assert got["callid"] == "t2" and got["callbacks"][0]["answer"] == {
        "action": {"name": "connectPstn"}
    }
    assert got["callbacks"][0]["trace"]["decided_by"] == ["router"]
    app.get("/admin/trace/none", headers={"Authorization": f"Bearer {TOKEN}"}, status=404)


def test_short_admin_token_is_refused(backend):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="admin.token: use at least 16 characters"):
        backend.runtime(admin={"token": "short"})


def test_hook_tracing_logs_calls_without_secrets(monkeypatch, caplog, make):
    monkeypatch.setenv("SWITCHBOARD_TRACE_HOOKS", "1")
    with caplog.at_level(logging.INFO, logger="switchboard.hooks"):
        _, app = make(
            {"crm": Crm(), "router": Fixed(Decision.propose(ConnectPstn()))},
            plugins={
                "crm": {"webhook_url": "http://127.0.0.1:9/x", "webhook_secret": "t0p-s3cret"}
            },
        )
        post(app, ice("h1"))
        post(app, dice("h1"))
    lines = [r.getMessage() for r in caplog.records if r.name == "switchboard.hooks"]
    assert any(line.startswith("crm.switchboard_configure(config=<") for line in lines)
    assert any(
        line.startswith("router.switchboard_ice(event=Ice(callid='h1'") and "-> Decision(" in line
        for line in lines
    )
    assert any(
        line.startswith("crm.switchboard_dice(event=Dice(callid='h1'")
        and "ctx=CallContext(callid='h1', event='dice', plugin='crm')" in line
        for line in lines
    )
    assert "t0p-s3cret" not in caplog.text


# ---------------------------------------------------------------- through serve.py


def _config(backend, tmp_path, allow: str, extra: str = "") -> str:
    text = (
        f'[server]\nport = 0\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "{backend.url(tmp_path, "ops")}"\n[admin]\ntoken = "{TOKEN}"\n'
        f'[plugins]\nenabled = [{extra}"allowlist"]\n[plugins.allowlist]\nallow = ["{allow}"]\n'
    )
    return text + ("[plugins.slow]\ndelay = 1.0\n" if extra else "")


def test_trace_command(serve, tmp_path, backend):
    server = serve(_config(backend, tmp_path, "+15612600684"), name="ops")
    server.post(ice("cli-1"))
    server.post(dice("cli-1"))
    server.stop()
    out = run_cli(server.config, "trace", "cli-1")
    assert out.returncode == 0, out.stderr
    assert (
        'ICE done: {"action": {"name": "connectPstn"' in out.stdout
        and "allowlist: decided" in out.stdout
    )
    assert "DICE done: (200, empty body)" in out.stdout
    as_json = json.loads(run_cli(server.config, "trace", "cli-1", "--json").stdout)
    assert [c["event"] for c in as_json["callbacks"]] == ["ice", "dice"]
    assert run_cli(server.config, "trace", "nope").returncode == 1


def test_reload_on_sighup(serve, tmp_path, backend):
    site = tmp_path / "site"
    make_dist(site, "switchboard-slow", "slow = tests.slow_plugin")
    server = serve(
        _config(backend, tmp_path, "+15612600684", '"slow", '), name="ops", pythonpath=str(site)
    )
    assert json.loads(server.post(ice(to="+14155550000"))[2])["action"]["name"] == "hangup"

    result = {}
    slow = threading.Thread(
        target=lambda: result.update(r=server.post(ice("inflight", to="+15612600684")))
    )
    slow.start()
    time.sleep(0.3)  # the slow plugin is deciding on the old configuration
    server.config.write_text(_config(backend, tmp_path, "+14155550000"))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in server.log, timeout=10)
    assert json.loads(server.post(ice(to="+14155550000"))[2])["action"]["name"] == "connectPstn"
    slow.join(10)
    status, _, body = result["r"]
    assert status == 200 and json.loads(body)["action"] == {
        "name": "connectPstn",
        "number": "+15612600684",
        "maxDuration": 60,
    }

    server.config.write_text(
        _config(backend, tmp_path, "+14155550000").replace('allow = ["+14155550000"]', "allow = 5")
    )
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in server.log, timeout=10)
    assert "plugins.allowlist.allow: expected a list" in server.log
    assert json.loads(server.post(ice(to="+14155550000"))[2])["action"]["name"] == "connectPstn"
    assert server.stop() == 0


def test_waitress_queue_warnings_are_thinned_to_one_per_interval(monkeypatch):
    from core import logs

    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    sparse = logs.Sparse(10.0)

    def record():
        return logging.LogRecord(
            "waitress.queue", logging.WARNING, "", 0, "Task queue depth is %d", (3,), None
        )

    first = record()
    assert sparse.filter(first) and first.getMessage() == "Task queue depth is 3"
    assert [sparse.filter(record()) for _ in range(5)] == [False] * 5
    now[0] += 10.0
    later = record()
    assert sparse.filter(later)
    assert later.getMessage() == "Task queue depth is 3 (5 more in the last 10 s)"
    assert not sparse.filter(record())
