"""crm alone: call records before the DiCE answer, outbox delivery, dead letters, replay."""

from __future__ import annotations

import contextlib

import json
import time

import pytest

from core.decisions import Decision
from core.plugins import PluginError
from core.svaml import ConnectPstn
from plugins.crm import Crm
from tests.cli_runner import cli as run_cli
from tests.fake_crm import FakeCrm

from tests.helpers import KEY, SECRET, Fixed, ace, dice, ice, post, wait_for, webapp

pytestmark = pytest.mark.usefixtures("backend")

CRM_SECRET = "crm-shared-secret"
FAST = {"backoff": 0.05, "max_backoff": 0.2, "poll_interval": 0.05, "delivery_timeout": 2.0}


@pytest.fixture
def crm_app(backend):
    made = []

    def _make(**config):
        plugin = Crm()
        rt = backend.runtime(
            {
                "router": Fixed(
                    Decision.propose(ConnectPstn(number="+15612600684", max_duration=600))
                ),
                "crm": plugin,
            },
            plugins={"crm": config} if config else {},
        )
        made.append(rt)
        return rt, webapp(rt), plugin

    yield _make
    for rt in made:
        rt.close()


def records(rt):
    rows = rt.store.query(
        "SELECT callid, caller, destination, duration, result, ice_answer, delivered_at FROM crm_calls"
    )
    return {r[0]: r for r in rows}


def test_record_is_committed_before_the_dice_answer(crm_app):
    rt, app, _ = crm_app()
    post(app, ice("r1"))
    post(app, ace("r1"))
    r = post(app, dice("r1", duration=33, timestamp="2024-06-06T17:21:14Z"))
    assert (r.status_int, r.body) == (200, b"")
    columns = (
        "caller",
        "destination",
        "duration",
        "result",
        "started_at",
        "answered_at",
        "ended_at",
        "debit_amount",
        "debit_currency",
        "ice_answer",
        "ice_trace",
    )
    row = rt.store.query(f"SELECT {', '.join(columns)} FROM crm_calls WHERE callid = 'r1'")  # noqa: S608
    assert len(row) == 1
    rec = dict(zip(columns, row[0], strict=True))
    assert (rec["caller"], rec["destination"], rec["duration"], rec["result"]) == (
        "+12015555555",
        "+15612600684",
        33,
        "ANSWERED",
    )
    assert rec["started_at"] and rec["answered_at"] and rec["ended_at"] == "2024-06-06T17:21:14Z"
    assert rec["debit_amount"] == "0.0095" and rec["debit_currency"] == "USD"
    assert json.loads(rec["ice_answer"])["action"]["name"] == "connectPstn"
    assert json.loads(rec["ice_trace"])["decided_by"] == ["router"]
    assert rt.store.query("SELECT COUNT(*) FROM crm_outbox") == [(0,)]  # no webhook: record only


def test_duplicate_dice_records_once(crm_app):
    rt, app, _ = crm_app()
    for _ in range(2):
        post(app, dice("r2"))
    with rt.store.transaction() as tx:  # even past the core's dedupe
        tx.execute("DELETE FROM callbacks WHERE callid = 'r2'")
    post(app, dice("r2"))
    assert rt.store.query("SELECT COUNT(*) FROM crm_calls WHERE callid = 'r2'") == [(1,)]


def test_every_record_arrives_exactly_once_despite_failures(crm_app):
    with FakeCrm(CRM_SECRET, fail_first=4) as crm:
        rt, app, _ = crm_app(webhook_url=crm.url, webhook_secret=CRM_SECRET, **FAST)
        callids = [f"d{i}" for i in range(6)]
        for callid in callids:
            post(app, ice(callid))
            post(app, dice(callid))
        assert wait_for(lambda: len(crm.received) >= len(callids), timeout=10)
        time.sleep(0.3)  # nothing more arrives
        assert sorted(crm.received) == sorted(callids)
        assert crm.bad_signatures == 0
        assert all(r[6] is not None for r in records(rt).values())
        assert rt.store.query("SELECT COUNT(*) FROM crm_outbox") == [(0,)]
        payload = crm.payloads["d0"]
        assert payload["callid"] == "d0" and payload["ice_decision"]["rule"] == "proposal"
        assert payload["ice_answer"]["action"]["name"] == "connectPstn"


def test_dice_answer_never_waits_for_the_crm(crm_app):
    with FakeCrm(CRM_SECRET, delay=1.5) as crm:
        _, app, _ = crm_app(webhook_url=crm.url, webhook_secret=CRM_SECRET, **FAST)
        start = time.monotonic()
        post(app, dice("r3"))
        assert time.monotonic() - start < 0.5
        assert wait_for(lambda: crm.received == ["r3"], timeout=5)


def test_dead_letters_after_max_attempts_then_replay(crm_app, caplog):
    with FakeCrm(CRM_SECRET, fail_first=10**6) as crm:
        rt, app, plugin = crm_app(
            webhook_url=crm.url, webhook_secret=CRM_SECRET, max_attempts=3, **FAST
        )
        post(app, dice("r4"))
        assert wait_for(
            lambda: rt.store.query("SELECT COUNT(*) FROM crm_dead")[0][0] == 1, timeout=10
        )
        dead = rt.store.query("SELECT callid, attempts, last_error FROM crm_dead")
        assert dead == [("r4", 3, "HTTP 503")]
        assert crm.attempts == 3 and crm.received == []
        crm.fail_first = 0  # the CRM is back
        assert plugin.replay("r4") == ["r4"]
        assert wait_for(lambda: crm.received == ["r4"], timeout=5)
        assert rt.store.query("SELECT COUNT(*) FROM crm_dead") == [(0,)]
        assert any("dead letters" in r.getMessage() for r in caplog.records)


