"""The whole pipeline in-process through WebTest: events, errors, duplicates, failures."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from core.app import make_app
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.svaml import ConnectConf, ConnectPstn, Say

from tests.helpers import (
    CREDENTIAL,
    PATH,
    SECRET,
    Fixed,
    Hanging,
    Raising,
    Recorder,
    ace,
    body_of,
    dice,
    ice,
    notify,
    pie,
    post,
    signed,
    table_counts,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("backend")

PSTN = ConnectPstn(number="+15612600684", max_duration=600)


def _trace(rt, callid, event):
    rows = [r for r in rt.store.traces(callid) if r["event"] == event]
    assert len(rows) == 1
    return json.loads(rows[0]["trace"])


# ------------------------------------------------------------------ every event type


def test_every_event_type_is_answered(make):
    rt, app = make({"router": Fixed(Decision.propose(PSTN))})
    r = post(app, ice("c1"))
    assert r.content_type == "application/json"
    assert r.json == {
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 600}
    }
    assert post(app, ace("c1")).json == {"action": {"name": "continue"}}
    assert post(app, pie("c1")).json == {"action": {"name": "continue"}}
    for event in (dice("c1"), notify("c1")):
        r = post(app, event)
        assert r.status_int == 200 and r.body == b""
    assert [row["event"] for row in rt.store.traces("c1")] == [
        "ice",
        "ace",
        "pie",
        "dice",
        "notify",
    ]


def test_ice_without_plugins_follows_the_configured_default(make):
    _, app = make()
    assert post(app, ice()).json == {"action": {"name": "hangup"}}
    _, app = make(policy={"ice_default": "connect"})
    assert post(app, ice()).json == {"action": {"name": "connectPstn"}}


def test_decision_is_merged_and_traced(make):
    rt, app = make(
        {
            "vip": Fixed(Decision.propose(PSTN, "vip caller", instructions=[Say(text="Welcome")])),
            "credit": Fixed(Decision.cap(120, "balance buys 2 min")),
            "conf": Fixed(Decision.propose(ConnectConf(conference_id="x"))),
            "quiet": Fixed(None),
        }
    )
    r = post(app, ice("c2"))
    assert r.json == {
        "instructions": [{"name": "say", "text": "Welcome"}],
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 120},
    }
    trace = _trace(rt, "c2", "ice")
    assert trace["rule"] == "proposal" and trace["decided_by"] == ["vip"]
    assert [p["plugin"] for p in trace["plugins"]] == ["vip", "credit", "conf", "quiet"]
    assert [p["status"] for p in trace["plugins"]] == ["decided", "decided", "decided", "abstained"]
    assert trace["plugins"][1]["decision"] == {
        "kind": "cap",
        "reason": "balance buys 2 min",
        "max_duration": 120,
    }
    assert all(p["ms"] >= 0 for p in trace["plugins"])
    assert trace["conflicts"] == [
        {
            "plugin": "conf",
            "proposed": {"name": "connectConf", "conferenceId": "x"},
            "lost_to": "vip",
        }
    ]
    assert trace["answer"] == r.json and trace["elapsed_ms"] > 0


def test_illegal_merged_answer_is_never_sent(make):
    rt, app = make({"bad": Fixed(Decision.propose(PSTN), events=("ace",))})
    r = post(app, ace("c3"))
    assert r.json == {"action": {"name": "continue"}}  # the configured ACE fallback
    trace = _trace(rt, "c3", "ace")
    assert trace["rule"] == "invalid-answer"
    assert "not allowed in an ACE answer" in trace["notes"][0]


def test_configured_fallback_is_used(make):
    fallback = {
        "ace": {"instructions": [{"name": "say", "text": "Goodbye"}], "action": {"name": "hangup"}}
    }
    _, app = make(
        {"bad": Fixed(Decision.propose(PSTN), events=("ace",))}, policy={"fallback": fallback}
    )
    assert post(app, ace("c4")).json == fallback["ace"]


# ------------------------------------------------------------------ bad input changes nothing


def _bad_requests():
    good = body_of(ice("bad-1"))
    _, headers = signed(good)
    yield (
        "missing signature",
        401,
        good,
        {"Content-Type": headers["Content-Type"], "x-timestamp": headers["x-timestamp"]},
    )
    yield (
        "bad signature",
        401,
        good,
        {**headers, "Authorization": headers["Authorization"][:-4] + "AAA="},
    )
    yield "tampered body", 401, good.replace(b"15612600684", b"19005550100"), headers
    yield "stale timestamp", 401, *signed(good, timestamp="2024-06-06T17:20:14.1234567Z")
    yield "wrong path signed", 401, *signed(good, path="/other")
    yield "no timestamp", 401, good, {k: v for k, v in headers.items() if k != "x-timestamp"}
    yield "not json", 400, *signed(b"{not json")
    yield "missing event", 400, *signed({"callid": "bad-1"})
    yield "unknown event", 400, *signed({"event": "ring", "callid": "bad-1"})
    yield "wrong type", 400, *signed({"event": "ice", "callid": "bad-1", "to": "+15612600684"})
    yield "array body", 400, *signed(b"[]")
    yield "wrong content type", 415, good, {**headers, "Content-Type": "text/plain"}
    yield "too large", 413, *signed(ice("bad-1", padding="x" * 70000))


@pytest.mark.parametrize(
    ("case", "status", "body", "headers"),
    list(_bad_requests()),
    ids=[c[0] for c in _bad_requests()],
)
def test_bad_input_gets_its_status_and_changes_nothing(make, case, status, body, headers):
    recorder = Recorder()
    rt, app = make({"rec": recorder})
    before = table_counts(rt.store)
    r = app.post(PATH, body, headers=headers, status=status)
    assert r.content_type == "application/json"
    error = r.json["error"]
    assert error and SECRET not in r.text and CREDENTIAL.key not in error
    assert table_counts(rt.store) == before
    assert recorder.seen == []


def test_errors_name_the_problem(make):
    _, app = make()
    r = post(app, {"event": "ice", "callid": "x", "to": {"endpoint": 5}}, status=400)
    assert r.json == {"error": "field 'to.endpoint' must be a string", "field": "to.endpoint"}
    body, headers = signed(ice(), timestamp="2020-01-01T00:00:00Z")
    assert (
        "outside the accepted window"
        in app.post(PATH, body, headers=headers, status=401).json["error"]
    )
    assert (
        app.post(PATH, body, headers={**headers, "Content-Type": "text/xml"}, status=415).json[
            "error"
        ]
        == "Content-Type must be application/json, got text/xml"
    )


def test_wrong_method_and_unknown_path(make):
    rt, app = make()
    before = table_counts(rt.store)
    assert app.get(PATH, status=405).json["error"].startswith("method GET not allowed")
    assert app.put(PATH, b"{}", status=405).status_int == 405
    assert app.post("/elsewhere", b"{}", status=404).json["error"] == "no such path: /elsewhere"
    assert table_counts(rt.store) == before


def test_size_limit_is_configurable(make):
    _, app = make(server={"max_body_bytes": 300})
    assert post(app, ice(), status=413).json["error"].startswith("body of")
    _, app = make(server={"max_body_bytes": 1000})
    assert post(app, ice()).status_int == 200


def test_healthz(make):
    _, app = make()
    assert app.get("/healthz").json == {"status": "ok"}


# ------------------------------------------------------------------ duplicates


def test_duplicate_ice_gets_the_same_answer_and_no_second_decision(make):
    counter = Fixed(Decision.propose(PSTN))
    _, app = make({"router": counter})
    body, headers = signed(ice("dup-1"))
    first = app.post(PATH, body, headers=headers)
    counter.decision = Decision.denied("changed my mind")
    second = app.post(PATH, body, headers=headers)
    assert second.body == first.body
    assert counter.calls == ["ice"]


def test_duplicate_dice_runs_observers_once(make):
    recorder = Recorder()
    rt, app = make({"rec": recorder})
    for _ in range(3):
        assert post(app, dice("dup-2")).body == b""
    assert [s for s in recorder.seen if s[0] == "dice"] == [("dice", "dup-2")]
    assert len(rt.store.traces("dup-2")) == 1


def test_distinct_pies_of_one_call_are_not_duplicates(make):
    counter = Fixed(None, events=("pie",))
    _, app = make({"menu": counter})
    post(app, pie("c5", "1"))
    post(app, pie("c5", "2"))
    post(app, pie("c5", "2"))  # a redelivery of the second
    assert counter.calls == ["pie", "pie"]


# ------------------------------------------------------------------ failing plugins


def test_raising_plugin_fails_closed_by_default(make):
    rt, app = make({"boom": Raising(), "router": Fixed(Decision.propose(PSTN))})
    assert post(app, ice("c6")).json == {"action": {"name": "hangup"}}
    trace = _trace(rt, "c6", "ice")
    boom = trace["plugins"][0]
    assert boom["status"] == "error" and boom["on_error"] == "deny"
    assert boom["error"] == "RuntimeError: database exploded"
    assert trace["plugins"][1]["status"] == "decided"


def test_raising_plugin_with_abstain_does_not_take_others_down(make):
    rt, app = make(
        {"boom": Raising(), "router": Fixed(Decision.propose(PSTN))},
        plugins={"boom": {"on_error": "abstain"}},
    )
    assert post(app, ice("c7")).json["action"]["name"] == "connectPstn"
    assert _trace(rt, "c7", "ice")["plugins"][0]["on_error"] == "abstain"


def test_plugin_returning_garbage_is_an_error(make):
    class Garbage:
        @hookimpl
        def switchboard_ice(self):
            return {"action": {"name": "connectPstn"}}

    rt, app = make({"garbage": Garbage()})
    assert post(app, ice("c8")).json == {"action": {"name": "hangup"}}
    assert (
        _trace(rt, "c8", "ice")["plugins"][0]["error"] == "returned dict, expected Decision or None"
    )


def test_hanging_plugin_past_the_budget_gets_the_fallback_in_time(make):
    stuck = Hanging()
    try:
        rt, app = make(
            {"stuck": stuck, "router": Fixed(Decision.propose(PSTN))},
            policy={"budget": 0.5},
            plugins={"stuck": {"timeout": 0.5}},
        )
        start = time.monotonic()
        r = post(app, ice("c9"))
        elapsed = time.monotonic() - start
        assert r.json == {"action": {"name": "hangup"}}
        assert elapsed <= 0.5 * 1.1, elapsed
        trace = _trace(rt, "c9", "ice")
        assert trace["rule"] == "budget"
        assert trace["plugins"][0]["status"] == "timeout"
    finally:
        stuck.release.set()


def test_hanging_plugin_is_cut_at_its_timeout_and_others_merge(make):
    stuck = Hanging()
    try:
        rt, app = make(
            {"stuck": stuck, "router": Fixed(Decision.propose(PSTN))},
            policy={"budget": 0.5},
            plugins={"stuck": {"on_error": "abstain"}},
        )
        start = time.monotonic()
        r = post(app, ice("c10"))
        elapsed = time.monotonic() - start
        assert r.json["action"]["name"] == "connectPstn"
        assert 0.3 <= elapsed <= 0.55, elapsed  # default timeout: 3/4 of the budget
        stuck_entry = _trace(rt, "c10", "ice")["plugins"][0]
        assert (stuck_entry["status"], stuck_entry["on_error"]) == ("timeout", "abstain")
    finally:
        stuck.release.set()


def test_observer_errors_never_change_the_answer(make):
    class BadObserver:
        @hookimpl
        def switchboard_dice(self, event):
            raise ValueError("crm down")

    rt, app = make({"bad": BadObserver()})
    r = post(app, dice("c11"))
    assert (r.status_int, r.body) == (200, b"")
    entry = _trace(rt, "c11", "dice")["plugins"][0]
    assert entry["status"] == "error" and entry["error"] == "ValueError: crm down"


# ------------------------------------------------------------------ observers and order


def test_hooks_fire_in_call_order_with_after_answer(make):
    recorder = Recorder()
    rt, app = make({"rec": recorder})
    for event in (ice("c12"), ace("c12"), dice("c12")):
        post(app, event)
        rt.pipeline.wait_idle()
    assert recorder.seen == [
        ("ice", "c12"),
        ("after_answer:ice", "c12"),
        ("ace", "c12"),
        ("after_answer:ace", "c12"),
        ("dice", "c12"),
        ("after_answer:dice", "c12"),
    ]


def test_after_answer_sees_the_answer_and_trace(make):
    got = []

    class Watcher:
        @hookimpl
        def switchboard_after_answer(self, event, answer, trace):
            got.append((event.name, answer, trace.rule))

    _, app = make({"watch": Watcher(), "router": Fixed(Decision.propose(PSTN))})
    post(app, ice("c13"))
    assert wait_for(lambda: got)
    name, answer, rule = got[0]
    assert (name, answer["action"]["name"], rule) == ("ice", "connectPstn", "proposal")
    with pytest.raises(TypeError):
        answer["action"] = {}


def test_after_answer_runs_once_the_answer_is_sent_on_a_real_server(backend):
    """The observer blocks until the client holds its answer: were the answer sent
    after the observers, the client would wait the observer's full 5 s for it."""
    import http.client

    import waitress

    released = threading.Event()
    observed = []

    class Blocking:
        @hookimpl
        def switchboard_after_answer(self, event, answer, trace):
            observed.append(("waited", released.wait(5)))

    rt = backend.runtime({"block": Blocking(), "router": Fixed(Decision.propose(PSTN))})
    rt.start()
    server = waitress.create_server(make_app(rt), host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        body, headers = signed(ice("c-sent"))
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
        conn.request("POST", PATH, body, headers)
        reply = conn.getresponse()
        answer = json.loads(reply.read())
        assert reply.status == 200 and answer["action"]["name"] == "connectPstn"
        assert observed == []  # the observer is still waiting: the answer came first
        released.set()
        assert wait_for(lambda: observed == [("waited", True)])
        conn.close()
    finally:
        server.close()
        rt.close()


def test_a_slow_after_answer_observer_moves_to_the_worker_pool(make, caplog):
    threads = []

    class Slow:
        @hookimpl
        def switchboard_after_answer(self, event, answer, trace):
            threads.append(threading.current_thread().name)
            time.sleep(0.05)

    rt, app = make({"slow": Slow(), "router": Fixed(Decision.propose(PSTN))})
    with caplog.at_level(logging.WARNING, logger="switchboard.plugin.slow"):
        post(app, ice("c-slow-1"))
        post(app, ice("c-slow-2"))
        rt.pipeline.wait_idle()
    first, second = threads
    assert not first.startswith("switchboard-hook")  # ran on the request's thread
    assert second.startswith("switchboard-hook")  # then in the pool
    assert "runs in the worker pool from now on" in caplog.text


def test_a_callback_is_in_flight_until_its_after_answer_observers_are_done(make):
    """A reload or shutdown waits for in-flight callbacks before closing the store;
    an observer running after the answer still counts."""
    seen = []

    class Counting:
        @hookimpl
        def switchboard_after_answer(self, event, answer, trace):
            seen.append(rt.inflight)

    rt, app = make({"count": Counting(), "router": Fixed(Decision.propose(PSTN))})
    post(app, ice("c-inflight"))
    assert seen == [1] and rt.inflight == 0


def test_plugin_context(make):
    seen = {}

    class Ctx:
        @hookimpl
        def switchboard_ice(self, event, ctx):
            seen.update(
                callid=ctx.callid,
                event=ctx.event,
                plugin=ctx.plugin,
                remaining=ctx.remaining(),
                config=dict(ctx.config),
                store=ctx.store,
                log=ctx.log.name,
            )

    rt, app = make({"ctx": Ctx()}, plugins={"ctx": {"on_error": "abstain"}})
    post(app, ice("c14"))
    assert seen["callid"] == "c14" and seen["event"] == "ice" and seen["plugin"] == "ctx"
    assert 0 < seen["remaining"] <= 2.0
    assert seen["config"] == {"on_error": "abstain", "timeout": None}
    assert seen["store"] is rt.store and seen["log"] == "switchboard.plugin.ctx"


# ------------------------------------------------------------------ security settings


def test_public_path_prefix_is_part_of_the_signed_path(make):
    _, app = make(server={"public_path_prefix": "/voice"})
    body, headers = signed(ice(), path="/voice/sinch/callback")
    assert app.post(PATH, body, headers=headers).json == {"action": {"name": "hangup"}}
    body, headers = signed(ice(), path=PATH)
    app.post(PATH, body, headers=headers, status=401)


def test_insecure_mode_must_be_explicit_and_warns(make, caplog):
    with caplog.at_level(logging.WARNING, logger="switchboard"):
        _, app = make(sinch={"insecure": True, "keys": []})
    assert any("INSECURE" in r.getMessage() for r in caplog.records)
    r = app.post(PATH, body_of(ice()), headers={"Content-Type": "application/json"})
    assert r.json == {"action": {"name": "hangup"}}


def test_one_structured_log_line_per_callback_without_secrets(make, caplog):
    _, app = make({"router": Fixed(Decision.propose(PSTN))})
    with caplog.at_level(logging.INFO, logger="switchboard.callback"):
        post(app, ice("c15"))
        post(app, ice("c15"), timestamp="2000-01-01T00:00:00Z", status=401)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "switchboard.callback"]
    assert len(lines) == 2
    ok, rejected = lines
    assert (ok["callid"], ok["event"], ok["outcome"], ok["rule"]) == (
        "c15",
        "ice",
        "connectPstn",
        "proposal",
    )
    assert ok["plugins"]["router"].startswith("decided:") and ok["latency_ms"] >= 0
    assert (rejected["status"], rejected["reason"]) == (401, "stale")
    text = caplog.text
    assert SECRET not in text and "Authorization" not in text


