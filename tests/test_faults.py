"""Issue 9, "Money and callbacks survive faults": acceptance tests on real servers.

Every test drives `python serve.py` subprocesses over HTTP, on SQLite and on PostgreSQL
(the ``backend`` fixture) unless it says otherwise, injects a real fault (SIGKILL, a
full disk, terminated database connections, a stalled store, a second instance, a
hanging or failing plugin) and then checks the money invariants of ``tests/money.py``
straight from the store, after giving the server time to finish its retries.

The details of the behaviour being built (status codes, config keys, metric names,
the lease) are the constants of the next section: adjust them there.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KEY, SECRET, dice, ice
from tests.money import (
    SETTLE_TIMEOUT,
    StoreReader,
    metric,
    settlement,
    snapshot,
    wait_for_invariants,
)
from tests.test_plugins import make_dist

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ the contract (issue 9)
# The details of the coming behaviour, in one place.

DICE_REFUSED = 503  # a DiCE the store cannot take: never 200
RETRY_POLICY = {  # [policy] keys of the background retries of DiCE work
    "retry_backoff": 0.2,
    "retry_max_backoff": 1.0,
    "retry_attempts": 60,
}
PARK_POLICY = {**RETRY_POLICY, "retry_attempts": 3}  # parked quickly, for the inbox test
OVERRUN_METRIC = "switchboard_credit_overruns_total"
PARKED_METRIC = "switchboard_callbacks_parked"
INBOX_COMMAND = ("inbox",)  # `python serve.py inbox` lists waiting/parked work
INBOX_RETRY = ("inbox", "retry")  # `python serve.py inbox retry [CALLID]`
SLACK = 0.3  # client-observed latency beyond policy.budget tolerated on shared 2-core machines


@cache
def retry_keys_known() -> bool:
    """Whether the core under test declares the retry keys. Until it does, they are left
    out of the config, so that today's server starts and the tests fail on the bug they
    test for rather than on an unknown key."""
    out = subprocess.run(
        [sys.executable, "-c", "from core.config import POLICY_KEYS as k; print('retry_backoff' in k)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    return out.stdout.strip() == "True"


# ------------------------------------------------------------------ the configuration

ACCOUNT = "demo"
INITIAL = {ACCOUNT: 100_000}  # minor units: initial_accounts demo = "1000.00"
NUMBER = "+15612600684"
CAP = 600  # the allowlist's max_duration: every call is answered with maxDuration 600
RATE_CENTS_PER_MINUTE = 2  # rates "+1" = "0.02", increments 60/60


def cost(seconds: int) -> int:
    """What a call of ``seconds`` costs in minor units at the config's rate."""
    return RATE_CENTS_PER_MINUTE * math.ceil(seconds / 60) if seconds > 0 else 0


def config(
    url: str,
    *,
    budget: float = 2.0,
    plugins: Iterable[str] = ("allowlist", "credit", "crm"),
    policy: dict[str, Any] | None = None,
    extra: str = "",
) -> str:
    """An example-like config: the allowlist allows NUMBER for 600 s, credit bills the
    fixed, funded account ``demo``, crm records without a webhook."""
    plugins = list(plugins)
    retry = (policy if policy is not None else RETRY_POLICY) if retry_keys_known() else {}
    lines = [
        "[server]",
        "port = 0",
        "[sinch]",
        f'keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]',
        "[policy]",
        f"budget = {budget}",
        *(f"{k} = {v}" for k, v in retry.items()),
        "[store]",
        f'url = "{url}"',
        "[plugins]",
        f"enabled = {json.dumps(plugins)}",
    ]
    if "allowlist" in plugins:
        lines += ["[plugins.allowlist]", f'allow = ["{NUMBER}"]', f"max_duration = {CAP}"]
    if "credit" in plugins:
        lines += [
            "[plugins.credit]",
            'account_from = "fixed"',
            f'account = "{ACCOUNT}"',
            'rates = { "+1" = "0.02" }',
            'increments = "60/60"',
            "minimum_seconds = 60",
            f'initial_accounts = {{ {ACCOUNT} = "1000.00" }}',
        ]
    return "\n".join(lines) + "\n" + extra


# ------------------------------------------------------------------ the client side