def test_replay_all_moves_every_dead_letter_a_batch_per_transaction(crm_app, monkeypatch):
    from plugins.crm import outbox as outbox_mod

    rt, _, plugin = crm_app(max_attempts=3)  # no webhook: nothing is delivered
    callids = sorted(["", *(f"dead-{i:04d}" for i in range(2 * outbox_mod.REPLAY_BATCH + 17))])
    with rt.store.transaction() as tx:
        for callid in callids:
            tx.execute(
                "INSERT INTO crm_dead (callid, payload, attempts, last_error, failed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (callid, "{}", 3, "HTTP 503", 1.0),
            )
    sizes: list[int] = []
    real = rt.store.transaction

    @contextlib.contextmanager
    def counted(*args, **kwargs):
        with real(*args, **kwargs) as tx:
            before = tx.all("SELECT COUNT(*) FROM crm_dead")[0][0]
            yield tx
            sizes.append(before - tx.all("SELECT COUNT(*) FROM crm_dead")[0][0])

    monkeypatch.setattr(rt.store, "transaction", counted)
    moved = plugin.replay()
    monkeypatch.undo()
    assert sorted(moved) == callids
    assert rt.store.query("SELECT COUNT(*) FROM crm_dead") == [(0,)]
    assert rt.store.query("SELECT COUNT(*) FROM crm_outbox") == [(len(callids),)]
    assert max(sizes) <= outbox_mod.REPLAY_BATCH and sum(sizes) == len(callids)
    assert len(sizes) == 3


def test_unreachable_crm_is_retried_with_backoff(crm_app):
    rt, app, plugin = crm_app(
        webhook_url="http://127.0.0.1:9/calls",
        webhook_secret=CRM_SECRET,
        backoff=30,
        poll_interval=0.05,
    )
    post(app, dice("r5"))
    assert wait_for(lambda: rt.store.query("SELECT attempts FROM crm_outbox")[0][0] == 1, timeout=5)
    attempts, due, error = rt.store.query(
        "SELECT attempts, next_attempt_at, last_error FROM crm_outbox"
    )[0]
    assert (
        25 < due - time.time() <= 30 and "Connection refused" in error and CRM_SECRET not in error
    )


def test_webhook_needs_a_secret(backend):
    with pytest.raises(PluginError, match="webhook_url needs webhook_secret"):
        backend.runtime(
            {"crm": Crm()}, plugins={"crm": {"webhook_url": "https://crm.example.com/x"}}
        )


# ---------------------------------------------------------------- CLI


def test_crm_commands(tmp_path, monkeypatch):
    with FakeCrm(CRM_SECRET, fail_first=10**6) as crm:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
            f'[plugins]\nenabled = ["crm"]\n[plugins.crm]\nwebhook_url = "{crm.url}"\nmax_attempts = 1\n'
        )
        env = {"SWITCHBOARD_CRM_SECRET": CRM_SECRET}

        def cli(*args):
            return run_cli(config, *args, env=env)

        for callid in ("x1", "x2"):
            sim = cli(
                "simulate",
                "dice",
                "--in-process",
                "--use-store",
                "--callid",
                callid,
                "--duration",
                "7",
            )
            assert sim.returncode == 0, sim.stderr
        outbox = cli("crm", "outbox")
        assert "x1 attempts=0" in outbox.stdout and "2 record(s) waiting" in outbox.stdout
        # commands never deliver on their own; replay of what is not dead says so
        assert "no dead letter for call 'x1'" in cli("crm", "replay", "x1").stdout
        export = cli("crm", "export", "--format", "jsonl")
        lines = [json.loads(line) for line in export.stdout.splitlines()]
        assert [(r["callid"], r["duration"]) for r in lines] == [("x1", 7), ("x2", 7)]
        csv_out = cli(
            "crm", "export", "--format", "csv", "--since", "2000-01-01T00:00:00Z"
        ).stdout.splitlines()
        assert csv_out[0].startswith("callid,caller,destination") and len(csv_out) == 3
        assert cli("crm", "export", "--since", "2999-01-01").stdout == ""
        assert "must be an ISO-8601 time" in cli("crm", "export", "--since", "soon").stdout
        # the server's worker meets a failing CRM: with max_attempts = 1 both go dead
        from core import config as cfg
        from core.runtime import Runtime

        monkeypatch.setenv("SWITCHBOARD_CRM_SECRET", CRM_SECRET)
        settings = cfg.load(config)
        with Runtime.build(settings) as rt:
            rt.start(serving=False)
            plugin = rt.plugins.pm.get_plugin("crm")
            assert plugin.drain() == 2
        dead = cli("crm", "dead")
        assert "x1 attempts=1" in dead.stdout and "last_error=HTTP 503" in dead.stdout
        assert "2 dead letter(s)" in dead.stdout
        crm.fail_first = 0
        replay = cli("crm", "replay")
        assert replay.returncode == 0 and "2 of 2 delivered" in replay.stdout
        assert sorted(crm.received) == ["x1", "x2"]
        assert "0 dead letter(s)" in cli("crm", "dead").stdout
        assert "0 record(s) waiting" in cli("crm", "outbox").stdout
