"""The decision trace's public schema (core/trace.py): built once, stored as documented,
read back the same, read-only for observers."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from core import Decision, PluginResult, Trace, hookimpl
from core.trace import PLUGIN_STATUSES, frozen
from tests.helpers import Fixed, ice, post, runtime, wait_for, webapp

PSTN_NUMBER = "+46700000001"


def test_a_trace_round_trips_through_its_json_form():
    trace = Trace(
        callid="c1",
        event="ice",
        received_at="2026-11-29T08:00:00.000+00:00",
        rule="proposal",
        plugins=(
            PluginResult("a", "decided", 0.5, frozen({"kind": "propose", "rank": [1, {"x": 2}]})),
            PluginResult("b", "timeout", 1500.0, error="still running", on_error="abstain"),
        ),
        decided_by=("a",),
        capped_by="b",
        conflicts=frozen([{"field": "maxDuration", "plugins": ["a", "b"]}]),
        notes=("one",),
        answer=frozen({"action": {"name": "hangup"}}),
        elapsed_ms=3.25,
        attempt=2,
    )
    text = trace.to_json()
    assert Trace.from_json(text) == trace
    data = json.loads(text)
    assert data["plugins"][1] == {
        "plugin": "b",
        "status": "timeout",
        "ms": 1500.0,
        "error": "still running",
        "on_error": "abstain",
    }
    assert data["attempt"] == 2 and data["answer"] == {"action": {"name": "hangup"}}
    assert trace.plugin("b").status == "timeout"
    with pytest.raises(KeyError):
        trace.plugin("nobody")


def test_every_status_the_pipeline_writes_is_documented():
    assert {"decided", "abstained", "ok", "error", "timeout", "not-started"} <= set(
        PLUGIN_STATUSES
    )


def test_the_stored_trace_is_the_one_observers_get_and_they_cannot_change_it():
    seen: list[Trace] = []

    class Watcher:
        @hookimpl
        def switchboard_after_answer(self, event, answer, trace):
            seen.append(trace)

    from core import ConnectPstn

    router = Fixed(Decision.propose(ConnectPstn(number=PSTN_NUMBER)))
    rt = runtime({"watch": Watcher(), "router": router})
    app = webapp(rt)
    post(app, ice("t1"))
    assert wait_for(lambda: seen)
    got = seen[0]
    assert isinstance(got, Trace) and got.rule == "proposal"
    assert got.plugin("router").status == "decided"
    stored = [r for r in rt.store.traces("t1") if r["event"] == "ice"][0]["trace"]
    mine = json.loads(got.to_json())
    theirs = json.loads(stored)
    mine.pop("elapsed_ms"), theirs.pop("elapsed_ms")
    assert mine == theirs
    assert isinstance(got.answer, MappingProxyType)
    with pytest.raises(TypeError):
        got.answer["action"] = {}  # type: ignore[index]
    with pytest.raises(AttributeError):
        got.rule = "changed"  # type: ignore[misc]
    rt.close()