def deliver(server: Any, event: dict[str, Any], timeout: float = 15) -> tuple[int | None, bytes, float]:
    """POST one callback: (status or None when the connection failed, body, seconds)."""
    began = time.monotonic()
    try:
        status, _, body = server.post(event, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:
        status, body = None, repr(exc).encode()
    return status, body, time.monotonic() - began


def ice_all(servers: list[Any], callids: list[str], workers: int = 8) -> None:
    """ICE every call (round robin over ``servers``); each must be connected for CAP s."""

    def one(i_c: tuple[int, str]) -> tuple[str, int | None, bytes]:
        i, c = i_c
        status, body, _ = deliver(servers[i % len(servers)], ice(c))
        return c, status, body

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, enumerate(callids)))
    bad = [(c, s, b[:200]) for c, s, b in results if s != 200]
    assert not bad, f"ICEs not answered 200: {bad[:5]}"
    for c, _, body in results:
        action = json.loads(body)["action"]
        assert (action["name"], action.get("maxDuration")) == ("connectPstn", CAP), (c, action)


def fire(
    tasks: list[tuple[Any, dict[str, Any]]],
    workers: int = 16,
    on_answer: Callable[[int], None] | None = None,
) -> list[tuple[str, int | None, float]]:
    """Deliver every (server, event) concurrently: [(callid, status, seconds)] in order."""
    count = [0]
    lock = threading.Lock()

    def one(task: tuple[Any, dict[str, Any]]) -> tuple[str, int | None, float]:
        server, event = task
        status, _, took = deliver(server, event)
        with lock:
            count[0] += 1
            n = count[0]
        if on_answer is not None:
            on_answer(n)
        return event["callid"], status, took

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, tasks))


def redeliver_until_acked(
    servers: list[Any], events: dict[str, dict[str, Any]], timeout: float = 40
) -> dict[str, list[int | None]]:
    """Redeliver each event until it is answered 200, as Sinch would; returns the
    statuses seen per call. Fails if one is never answered 200."""
    pending = dict(events)
    seen: dict[str, list[int | None]] = {c: [] for c in events}
    end = time.monotonic() + timeout
    rounds = 0
    while pending and time.monotonic() < end:
        tasks = [(servers[(rounds + i) % len(servers)], e) for i, e in enumerate(pending.values())]
        for callid, status, _ in fire(tasks, workers=8):
            seen[callid].append(status)
            if status == 200:
                pending.pop(callid, None)
        rounds += 1
        if pending:
            time.sleep(0.3)
    assert not pending, (
        f"{len(pending)} DiCEs never answered 200 in {timeout:.0f} s of redelivery: "
        + ", ".join(f"{c} {seen[c][-3:]}" for c in sorted(pending)[:10])
    )
    return seen


def assert_charges(url: str, expected: dict[str, int]) -> None:
    """Each call charged exactly what its duration costs, capped at the grant."""
    wrong = []
    for callid, amount in sorted(expected.items()):
        got = settlement(url, callid)
        if got is None or got[0] != amount:
            wrong.append(f"{callid}: charged {None if got is None else got[0]}, expected {amount}")
    assert not wrong, f"{len(wrong)} calls charged wrongly:\n  " + "\n  ".join(wrong[:15])


def expected_charges(durations: dict[str, int]) -> dict[str, int]:
    return {c: cost(min(d, CAP)) for c, d in durations.items()}


def seeded_durations(callids: list[str], low: int, high: int) -> dict[str, int]:
    rng = random.Random(" ".join(callids))
    return {c: rng.randint(low, high) for c in callids}


def ids(prefix: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{prefix}-{run}-{i:03d}" for i in range(n)]


# ------------------------------------------------------------------ fault injection


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs for a SQLite store; unmounted after the test (lazily if a server
    still holds it)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        (mnt / "filler").unlink(missing_ok=True)
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


class DiskFull:
    """Fills the tmpfs under a SQLite store, so that no commit can be written, and frees it.

    (A read-only remount is refused by the kernel, EBUSY, while the server holds the
    database files open for writing, so "the store cannot take writes" is a full disk.)
    The write-ahead log is truncated first (a checkpoint, which changes no data), so that
    the server's next commit must allocate space for it rather than reuse the log's pages.
    """

    def __init__(self, mnt: Path, db: Path) -> None:
        self.filler, self.db = mnt / "filler", db
        self.times = 0

    def on(self) -> None:
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1 << 9):
                block = b"\0" * chunk
                try:
                    while True:
                        os.write(fd, block)
                except OSError:
                    continue
        finally:
            os.close(fd)
        self.times += 1

    def off(self) -> None:
        self.filler.unlink(missing_ok=True)


