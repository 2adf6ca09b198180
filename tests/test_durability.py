"""A 200 to a DiCE or Notify means it is durably received: its plugins' work is retried
until it succeeds or is parked for an operator; the budget holds when a plugin keeps
hanging (circuit breaker) or the store cannot answer in time."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from typing import Any

import pytest

from core.decisions import Decision
from core.hookspecs import hookimpl
from tests.conftest import run_cli as conftest_run_cli
from tests.helpers import Fixed, Hanging, dice, ice, notify, post, table_counts, wait_for
from tests.test_plugins import make_dist


class Failing:
    """A DiCE/Notify observer that raises for its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[int] = []

    def _work(self, ctx: Any) -> None:
        self.calls.append(ctx.attempt)
        if len(self.calls) <= self.failures:
            raise RuntimeError("database or disk is full")

    @hookimpl
    def switchboard_dice(self, event: Any, ctx: Any) -> None:
        self._work(ctx)

    @hookimpl
    def switchboard_notify(self, event: Any, ctx: Any) -> None:
        self._work(ctx)


def metric(app: Any, line: str) -> bool:
    return line in app.get("/metrics").text


def test_failed_dice_work_is_retried_until_it_succeeds(make, backend):
    flaky, steady = Failing(2), Failing(0)
    rt, app = make({"steady": steady, "flaky": flaky}, policy={"retry_backoff": 0.05})
    res = post(app, dice("r1"))
    assert (res.status_int, res.body) == (200, b"")
    [waiting] = rt.store.waiting("r1")
    assert waiting.done == ("steady",) and "database or disk is full" in waiting.last_error
    assert wait_for(lambda: not rt.store.waiting("r1"))
    assert flaky.calls == [1, 2, 3] and steady.calls == [1]  # what succeeded is not redone
    [row] = [r for r in rt.store.traces("r1") if r["event"] == "dice"]
    trace = json.loads(row["trace"])
    assert (row["state"], trace["rule"], trace["attempt"]) == ("done", "observed", 3)
    assert metric(app, 'switchboard_callback_retries_total{event="dice",outcome="retry"} 1.0')
    assert metric(app, 'switchboard_callback_retries_total{event="dice",outcome="done"} 1.0')
    post(app, dice("r1"))  # a duplicate of a finished DiCE reaches no plugin
    assert flaky.calls == [1, 2, 3] and steady.calls == [1]


def test_notify_work_is_retried_too(make):
    flaky = Failing(1)
    rt, app = make({"flaky": flaky}, policy={"retry_backoff": 0.05})
    post(app, notify("n1"))
    assert wait_for(lambda: flaky.calls == [1, 2] and not rt.store.waiting("n1"))


def test_work_that_keeps_failing_is_parked_counted_and_taken_up_by_a_redelivery(make, backend):
    flaky = Failing(10**6)
    rt, app = make({"flaky": flaky}, policy={"retry_backoff": 0.05, "retry_attempts": 3})
    post(app, dice("p1"))
    assert wait_for(lambda: [w.state for w in rt.store.waiting("p1")] == ["parked"])
    time.sleep(0.3)
    assert flaky.calls == [1, 2, 3]  # parked: no more attempts
    assert metric(app, "switchboard_callbacks_parked 1.0")
    assert metric(app, 'switchboard_callback_retries_total{event="dice",outcome="parked"} 1.0')
    flaky.failures = 0
    assert post(app, dice("p1")).status_int == 200  # Sinch delivers it again: processed
    assert flaky.calls == [1, 2, 3, 4] and rt.store.waiting("p1") == []
    assert metric(app, "switchboard_callbacks_parked 0.0")


def test_a_recorded_body_that_no_longer_parses_is_parked_not_retried_forever(make):
    rt, app = make({"steady": Failing(0)}, policy={"retry_backoff": 0.05})
    rt.store.claim("bad", "dice", "", lease=0.0, body='{"event": "dice"')  # a worker died
    assert wait_for(lambda: [w.state for w in rt.store.waiting("bad")] == ["parked"])
    assert "not valid JSON" in rt.store.waiting("bad")[0].last_error


def test_a_redelivered_dice_whose_worker_died_is_processed(make, backend):
    steady = Failing(0)
    rt, app = make({"steady": steady}, policy={"budget": 1.0})
    rt.retrier.stop()  # only the redelivery may pick it up here
    # a worker claimed it, then died: its claim runs out during the redelivery's budget
    rt.store.claim("d1", "dice", "", lease=0.3, body=json.dumps(dice("d1")))
    res = post(app, dice("d1"))
    assert res.status_int == 200 and steady.calls == [2]
    [row] = rt.store.traces("d1")
    assert row["state"] == "done" and json.loads(row["trace"])["duplicate"] is False


