"""The hook scheduler (core/dispatch.py), sentence by sentence of its docstring."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from core import CallContext
from core.dispatch import FAN_OUT_AFTER, Call, Running, dispatch
from core.store import SqliteStore
from tests.helpers import ice


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(str(tmp_path / "d.db"))
    yield s
    s.close()


@pytest.fixture
def pool():
    ex = ThreadPoolExecutor(max_workers=8)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def make_call(store, fn, *, plugin: str = "p", timeout: float = 1.0, running=None) -> Call:
    ctx = CallContext(
        callid="c1",
        event="ice",
        plugin=plugin,
        config={},
        store=store,
        deadline=time.monotonic() + 5,
        log=logging.getLogger("test"),
        attempt=1,
    )
    return Call(fn, plugin, ice("c1"), ctx, timeout, running or Running(4))


def sleeper(seconds: float, log: list[str], name: str):
    def hook(event: Any, ctx: CallContext) -> str:
        log.append(f"start {name} {threading.current_thread().name}")
        time.sleep(seconds)
        return name

    return hook


def test_quick_hooks_run_in_order_in_one_worker(store, pool):
    log: list[str] = []
    calls = [make_call(store, sleeper(0, log, n), plugin=n) for n in "abc"]
    dispatch(pool, calls, time.monotonic() + 1)
    assert [c.status for c in calls] == ["done"] * 3
    assert [c.value for c in calls] == ["a", "b", "c"]
    assert [line.split()[1] for line in log] == ["a", "b", "c"]
    assert len({line.split()[2] for line in log}) == 1  # one thread hand-off for the lot


def test_a_slow_hook_delays_the_others_by_the_fan_out_delay_at_most(store, pool):
    log: list[str] = []
    began = time.monotonic()
    seen: dict[str, float] = {}

    def quick(name):
        def hook(event, ctx):
            seen[name] = time.monotonic() - began
            return name

        return hook

    calls = [
        make_call(store, sleeper(0.5, log, "slow"), plugin="slow"),
        make_call(store, quick("b"), plugin="b"),
        make_call(store, quick("c"), plugin="c"),
    ]
    dispatch(pool, calls, time.monotonic() + 2)
    assert [c.status for c in calls] == ["done"] * 3
    assert seen["b"] < FAN_OUT_AFTER + 0.2 and seen["c"] < FAN_OUT_AFTER + 0.2
    assert calls[1].value == "b" and calls[2].value == "c"


def test_each_hook_runs_once_even_when_fanned_out(store, pool):
    runs: list[str] = []

    def counted(name, pause):
        def hook(event, ctx):
            runs.append(name)
            time.sleep(pause)

        return hook

    calls = [make_call(store, counted(n, 0.03), plugin=n) for n in "abcde"]
    dispatch(pool, calls, time.monotonic() + 2)
    time.sleep(0.2)  # let the in-order worker reach the end of its list
    assert sorted(runs) == list("abcde")


def test_a_hook_past_its_timeout_is_abandoned_and_its_result_ignored(store, pool):
    release = threading.Event()

    def hang(event, ctx):
        release.wait(2)
        return "late"

    call = make_call(store, hang, timeout=0.1)
    began = time.monotonic()
    dispatch(pool, [call], time.monotonic() + 2)
    assert call.status == "timeout"
    assert 0.09 < time.monotonic() - began < 0.5
    release.set()
    assert call.done.wait(1)
    time.sleep(0.05)
    assert call.status == "timeout"  # what it returned later changes nothing


def test_the_cutoff_ends_every_wait(store, pool):
    calls = [make_call(store, sleeper(1, [], n), plugin=n, timeout=5) for n in "ab"]
    began = time.monotonic()
    dispatch(pool, calls, time.monotonic() + 0.15)
    assert time.monotonic() - began < 0.5
    assert [c.status for c in calls] == ["timeout", "timeout"]


def test_a_hook_not_started_by_then_is_never_run(store):
    one = ThreadPoolExecutor(max_workers=1)
    blocker = threading.Event()
    one.submit(blocker.wait, 2)  # the only worker is busy
    ran: list[str] = []
    call = make_call(store, lambda event, ctx: ran.append("ran"), timeout=0.1)
    dispatch(one, [call], time.monotonic() + 1)
    assert call.status == "not-started"
    blocker.set()
    one.shutdown(wait=True)
    assert ran == []


def test_a_plugin_never_holds_more_than_its_limit_of_workers(store, pool):
    running = Running(1)
    release = threading.Event()
    first = make_call(store, lambda event, ctx: release.wait(2), plugin="p", running=running)
    pool.submit(first.run)
    deadline = time.monotonic() + 1
    while running.count("p") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    second = make_call(store, lambda event, ctx: "ran", plugin="p", running=running)
    dispatch(pool, [second], time.monotonic() + 1)
    assert second.status == "saturated" and second.value is None
    release.set()
    assert first.done.wait(1) and running.count("p") == 0


def test_an_error_is_the_hooks_outcome(store, pool):
    def boom(event, ctx):
        raise RuntimeError("no")

    call = make_call(store, boom)
    dispatch(pool, [call], time.monotonic() + 1)
    assert call.status == "done" and isinstance(call.error, RuntimeError)


def test_an_abandoned_hooks_commits_are_flushed_by_its_worker(store, pool):
    store.write("CREATE TABLE t (x INTEGER)")
    release = threading.Event()

    def writes_late(event, ctx):
        release.wait(2)
        ctx.store.write("INSERT INTO t VALUES (1)")

    call = make_call(store, writes_late, timeout=0.05)
    dispatch(pool, [call], time.monotonic() + 1)
    assert call.status == "timeout"
    flushed: list[int] = []
    real_flush = store.flush
    store.flush = lambda seq: (flushed.append(seq), real_flush(seq))  # type: ignore[method-assign]
    release.set()
    assert call.done.wait(1)
    time.sleep(0.05)
    assert flushed and flushed[-1] == call.seq > 0
    assert store.query("SELECT count(*) FROM t") == [(1,)]


def test_a_plugins_log_lines_name_the_call_they_are_about():
    """The call id is bound while a hook runs (on a hook worker) and while the core
    handles the callback, so plugin and core log lines carry it without saying so."""
    from core import hookimpl
    from core.logs import CallidFilter
    from tests.helpers import post, runtime, webapp

    class Talker:
        @hookimpl
        def switchboard_ice(self, event, ctx):
            ctx.log.warning("deciding")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(CallidFilter())
    logger = logging.getLogger("switchboard.plugin.talker")
    logger.addHandler(handler)
    try:
        rt = runtime({"talker": Talker()})
        post(webapp(rt), ice("c-logged"))
        rt.close()
    finally:
        logger.removeHandler(handler)
    assert [(r.getMessage(), r.callid) for r in records] == [("deciding", "c-logged")]
    assert threading.current_thread().name not in {r.threadName for r in records}


def test_a_hook_timeout_under_the_fan_out_delay_fans_out_sooner(store, pool):
    """A slow hook with a 10 ms timeout does not starve the next one, whose timeout is
    15 ms: the fan-out comes at the shortest timeout, and when a hook is given up on."""
    calls = [
        make_call(store, sleeper(0.3, [], "slow"), plugin="slow", timeout=0.01),
        make_call(store, lambda event, ctx: "routed", plugin="router", timeout=0.015),
    ]
    dispatch(pool, calls, time.monotonic() + 1)
    assert calls[0].status == "timeout"
    assert (calls[1].status, calls[1].value) == ("done", "routed")


def test_a_hook_raising_systemexit_is_a_failure_not_a_success(store, pool):
    def bail(event, ctx):
        raise SystemExit(3)

    call = make_call(store, bail)
    dispatch(pool, [call], time.monotonic() + 1)
    assert call.status == "done" and isinstance(call.error, SystemExit)