def _pg_port() -> int:
    base = os.environ.get("SWITCHBOARD_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432/test"
    return urllib.parse.urlsplit(base).port or 5432


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local TCP ports of process ``pid``'s connections to ``server_port`` (from /proc)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class PgKiller:
    """Terminates the PostgreSQL backends of one server process, and only those: found by
    the application_name the server was started with (PGAPPNAME) or by the local ports
    of its own TCP connections to PostgreSQL; other tests' connections are never touched."""

    def __init__(self, url: str, server: Any, appname: str) -> None:
        self.url, self.server, self.appname = url, server, appname
        self.terminated = 0

    def kill(self) -> int:
        import psycopg

        ports = sorted(client_ports(self.server.proc.pid, _pg_port()))
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (application_name = %s OR client_port = ANY(%s))",
                (self.appname, ports),
            ).fetchall()
        n = sum(1 for (ok,) in rows if ok)
        self.terminated += n
        return n


def in_background(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ a. kill -9 under DiCE load

N_KILL = 150
KILL_ROUNDS = 3


def test_kill9_mid_dice_load_then_redelivery_settles_every_call_once(backend, serve, tmp_path):
    """SIGKILL the server while DiCEs are in flight, restart it on the same store and
    redeliver every DiCE that did not get a 200: every call ends settled once and
    recorded once, at what its duration costs; duplicates of answered DiCEs change
    nothing."""
    url = backend.url(tmp_path, "money")
    text = config(url)
    server = serve(text, name="money")
    calls = ids("kill", N_KILL)
    ice_all([server], calls)
    durations = seeded_durations(calls, 1, CAP - 10)

    acked_before: list[str] = []
    unacked = list(calls)
    for _ in range(KILL_ROUNDS):  # several kills: more DiCEs caught half-way
        half = threading.Event()
        outcome: dict[str, Any] = {}
        quarter = max(1, len(unacked) // 4)
        batch = [(server, dice(c, duration=durations[c])) for c in unacked]
        runner = in_background(
            lambda batch=batch, half=half, outcome=outcome, quarter=quarter: outcome.update(
                r=fire(batch, workers=24, on_answer=lambda n: half.set() if n >= quarter else None)
            )
        )
        assert half.wait(60), "the DiCE load did not get going"
        server.kill()
        runner.join(120)
        acked_before += [c for c, s, _ in outcome["r"] if s == 200]
        unacked = [c for c, s, _ in outcome["r"] if s != 200]
        assert unacked, "the kill came too late: every DiCE was answered"
        server = serve(text, name="money")
    assert acked_before

    redeliver_until_acked([server], {c: dice(c, duration=durations[c]) for c in unacked})
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, expected_charges(durations))

    before = snapshot(url)
    dupes = acked_before[:10]
    statuses = [s for _, s, _ in fire([(server, dice(c, duration=durations[c])) for c in dupes])]
    assert statuses == [200] * len(dupes)
    time.sleep(1.0)  # anything a duplicate set off has had time to happen
    assert snapshot(url) == before
    wait_for_invariants(url, calls, INITIAL)


# ------------------------------------------------------------------ b. the store fails under DiCE load

N_STORE_FAULT = 150


def test_store_failing_under_dice_load_loses_no_acknowledged_dice(backend, serve, tmp_path, request):
    """The real store fails while DiCEs pour in (SQLite: its disk fills up, several
    times; PostgreSQL: the server's connections are terminated, again and again). Every
    DiCE answered 200 ends settled and recorded; the ones refused are redelivered until
    answered 200, and end the same."""
    appname = f"sbfault_{uuid.uuid4().hex[:8]}"
    if backend.name == "sqlite":
        mnt = request.getfixturevalue("tmpfs")
        url = f"sqlite:///{mnt / 'store.db'}"
    else:
        url = backend.url(tmp_path, "money")
    server = serve(config(url), name="money", env={"PGAPPNAME": appname})
    calls = ids("fault", N_STORE_FAULT)
    ice_all([server], calls)
    durations = seeded_durations(calls, 1, CAP - 10)

    stop = threading.Event()
    injected = []
    if backend.name == "sqlite":
        disk = DiskFull(mnt, mnt / "store.db")

        def inject() -> None:
            try:
                while not stop.is_set():
                    disk.on()
                    injected.append("full")
                    stop.wait(0.7)
                    disk.off()
                    stop.wait(0.5)
            finally:
                disk.off()
    else:
        killer = PgKiller(url, server, appname)

        def inject() -> None:
            while not stop.is_set():
                if killer.kill():
                    injected.append("terminated")
                stop.wait(0.25)

    began = time.monotonic()
    injector = in_background(inject)
    results = fire([(server, dice(c, duration=durations[c])) for c in calls], workers=12)
    while time.monotonic() - began < 3.0:  # at least a few fault cycles, even if quick
        time.sleep(0.1)
    stop.set()
    injector.join(30)
    assert injected, "no fault was injected"
    refused = [c for c, s, _ in results if s != 200]
    statuses = sorted({s for _, s, _ in results}, key=str)
    print(
        f"{backend.name}: {len(injected)} faults, first answers {statuses}, "
        f"{len(refused)} not 200"
    )
    if backend.name == "sqlite":  # the fault must have been seen, or this tested nothing
        assert refused or "full" in server.log, "the full disk was never noticed"
    redeliver_until_acked([server], {c: dice(c, duration=durations[c]) for c in refused})
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, expected_charges(durations))
    server.kill()


