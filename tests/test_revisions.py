"""Configuration revisions, recorded callback bodies and their retention (core.revisions,
Store.purge, ``serve.py revisions`` and ``serve.py purge``)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from core import revisions
from core.config import parse
from core.store import open_store
from tests.conftest import run_cli
from tests.helpers import KEY, SECRET, ace, dice, ice, settings, wait_for

pytestmark = pytest.mark.usefixtures("backend")


def _config(backend, tmp_path, allow: str, extra: str = "") -> str:
    return (
        f'[server]\nport = 0\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "{backend.url(tmp_path, "rev")}"\n{extra}'
        f'[plugins]\nenabled = ["allowlist"]\n[plugins.allowlist]\nallow = ["{allow}"]\n'
    )


def test_a_revision_is_a_digest_of_the_policy_not_of_where_it_listens():
    base = {"sinch": {"insecure": True}, "plugins": {"enabled": []}}
    one = revisions.policy_content(parse(base, env={}))
    moved = revisions.policy_content(
        parse({**base, "server": {"port": 9999, "threads": 3}}, env={})
    )
    stricter = revisions.policy_content(parse({**base, "policy": {"budget": 1.5}}, env={}))
    assert revisions.revision_of(one) == revisions.revision_of(moved)
    assert revisions.revision_of(one) != revisions.revision_of(stricter)
    assert len(revisions.revision_of(one)) == 12
    assert revisions.differences(one, stricter) == ["policy.budget: 2.0 -> 1.5"]


def test_a_revision_names_no_secret():
    secret_settings = settings(sinch={"keys": [{"key": KEY, "secret": SECRET}]})
    text = revisions.canonical(revisions.policy_content(secret_settings))
    assert SECRET not in text and KEY in text


def test_two_reloads_give_two_revisions_and_each_trace_names_its_own(serve, tmp_path, backend):
    server = serve(_config(backend, tmp_path, "+15612600684"), name="rev")
    assert server.post(ice("before", to="+15612600684"))[0] == 200
    first = json.loads(run_cli(server.config, "revisions", "--json").stdout)
    assert [x["how"] for x in first["loads"]] == ["start"]
    started = first["loads"][0]["revision"]
    assert first["file"]["revision"] == started

    revs = [started]
    for n, allow in enumerate(("+14155550000", "+442079460000")):
        server.config.write_text(_config(backend, tmp_path, allow))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda n=n: server.log.count("reloaded") == n + 1, timeout=10)
        assert server.post(ice(f"after{n}", to=allow))[0] == 200
        now = json.loads(run_cli(server.config, "revisions", "--json").stdout)
        revs.append(now["loads"][0]["revision"])
        assert now["loads"][0]["how"] == "reload" and now["file"]["revision"] == revs[-1]
    assert len(set(revs)) == 3

    for callid, revision in zip(("before", "after0", "after1"), revs, strict=True):
        out = json.loads(run_cli(server.config, "trace", callid, "--json").stdout)
        (callback,) = out["callbacks"]
        assert callback["trace"]["revision"] == revision, callid

    diff = run_cli(server.config, "revisions", revs[0], revs[2][:6])
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines() == [
        'plugins.allowlist.allow: ["+15612600684"] -> ["+442079460000"]'
    ]
    shown = json.loads(run_cli(server.config, "revisions", revs[1]).stdout)
    assert shown["plugins"]["allowlist"]["allow"] == ["+14155550000"]
    assert SECRET not in run_cli(server.config, "revisions", revs[1]).stdout
    unknown = run_cli(server.config, "revisions", "abcdef")
    assert unknown.returncode == 2 and "no revision 'abcdef'" in unknown.stderr
    bad = run_cli(server.config, "revisions", "not-hex")
    assert bad.returncode == 2 and "not a revision id" in bad.stderr
    assert server.stop() == 0


def test_every_callback_body_is_kept_with_its_answer(serve, tmp_path, backend):
    server = serve(_config(backend, tmp_path, "+15612600684"), name="rev")
    sent = {"ice": ice("kept"), "ace": ace("kept"), "dice": dice("kept")}
    for body in sent.values():
        assert server.post(body)[0] == 200
    server.stop()
    store = open_store(backend.url(tmp_path, "rev"), tmp_path)
    try:
        rows = store.query(
            "SELECT event, body, answer FROM callbacks WHERE callid = 'kept' ORDER BY received_at"
        )
    finally:
        store.close()
    assert [(event, json.loads(body)) for event, body, _ in rows] == [
        (name, body) for name, body in sent.items()
    ]
    assert json.loads(rows[0][2])["action"]["name"] == "connectPstn"


def test_purge_deletes_what_is_past_retention_and_keeps_waiting_work(tmp_path, backend):
    rt = backend.runtime()
    rt.start(serving=False)
    store = rt.store
    old, recent = time.time() - 40 * 86400, time.time() - 86400
    for n, at in enumerate((old, old, recent)):
        store.claim(f"c{n}", "ice", "", lease=5, now=at, body="{}")
        store.finish(f"c{n}", "ice", "", "{}", "{}", "hangup")
    store.claim("c0", "dice", "", lease=5, now=old, body="{}")  # still waiting: kept
    store.claim("c9", "dice", "", lease=5, now=old, body="{}")
    store.postpone(
        "c9", "dice", "", attempts=1, done=[], error="x", retry_at=old, park=True, trace="{}"
    )
    assert store.purge(time.time() - 30 * 86400, batch=1) == 2
    left = store.query("SELECT callid, event FROM callbacks ORDER BY callid, event")
    assert left == [("c0", "dice"), ("c2", "ice"), ("c9", "dice")]
    assert store.purge(time.time() - 30 * 86400) == 0


def test_purge_command(serve, tmp_path, backend):
    server = serve(
        _config(backend, tmp_path, "+15612600684", "retention_days = 0.00001\n"), name="rev"
    )
    assert server.post(ice("short-lived"))[0] == 200
    server.stop()
    time.sleep(1.0)  # past 0.864 s of retention
    out = run_cli(server.config, "purge")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "purged 1 recorded callback(s) older than 1e-05 days"
    assert "no callbacks recorded" in run_cli(server.config, "trace", "short-lived").stdout
    bad = run_cli(server.config, "purge", "--older-than", "-1")
    assert bad.returncode == 2 and "--older-than" in bad.stderr


def test_the_retry_worker_purges_hourly_from_five_minutes_after_the_start(backend, monkeypatch):
    from core import retry

    rt = backend.runtime(store={"retention_days": 1})
    rt.start()
    try:
        store, retrier = rt.store, rt.retrier
        assert retrier is not None
        store.claim("old", "ice", "", lease=5, now=time.time() - 2 * 86400, body="{}")
        store.finish("old", "ice", "", "{}", "{}", "hangup")
        store.claim("new", "ice", "", lease=5, body="{}")
        store.finish("new", "ice", "", "{}", "{}", "hangup")
        time.sleep(retry.INTERVAL * 3)  # the worker has looked: not due yet at the start
        assert {c for (c,) in store.query("SELECT callid FROM callbacks")} == {"old", "new"}
        assert retrier.purge_once() == 1
        assert [c for (c,) in store.query("SELECT callid FROM callbacks")] == ["new"]
    finally:
        rt.close()