def _store_of_a_dead_process(rt: Any) -> Any:
    """A second handle on ``rt``'s store, as another server process had it, and a way to
    make that process die: (store, die)."""
    import subprocess

    from core.store import PostgresStore, SqliteStore

    if isinstance(rt.store, PostgresStore):
        other = PostgresStore(rt.store.url, pool_size=2)
        return other, other.close  # its connections go: PostgreSQL drops its lock
    other = SqliteStore(rt.store.path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = rt.store.instance.split("|")[0]
    other.instance = f"{host}|{gone.pid}|1"  # a process of this machine that has ended
    return other, other.close


@pytest.mark.parametrize("redelivered", [True, False], ids=["redelivery", "retry-worker"])
def test_the_claim_of_a_server_process_that_died_is_taken_over_at_once(make, backend, redelivered):
    """kill -9 in the middle of a DiCE: its claim's lease has not run out, but its owner
    is gone; a redelivery processes it at once (not answered as a duplicate), and without
    one the retry worker of any instance does, well before the lease ends."""
    steady = Failing(0)
    rt, app = make({"steady": steady}, policy={"budget": 2.0})
    if redelivered:
        rt.retrier.stop()
    other, die = _store_of_a_dead_process(rt)
    other.claim("z1", "dice", "", lease=60, body=json.dumps(dice("z1")))
    die()
    if redelivered:
        began = time.monotonic()
        assert post(app, dice("z1")).status_int == 200
        assert time.monotonic() - began < 1.0 and steady.calls == [2]
        [row] = rt.store.traces("z1")
        assert row["state"] == "done" and json.loads(row["trace"])["duplicate"] is False
    else:
        assert wait_for(lambda: steady.calls == [2], 5)
        assert wait_for(lambda: rt.store.waiting("z1") == [])


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_process_whose_lock_connection_dropped_is_not_taken_for_dead(make, backend):
    """PostgreSQL: a server's lock connection is cut (a restart, an idle-session kill);
    the server takes its lock again within a beat, before anyone judges it dead."""
    import psycopg

    steady = Failing(0)
    rt, _ = make({"steady": steady})
    other, die = _store_of_a_dead_process(rt)
    try:
        with psycopg.connect(rt.store.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (other._owner.info.backend_pid,))
        checks = []
        for _ in range(8):  # 1.2 s of looks, twice the time that would confirm a death
            checks.append(rt.store.alive(other.instance))
            time.sleep(0.15)
        assert all(checks), checks
    finally:
        die()
    assert wait_for(lambda: not rt.store.alive(other.instance), 3)  # and once it is gone


def test_a_live_server_process_keeps_its_claim(make, backend):
    steady = Failing(0)
    rt, app = make({"steady": steady}, policy={"budget": 0.5})
    rt.retrier.stop()
    other, die = _store_of_a_dead_process(rt)
    if rt.store.backend == "sqlite":
        other.instance = rt.store.instance.replace(rt.store.instance.split("|")[0], "elsewhere")
    try:
        other.claim("z2", "dice", "", lease=60, body=json.dumps(dice("z2")))
        res = post(app, dice("z2"))  # durable already: 200, and the owner finishes it
        assert res.status_int == 200 and steady.calls == []
        assert json.loads(rt.store.traces("z2")[0]["trace"] or "{}") == {}
    finally:
        die()


def test_a_dice_the_store_cannot_take_gets_503_and_changes_nothing(make, monkeypatch, backend):
    steady = Failing(0)
    rt, app = make({"steady": steady})
    write = rt.store.write

    def full(sql: str, params: Any = (), *, durable: bool = True) -> int:
        if sql.startswith("INSERT INTO callbacks"):
            raise rt.store.errors[-1]("database or disk is full")
        return write(sql, params, durable=durable)

    before = table_counts(rt.store)
    monkeypatch.setattr(rt.store, "write", full)
    res = post(app, dice("f1"), status=503)
    assert res.json == {"error": "the callback could not be stored; send it again"}
    assert steady.calls == [] and table_counts(rt.store) == before
    monkeypatch.undo()
    assert post(app, dice("f1")).status_int == 200 and steady.calls == [1]


def test_a_failed_flush_to_disk_is_never_forgotten(make, monkeypatch):
    """After an fsync error the kernel may have dropped what it was to write, and a later
    fsync can succeed without it: the store refuses every promise from then on, and is
    not ready, until the server is restarted."""
    import os

    steady = Failing(0)
    rt, app = make({"steady": steady})
    real = os.fsync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    assert post(app, dice("io1"), status=503).json["error"].startswith("the callback could not")
    monkeypatch.setattr(os, "fsync", real)
    post(app, dice("io2"), status=503)  # the disk "works" again: still no promise
    ready = app.get("/readyz", status=503).json["error"]
    assert "flush of the SQLite write-ahead log failed" in ready and "restart" in ready


# ------------------------------------------------------------------ the budget holds


def test_breaker_opens_after_repeated_timeouts_and_closes_after_a_success(make, caplog):
    stuck = Hanging()
    rt, app = make(
        {"stuck": stuck, "ok": Fixed(Decision.allowed("ok"))},
        policy={
            "budget": 1.0,
            "breaker_timeouts": 3,
            "breaker_window": 60.0,
            "breaker_cooldown": 0.5,
        },
        plugins={"stuck": {"timeout": 0.05, "on_error": "abstain"}},
    )
    try:

        def status_of(callid: str) -> tuple[str, float]:
            post(app, ice(callid))
            trace = json.loads(rt.store.traces(callid)[0]["trace"])
            return trace["plugins"][0]["status"], trace["elapsed_ms"]

        assert [status_of(f"b{i}")[0] for i in range(3)] == ["timeout"] * 3
        status, ms = status_of("b3")
        assert status == "breaker-open" and ms < 40  # no wait for the stuck plugin
        assert metric(app, 'switchboard_breaker_trips_total{plugin="stuck"} 1.0')
        assert any("circuit breaker opened" in r.getMessage() for r in caplog.records)
        time.sleep(0.6)  # cooldown over: half open, the next call goes through
        stuck.release.set()
        assert status_of("b4")[0] == "decided"
        stuck.release.clear()
        assert status_of("b5")[0] == "timeout"  # closed again: one timeout does not open it
        assert status_of("b6")[0] == "timeout"
    finally:
        stuck.release.set()


def test_a_half_open_breaker_lets_one_trial_call_through():
    from core.breaker import Breaker

    b = Breaker(threshold=2, window=10, cooldown=1)
    assert b.allows("p", 0) and not b.timed_out("p", 0.1) and b.timed_out("p", 0.2)
    assert not b.allows("p", 1.0)  # open for the cooldown
    assert b.allows("p", 1.3)  # the trial
    assert not b.allows("p", 1.4) and not b.allows("p", 2.2)  # others wait for it
    assert b.allows("p", 2.4)  # the trial never came back: another one
    b.succeeded("p")
    assert b.allows("p", 2.5) and b.allows("p", 2.5)  # closed
    assert not b.timed_out("p", 3.0)  # one timeout alone does not open a closed breaker
    b2 = Breaker(threshold=2, window=10, cooldown=1)
    b2.timed_out("q", 0), b2.timed_out("q", 0)
    assert b2.allows("q", 1.5) and b2.timed_out("q", 1.6)  # the trial timed out: open again
    assert not b2.allows("q", 2.0) and b2.left("q", 2.0) == pytest.approx(0.6)


def test_a_hung_plugin_takes_at_most_half_the_hook_workers_and_trips_no_other_breaker(make):
    """A burst of calls into a plugin that hangs: it runs on at most half the workers
    (the other calls skip it: ``saturated``), the healthy plugin after it always runs in
    time, and only the hung plugin's breaker opens."""
    from core.app import make_app, wsgi_post
    from tests.helpers import PATH, signed

    stuck = Hanging()
    rt, _ = make(
        {"stuck": stuck, "good": Fixed(Decision.allowed("ok"))},
        policy={"budget": 1.0, "workers": 4, "ice_default": "connect"},
        plugins={"stuck": {"timeout": 0.1, "on_error": "abstain"}, "good": {"on_error": "deny"}},
    )
    app = make_app(rt)
    answers: dict[str, str] = {}

    def call(callid: str) -> None:
        body, headers = signed(ice(callid))
        answers[callid] = json.loads(wsgi_post(app, PATH, headers, body)[1])["action"]["name"]

    try:
        threads = [threading.Thread(target=call, args=(f"h{i}",)) for i in range(12)]
        for t in threads:
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert set(answers.values()) == {"connectPstn"}, answers  # good allowed every call
        statuses = []
        for callid in answers:
            plugins = json.loads(rt.store.traces(callid)[0]["trace"])["plugins"]
            by_name = {p["plugin"]: p["status"] for p in plugins}
            assert by_name["good"] == "decided", plugins
            statuses.append(by_name["stuck"])
        assert statuses.count("timeout") <= 2 and "saturated" in statuses, statuses
        assert rt.pipeline.breaker.is_open("stuck", time.monotonic()) is False  # 2 < 5
        assert not rt.pipeline.breaker.is_open("good", time.monotonic())
    finally:
        stuck.release.set()


@contextlib.contextmanager
def store_unavailable(rt: Any, seconds: float) -> Any:
    """Hold the store so that nothing else gets it for ``seconds``: SQLite's write lock,
    or every pooled PostgreSQL connection."""
    ready, done = threading.Event(), threading.Event()

    def hold() -> None:
        if rt.store.backend == "sqlite":
            with rt.store._lock:
                ready.set()
                done.wait(seconds)
        else:
            conns = [rt.store._pool.getconn() for _ in range(rt.store._pool.max_size)]
            ready.set()
            done.wait(seconds)
            for conn in conns:
                rt.store._pool.putconn(conn)

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(5)
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_a_store_that_cannot_answer_in_time_costs_the_budget_at_most(make, backend):
    rt, app = make(
        {"ok": Fixed(Decision.allowed("ok"))}, policy={"budget": 0.5, "ice_default": "connect"}
    )
    with store_unavailable(rt, 5):
        began = time.monotonic()
        res = post(app, ice("s1"))
        took = time.monotonic() - began
        assert res.json == {"action": {"name": "hangup"}}  # the configured fallback
        assert took < 0.5 + 0.25, took
        began = time.monotonic()
        post(app, dice("s1"), status=503)
        assert time.monotonic() - began < 0.5 + 0.25
    assert metric(app, 'switchboard_fallbacks_total{event="ice",reason="store-unavailable"} 1.0')
    assert post(app, ice("s2")).json["action"]["name"] == "connectPstn"  # back to normal


# ------------------------------------------------------------------ the real server


@pytest.fixture
def flaky_server(serve, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "switchboard-flaky", "flaky = tests.flaky_plugin")
    fail, hang = tmp_path / "fail", tmp_path / "hang"

    def _start(extra: str = "", name: str = "flaky") -> Any:
        from tests.helpers import KEY, SECRET

        return serve(
            f'[server]\nport = 0\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
            f'[store]\nurl = "sqlite:///{tmp_path}/flaky.db"\n'
            f"[policy]\nbudget = 1.0\nretry_backoff = 0.2\n{extra}\n"
            '[plugins]\nenabled = ["flaky", "crm"]\n'
            f'[plugins.flaky]\nfail_flag = "{fail}"\nhang_flag = "{hang}"\n',
            name=name,
            pythonpath=str(site),
        )

    return _start, fail, hang


def run_cli(config: Any, *args: str) -> Any:
    """``serve.py`` on ``config`` with the flaky plugin installed."""
    return conftest_run_cli(config, *args, pythonpath=str(config.parent / "site"))


def _count(server: Any, table: str) -> int:
    import sqlite3

    db = server.config.parent / "flaky.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def test_real_server_retries_failed_dice_work_and_parks_it_for_the_operator(flaky_server):
    start, fail, _ = flaky_server
    fail.touch()
    server = start("retry_attempts = 3")
    for i in range(5):
        assert server.post(dice(f"rs{i}"))[0] == 200
    assert wait_for(lambda: _count(server, "crm_calls") == 5)  # crm's work is done once
    listing = run_cli(server.config, "inbox")
    assert listing.returncode == 0 and "5 callback(s) waiting" in listing.stdout
    assert "flaky store is down" in listing.stdout and "done=crm" in listing.stdout
    assert wait_for(lambda: run_cli(server.config, "inbox").stdout.count(" parked ") == 5, 15)
    with urllib.request.urlopen(server.url.rsplit("/sinch", 1)[0] + "/metrics") as resp:
        assert "switchboard_callbacks_parked 5.0" in resp.read().decode()
    fail.unlink()
    retried = run_cli(server.config, "inbox", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "5 of 5 done" in retried.stdout
    assert _count(server, "flaky_seen") == 5 and _count(server, "crm_calls") == 5
    assert "0 callback(s) waiting" in run_cli(server.config, "inbox").stdout


def test_real_server_takes_over_a_dice_whose_server_was_killed(flaky_server):
    start, _, hang = flaky_server
    hang.touch()
    first = start(name="first")
    def deliver() -> None:
        with contextlib.suppress(OSError):  # the server dies before it answers
            first.post(dice("k1"), timeout=10)

    thread = threading.Thread(target=deliver)
    thread.start()
    time.sleep(0.5)  # the DiCE is recorded and its plugin work hangs
    first.kill()
    thread.join()
    hang.unlink()
    second = start(name="second")
    began = time.monotonic()
    assert second.post(dice("k1"))[0] == 200  # Sinch's redelivery, processed at once:
    assert time.monotonic() - began < 0.5  # its first server is gone, whatever its lease
    assert _count(second, "flaky_seen") == 1 and _count(second, "crm_calls") == 1
    assert "0 callback(s) waiting" in run_cli(second.config, "inbox").stdout


def test_real_server_counts_the_wait_for_a_free_thread_in_the_budget(serve, tmp_path):
    """One server thread, a plugin that takes 0.6 s, budget 1.0 s, three ICEs at once:
    the ones queued behind the first are answered within the budget as the client sees
    it (the fallback once too late to ask the plugins), never 0.6 s per place in line."""
    from tests.helpers import KEY, SECRET

    site = tmp_path / "site"
    make_dist(site, "switchboard-slow", "slow = tests.slow_plugin")
    server = serve(
        f'[server]\nport = 0\nthreads = 1\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[policy]\nbudget = 1.0\n'
        '[plugins]\nenabled = ["slow"]\n[plugins.slow]\ndelay = 0.6\n',
        pythonpath=str(site),
    )
    server.post(ice("warm-up"))
    results: list[tuple[float, dict[str, Any]]] = []

    def call(callid: str) -> None:
        began = time.monotonic()
        status, _, body = server.post(ice(callid))
        assert status == 200
        results.append((time.monotonic() - began, json.loads(body)))

    threads = [threading.Thread(target=call, args=(f"q{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(took < 1.0 + 0.25 for took, _ in results), results
    answers = sorted(a["action"]["name"] for _, a in results)
    assert "connectPstn" in answers and "hangup" in answers  # the late ones: the fallback
    # answered before any store write, the late ones are recorded once answered: the
    # calls view has every call, the fallbacks marked
    late = answers.count("hangup")

    def listed() -> dict[str, Any]:
        out = conftest_run_cli(server.config, "calls", "--json", pythonpath=str(site))
        return {r["callid"]: r for r in json.loads(out.stdout)["calls"]}

    assert wait_for(lambda: {"q0", "q1", "q2"} <= set(listed()), timeout=5), listed()
    fell_back = [r for c, r in listed().items() if c.startswith("q") and r["fallback"]]
    assert len(fell_back) == late and {r["rule"] for r in fell_back} == {"budget"}, [
        (r["callid"], r["rule"], r["fallback"], r["answer"]) for r in listed().values()
    ]


def test_a_fallback_the_store_could_not_take_is_recorded_once_it_can(make, monkeypatch):
    """An ICE answered with the fallback because the store failed is recorded after the
    answer, or, while the store still fails, kept in memory until the retry worker
    (``Pipeline.record_fallbacks``) can record it: the calls view then has the call."""
    from core import calls
    from core.store import StoreError

    rt, app = make({"ok": Fixed(Decision.allowed("fine"))})
    real_claim = rt.store.claim
    failing = {"on": True}

    def claim(*args: Any, **kwargs: Any) -> Any:
        if failing["on"]:
            raise StoreError("disk I/O error")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(rt.store, "claim", claim)
    answer = post(app, ice("lost-1"))
    rt.pipeline.wait_idle()
    answered = time.time()
    assert answer.json == {"action": {"name": "hangup"}}
    assert calls.recent_calls(rt.store).rows == ()
    assert rt.pipeline.record_fallbacks() == 0  # the store still fails: still waiting
    failing["on"] = False
    time.sleep(0.3)
    assert rt.pipeline.record_fallbacks() == 1
    (row,) = calls.recent_calls(rt.store).rows
    assert row.started_at <= answered  # recorded as received when it arrived
    assert (row.callid, row.rule, row.fallback, row.answer) == (
        "lost-1", "store-unavailable", True, "hangup"
    )
    assert rt.pipeline.record_fallbacks() == 0
    assert json.loads(post(app, ice("lost-1")).text) == {"action": {"name": "hangup"}}