def test_dice_while_the_disk_is_full_gets_503_then_settles_on_redelivery(serve, tmpfs):
    """SQLite only: while the store cannot take writes (its disk is full), a DiCE is
    answered 503, never 200, and an ICE still gets an answer within the budget; once the
    fault clears, the DiCE's redelivery is answered 200 and the call is settled."""
    url = f"sqlite:///{tmpfs / 'store.db'}"
    budget = 1.0
    server = serve(config(url, budget=budget), name="money")
    ice_all([server], ["full-1"])
    disk = DiskFull(tmpfs, tmpfs / "store.db")
    disk.on()
    try:
        status, body, _ = deliver(server, dice("full-1", duration=120))
        ice_status, ice_body, ice_took = deliver(server, ice("full-2"))
    finally:
        disk.off()
    assert status == DICE_REFUSED, (status, body[:300])
    assert ice_status == 200 and ice_took <= budget + SLACK, (ice_status, ice_took, ice_body[:300])
    assert deliver(server, dice("full-1", duration=120))[0] == 200
    wait_for_invariants(url, ["full-1"], INITIAL)
    assert_charges(url, {"full-1": cost(120)})
    server.kill()


# ------------------------------------------------------------------ c. no call charged past its grant


def wait_fitted(url: str, callids: list[str], cap: int = CAP, timeout: float = 10) -> None:
    """Wait until each reservation is fitted to the cap the ICE was answered with (the
    DiCE of a real call comes after the call, long after the answer)."""
    reader = StoreReader(url)
    end = time.monotonic() + timeout
    while True:
        rows = dict(reader.rows("SELECT callid, max_duration FROM credit_reservations"))
        late = [c for c in callids if rows.get(c) != cap]
        if not late or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert not late, f"reservations not fitted to {cap} s: {[(c, rows.get(c)) for c in late[:5]]}"


def _values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for each in value.values() for v in _values(each)]
    if isinstance(value, list):
        return [v for each in value for v in _values(each)]
    return [value]


def records_overrun(details: dict[str, Any], reported: int) -> bool:
    """The settlement's details name the reported duration (contract: recorded there)."""
    return reported in _values(details) or str(reported) in map(str, _values(details))