class Slow:
    """Takes its time, then decides (a slow but healthy plugin)."""

    def __init__(self, seconds: float, decision: Decision) -> None:
        self.seconds, self.decision = seconds, decision
        self.thread: str | None = None

    @hookimpl
    def switchboard_ice(self, event):
        self.thread = threading.current_thread().name
        time.sleep(self.seconds)
        return self.decision


def test_fast_hooks_share_one_worker(make):
    first, second = Slow(0, Decision.cap(300)), Slow(0, Decision.propose(PSTN))
    _, app = make({"first": first, "second": second})
    assert post(app, ice("seq-1")).json["action"]["maxDuration"] == 300
    assert first.thread == second.thread  # one hand-off for both


def test_slow_hooks_fan_out_and_still_merge(make):
    plugins = {f"slow{i}": Slow(0.3, Decision.cap(100 + i)) for i in range(3)}
    plugins["router"] = Slow(0, Decision.propose(PSTN))
    rt, app = make(plugins, policy={"budget": 1.0})
    start = time.monotonic()
    r = post(app, ice("seq-2"))
    elapsed = time.monotonic() - start
    assert r.json["action"]["maxDuration"] == 100  # every decision merged, none cut
    assert elapsed < 0.75, elapsed  # in parallel after the first was slow, not 0.9 s in a row
    statuses = [p["status"] for p in json.loads(rt.store.traces("seq-2")[0]["trace"])["plugins"]]
    assert statuses == ["decided"] * 4