def test_duration_beyond_the_cap_is_charged_at_the_cap(backend, serve, tmp_path):
    """ICE answered maxDuration 600 with a reservation, then a DiCE reporting 3600 s:
    the charge is the cost of 600 s, never of 3600 s; the overrun is recorded on the
    settlement and counted."""
    url = backend.url(tmp_path, "money")
    server = serve(config(url), name="money")
    ice_all([server], ["over-1"])
    wait_fitted(url, ["over-1"])
    assert deliver(server, dice("over-1", duration=3600))[0] == 200
    wait_for_invariants(url, ["over-1"], INITIAL)
    amount, details = settlement(url, "over-1")
    assert amount == cost(CAP), (
        f"charged {amount} for a call granted {CAP} s (cost {cost(CAP)}); 3600 s cost {cost(3600)}"
    )
    assert records_overrun(details, 3600), details
    assert metric(server.url, OVERRUN_METRIC) == 1


N_OVERRUN = 200


def test_overruns_under_load_never_charge_past_the_grant(backend, serve, tmp_path):
    """Many calls, durations above and below the 600 s cap, DiCEs concurrent: each is
    charged the cost of min(duration, 600); the overrun metric counts the overruns."""
    url = backend.url(tmp_path, "money")
    server = serve(config(url), name="money")
    calls = ids("load", N_OVERRUN)
    ice_all([server], calls)
    durations = seeded_durations(calls, 1, 2 * CAP)
    wait_fitted(url, calls)
    results = fire([(server, dice(c, duration=durations[c])) for c in calls])
    assert [s for _, s, _ in results] == [200] * len(calls)
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, expected_charges(durations))
    overruns = sum(1 for d in durations.values() if d > CAP)
    assert 0 < overruns < len(calls)
    assert metric(server.url, OVERRUN_METRIC) == overruns


# ------------------------------------------------------------------ d. two instances, one store

N_TWO = 120


def test_two_instances_given_the_same_dice_settle_each_call_once(backend, serve, tmp_path):
    """Two servers on one store (one PostgreSQL schema; one SQLite file shared by two
    processes); every DiCE is delivered to both at once: exactly one settlement and one
    call record each."""
    url = backend.url(tmp_path, "money")
    text = config(url)
    a, b = serve(text, name="a"), serve(text, name="b")
    calls = ids("two", N_TWO)
    ice_all([a, b], calls)
    durations = seeded_durations(calls, 1, CAP - 10)  # overruns are c's business
    tasks = [(srv, dice(c, duration=durations[c])) for c in calls for srv in (a, b)]
    results = fire(tasks, workers=16)
    unacked = {c for c in calls} - {c for c, s, _ in results if s == 200}
    redeliver_until_acked([a, b], {c: dice(c, duration=durations[c]) for c in unacked})
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, expected_charges(durations))


def test_survivor_takes_over_the_dice_of_a_killed_instance(backend, serve, tmp_path):
    """Two servers on one store; one is killed (SIGKILL) in the middle of DiCE load and
    not restarted. Sinch redelivers what it did not acknowledge to the survivor: every
    call ends settled and recorded (the killed one's claims are taken over after their
    lease, budget + 2 s)."""
    url = backend.url(tmp_path, "money")
    text = config(url, budget=1.0)
    a, b = serve(text, name="a"), serve(text, name="b")
    calls = ids("survive", N_KILL)
    ice_all([b], calls)
    durations = seeded_durations(calls, 1, CAP - 10)
    half = threading.Event()
    outcome: dict[str, Any] = {}
    runner = in_background(
        lambda: outcome.update(
            r=fire(
                [(a, dice(c, duration=durations[c])) for c in calls],
                workers=24,
                on_answer=lambda n: half.set() if n >= N_KILL // 3 else None,
            )
        )
    )
    assert half.wait(60), "the DiCE load did not get going"
    a.kill()
    runner.join(120)
    unacked = [c for c, s, _ in outcome["r"] if s != 200]
    assert unacked, "the kill came too late"
    redeliver_until_acked([b], {c: dice(c, duration=durations[c]) for c in unacked})
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, expected_charges(durations))


# ------------------------------------------------------------------ e. a hanging plugin at saturation

N_HANG = 300
HANG_CLIENTS = 24
HANG_BUDGET = 1.1