def test_building_the_app_has_no_side_effects(backend):
    """make_app only builds: the runner starts the runtime (migrations, start-up hooks)."""
    started: list[bool] = []

    class Starter:
        @hookimpl
        def switchboard_startup(self, serving):
            started.append(serving)

    rt = backend.runtime({"starter": Starter()})
    with pytest.raises(RuntimeError, match="runtime.start"):
        make_app(rt)
    assert started == [] and "callbacks" not in rt.store.tables()
    rt.start()
    make_app(rt)
    assert started == [True]
    rt.close()


def test_a_guard_that_raises_systemexit_fails_closed(make):
    """A hook that raises a BaseException (SystemExit, KeyboardInterrupt) is a failure
    like any other: its on_error (deny by default) applies, the call is not connected."""

    class Bailing:
        @hookimpl
        def switchboard_ice(self, event):
            raise SystemExit(1)

    rt, app = make({"guard": Bailing(), "router": Fixed(Decision.propose(PSTN))})
    assert post(app, ice("c-exit")).json["action"]["name"] == "hangup"
    trace = json.loads([r for r in rt.store.traces("c-exit") if r["event"] == "ice"][0]["trace"])
    assert trace["plugins"][0]["status"] == "error" and "SystemExit" in trace["plugins"][0]["error"]