def test_budget_holds_as_the_client_sees_it_with_a_hanging_plugin(backend, serve, tmp_path):
    """A plugin hangs 4 s on ~6% of ICEs; many ICEs at once: every ICE is answered, each
    within policy.budget (+ SLACK) as measured by the client."""
    from tests.hang_plugin import hangs

    site = make_dist(tmp_path / "site", "switchboard-hang", "hang = tests.hang_plugin")
    url = backend.url(tmp_path, "money")
    text = config(
        url,
        budget=HANG_BUDGET,
        plugins=("hang", "allowlist", "credit", "crm"),
        extra="[plugins.hang]\nhang = 4.0\nshare = 0.06\n",
    )
    server = serve(text, name="money", pythonpath=str(site))
    calls = ids("hang", N_HANG)
    hanging = sum(hangs(c, 0.06) for c in calls)
    assert hanging >= 8, hanging

    def one(callid: str) -> tuple[str, int | None, bytes, float]:
        status, body, took = deliver(server, ice(callid))
        return callid, status, body, took

    with ThreadPoolExecutor(HANG_CLIENTS) as pool:
        results = list(pool.map(one, calls))
    took = sorted(t for _, _, _, t in results)
    q = statistics.quantiles(took, n=100)
    summary = (
        f"{backend.name}: {len(took)} ICEs, {hanging} hanging, {HANG_CLIENTS} clients: "
        f"p50 {q[49]:.3f} s, p90 {q[89]:.3f} s, p99 {q[98]:.3f} s, max {took[-1]:.3f} s"
    )
    print(summary)
    unanswered = [(c, s, b[:100]) for c, s, b, _ in results if s != 200 or not b.startswith(b"{")]
    assert not unanswered, f"{len(unanswered)} ICEs without an answer: {unanswered[:5]}"
    for _, _, body, _ in results:
        assert json.loads(body)["action"]["name"] in ("connectPstn", "hangup")
    late = [(c, round(t, 3)) for c, _, _, t in results if t > HANG_BUDGET + SLACK]
    assert not late, f"{len(late)} ICEs answered after {HANG_BUDGET} + {SLACK} s; {summary}: {late[:10]}"
    wait_for_invariants(url, [], INITIAL)


# ------------------------------------------------------------------ store waits obey the deadline

STALL = 5.0  # seconds the test holds the store


class StoreStall:
    """Holds the whole store for a while: SQLite, an exclusive transaction on the file
    (no writer gets in); PostgreSQL, ACCESS EXCLUSIVE locks on every table of the schema
    (no reader or writer gets in)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.held = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        if self.url.startswith("sqlite:///"):
            conn = sqlite3.connect(self.url[len("sqlite:///") :], timeout=10, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                self.held.set()
                self.release.wait(STALL)
                conn.execute("ROLLBACK")
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as conn:
            tables = [
                t
                for (t,) in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                ).fetchall()
            ]
            conn.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
            self.held.set()
            self.release.wait(STALL)
            conn.rollback()


def test_stalled_store_ice_gets_the_fallback_in_time_and_dice_gets_503(backend, serve, tmp_path):
    """While the store cannot answer, an ICE gets the configured fallback within the
    budget (as the client sees it) and a DiCE gets 503, never 200; afterwards the
    DiCE's redelivery is answered 200 and the call settled."""
    url = backend.url(tmp_path, "money")
    budget = 1.0
    server = serve(config(url, budget=budget), name="money")
    ice_all([server], ["stall-1"])
    wait_fitted(url, ["stall-1"])
    stall = StoreStall(url)
    holder = in_background(stall.run)
    assert stall.held.wait(15), "could not take the store"
    answers: dict[str, Any] = {}
    posts = [
        in_background(lambda: answers.update(ice=deliver(server, ice("stall-2")))),
        in_background(lambda: answers.update(dice=deliver(server, dice("stall-1", duration=90)))),
    ]
    for thread in posts:
        thread.join(STALL + 20)
    stall.release.set()
    holder.join(20)
    status, body, took = answers["ice"]
    assert status == 200 and took <= budget + SLACK, (status, round(took, 3), body[:300])
    assert json.loads(body)["action"] == {"name": "hangup"}, body  # the configured fallback
    dice_status, dice_body, dice_took = answers["dice"]
    assert dice_status == DICE_REFUSED, (dice_status, round(dice_took, 3), dice_body[:300])
    redeliver_until_acked([server], {"stall-1": dice("stall-1", duration=90)})
    wait_for_invariants(url, ["stall-1"], INITIAL)
    assert_charges(url, {"stall-1": cost(90)})
    # the fallback the stalled store could not record is recorded once it answers again
    from tests.conftest import run_cli

    def recorded() -> list[Any]:
        out = run_cli(server.config, "calls", "--fallbacks", "--json")
        return [r for r in json.loads(out.stdout)["calls"] if r["callid"] == "stall-2"]

    end = time.monotonic() + 10
    while not recorded() and time.monotonic() < end:
        time.sleep(0.3)
    assert [(r["rule"], r["answer"]) for r in recorded()] == [("store-unavailable", "hangup")]


# ------------------------------------------------------------------ failed DiCE work is retried, or parked


def _flaky_server(serve, tmp_path, url: str, policy: dict[str, Any]) -> tuple[Any, Path]:
    site = make_dist(tmp_path / "site", "switchboard-flaky", "flaky = tests.flaky_plugin")
    flag = tmp_path / "flaky-down"
    text = config(
        url,
        plugins=("allowlist", "credit", "crm", "flaky"),
        policy=policy,
        extra=f'[plugins.flaky]\nfail_flag = "{flag}"\n',
    )
    return serve(text, name="money", pythonpath=str(site)), flag


def flaky_seen(url: str) -> set[str]:
    return {c for (c,) in StoreReader(url).rows("SELECT callid FROM flaky_seen")}


def test_failed_dice_work_is_retried_in_the_background(backend, serve, tmp_path):
    """A plugin's DiCE hook raises for a while (its store is down): the DiCE is still
    answered 200 (it is durable), and the work is retried with backoff until it
    succeeds, without any redelivery."""
    url = backend.url(tmp_path, "money")
    server, flag = _flaky_server(serve, tmp_path, url, RETRY_POLICY)
    calls = ids("flaky", 10)
    ice_all([server], calls)
    flag.touch()
    results = fire([(server, dice(c, duration=61)) for c in calls], workers=4)
    assert [s for _, s, _ in results] == [200] * len(calls)
    time.sleep(1.5)  # a few failed attempts
    flag.unlink()
    end = time.monotonic() + SETTLE_TIMEOUT
    while flaky_seen(url) != set(calls) and time.monotonic() < end:
        time.sleep(0.3)
    assert flaky_seen(url) == set(calls), f"never retried: {sorted(set(calls) - flaky_seen(url))}"
    wait_for_invariants(url, calls, INITIAL)
    assert_charges(url, {c: cost(61) for c in calls})


def test_dice_work_that_keeps_failing_is_parked_for_an_operator(backend, serve, tmp_path):
    """DiCE work that fails every attempt is parked: `serve.py inbox` lists it, the
    parked gauge counts it; once the fault is gone `serve.py inbox retry CALLID`
    processes it and the gauge drops to zero."""
    from tests.conftest import run_cli

    url = backend.url(tmp_path, "money")
    server, flag = _flaky_server(serve, tmp_path, url, PARK_POLICY)
    ice_all([server], ["parked-1"])
    flag.touch()
    assert deliver(server, dice("parked-1", duration=61))[0] == 200
    end = time.monotonic() + SETTLE_TIMEOUT
    while (metric(server.url, PARKED_METRIC) or 0) < 1 and time.monotonic() < end:
        time.sleep(0.3)
    assert metric(server.url, PARKED_METRIC) == 1
    site = str(tmp_path / "site")  # where _flaky_server installed the plugin
    listed = run_cli(server.config, *INBOX_COMMAND, pythonpath=site)
    assert listed.returncode == 0 and "parked-1" in listed.stdout, listed.stdout + listed.stderr
    assert "parked-1" not in flaky_seen(url)
    flag.unlink()
    retried = run_cli(server.config, *INBOX_RETRY, "parked-1", pythonpath=site)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    end = time.monotonic() + SETTLE_TIMEOUT
    while "parked-1" not in flaky_seen(url) and time.monotonic() < end:
        time.sleep(0.3)
    assert "parked-1" in flaky_seen(url)
    wait_for_invariants(url, ["parked-1"], INITIAL)
    assert metric(server.url, PARKED_METRIC) == 0
