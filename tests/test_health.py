"""Health tells the truth: /readyz under real store faults, and SIGTERM under overload.

Real servers (`python serve.py`) on real faults: a full tmpfs, a filesystem the kernel
turned read-only, PostgreSQL behind a proxy that is stopped or stalls. Faults that need
root (mount) skip without it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import KEY, SECRET, dice, ice, signed
from tests.test_plugins import make_dist

BOUND = 1.5  # seconds: READY_TIMEOUT (1 s) plus a margin for a loaded test machine


def _config(store_url: str, extra: str = "") -> str:
    return (
        f'[server]\nport = 0\n{extra}\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "{store_url}"\n[plugins]\nenabled = []\n'
    )


def readyz(server) -> tuple[int, dict, float]:
    """(status, JSON body, seconds it took)."""
    url = server.url.replace("/sinch/callback", "/readyz")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            status, body = err.code, err.read()
    return status, json.loads(body), time.monotonic() - began


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of its own, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if _run("umount", str(disk)).returncode != 0:
            _run("umount", "-l", str(disk))


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_readyz_is_503_within_the_bound_on_a_full_disk_and_200_once_freed(serve, tmpfs):
    server = serve(_config(f"sqlite:///{tmpfs}/sb.db"))
    assert readyz(server)[:2] == (200, {"status": "ready"})
    _fill(tmpfs / "filler")
    for _ in range(3):
        status, body, took = readyz(server)
        assert status == 503 and took < BOUND, (status, body, took)
        assert body["error"].startswith("store cannot take writes: the SQLite store's disk is full")
    (tmpfs / "filler").unlink()
    status, body, took = readyz(server)
    assert (status, body) == (200, {"status": "ready"}) and took < BOUND


def test_a_failed_write_makes_the_store_not_ready_until_one_succeeds(tmp_path):
    """The probe alone can be fooled on a full disk (a commit that fits in WAL space
    already allocated succeeds); the store also remembers that its latest write failed."""
    from core.store import CORE_MIGRATIONS, SqliteStore

    store = SqliteStore(str(tmp_path / "w.db"))
    try:
        store.migrate("core", CORE_MIGRATIONS)
        store.probe_write(1.0)
        assert store.write_fault() is None
        with pytest.raises(Exception):
            store.write("INSERT INTO nowhere VALUES (1)")  # the statement's fault: not the store's
        assert store.write_fault() is None
        import sqlite3

        def full(*args: object, **kwargs: object) -> None:
            err = sqlite3.OperationalError("database or disk is full")
            err.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise err

        with pytest.raises(sqlite3.OperationalError):
            with store._watching_writes():
                full()
        assert store.write_fault() == "the last write failed: database or disk is full"
        store.probe_write(1.0)
        assert store.write_fault() is None
    finally:
        store.close()


@pytest.fixture
def read_only_disk(tmp_path):
    """An ext4 filesystem on a loop device that ``make_read_only()`` turns read-only the
    way the kernel does after a disk error (``errors=remount-ro``).

    ``mount -o remount,ro`` is refused (EBUSY) while the server holds its database open
    for writing, so a plain remount cannot fault a running server; ext4's error path
    can, and it is what makes a production filesystem read-only under a running
    process. It stays so until unmounted, so this fault is not cleared in the test."""
    if os.geteuid() != 0:
        pytest.skip("a loop-mounted filesystem needs root")
    image, disk = tmp_path / "ro.img", tmp_path / "ro"
    disk.mkdir()
    with image.open("wb") as f:
        f.truncate(16 << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 unavailable: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(disk))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount ext4: {mounted.stderr.strip()}")
    device = os.path.basename(_run("findmnt", "-n", "-o", "SOURCE", str(disk)).stdout.strip())
    trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")

    def make_read_only() -> None:
        trigger.write_text("switchboard test: read-only\n")
        assert _run("touch", str(disk / "probe")).returncode != 0  # really read-only now

    if not trigger.exists():
        _run("umount", str(disk))
        pytest.skip("this kernel has no ext4 trigger_fs_error")
    try:
        yield disk, make_read_only
    finally:
        if _run("umount", str(disk)).returncode != 0:
            _run("umount", "-l", str(disk))


def test_readyz_is_503_within_the_bound_on_a_read_only_filesystem(serve, read_only_disk):
    disk, make_read_only = read_only_disk
    server = serve(_config(f"sqlite:///{disk}/sb.db"))
    assert readyz(server)[:2] == (200, {"status": "ready"})
    make_read_only()
    for _ in range(3):
        status, body, took = readyz(server)
        assert status == 503 and took < BOUND, (status, body, took)
        assert body["error"].startswith("store cannot take writes: ")
    server.kill()  # before the fixture unmounts the filesystem


def test_plain_remount_read_only_recovers(serve, tmpfs):
    """A tmpfs remounted read-only while the server holds its database open: the kernel
    refuses it (EBUSY), so the server must simply stay ready; when the remount does go
    through (a kernel that allows it), readiness must fail and come back."""
    server = serve(_config(f"sqlite:///{tmpfs}/sb.db"))
    assert readyz(server)[0] == 200
    remount = _run("mount", "-o", "remount,ro", str(tmpfs))
    try:
        status, body, took = readyz(server)
        assert took < BOUND
        if remount.returncode == 0:
            assert status == 503 and "read-only" in body["error"], body
        else:
            assert "busy" in remount.stderr and status == 200
    finally:
        if remount.returncode == 0:
            _run("mount", "-o", "remount,rw", str(tmpfs))
    assert readyz(server)[:2] == (200, {"status": "ready"})


# ------------------------------------------------------------------ PostgreSQL faults


class Proxy:
    """A TCP proxy to PostgreSQL in the test process: ``stop()`` makes the database
    unreachable (listener closed, connections reset), ``stall()`` keeps connections
    open but forwards nothing (a hung network), ``start()`` brings it back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.stalled = False
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener, self.stalled = listener, False
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.1)
                if self.stalled:
                    continue
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                sock.close()

    def stall(self) -> None:
        self.stalled = True

    def stop(self) -> None:
        if self._listener is not None:
            try:  # wakes the accept() blocked in another thread; close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def pg_behind_proxy(postgres_url):
    import psycopg

    base = postgres_url
    schema = f"sbtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    info = psycopg.conninfo.conninfo_to_dict(base)
    proxy = Proxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.start()
    user, dbname = info.get("user", "postgres"), info.get("dbname", "postgres")
    url = f"postgresql://{user}@127.0.0.1:{proxy.port}/{dbname}?options=-csearch_path%3D{schema}"
    try:
        yield proxy, url
    finally:
        proxy.stop()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_readyz_is_503_within_the_bound_while_postgres_is_unreachable(serve, pg_behind_proxy):
    proxy, url = pg_behind_proxy
    server = serve(_config(url))
    assert readyz(server)[:2] == (200, {"status": "ready"})

    proxy.stop()
    for _ in range(3):
        status, body, took = readyz(server)
        assert status == 503 and took < BOUND, (status, body, took)
        assert "password" not in body["error"] and "postgresql://" not in body["error"]

    proxy.start()  # same port: the pool reconnects and readiness comes back
    deadline = time.monotonic() + 30
    while (answer := readyz(server))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert answer[:2] == (200, {"status": "ready"})


def test_readyz_answers_within_the_bound_when_postgres_hangs(serve, pg_behind_proxy):
    """Connections open, nothing comes back: every probe request still answers in the
    bound, and they share one helper thread instead of piling up one each."""
    proxy, url = pg_behind_proxy
    server = serve(_config(url))
    assert readyz(server)[0] == 200
    proxy.stall()
    status, body, took = readyz(server)
    assert (status, took < BOUND) == (503, True), body
    before = _threads(server.proc.pid)
    answers = [readyz(server) for _ in range(8)]
    assert all(s == 503 and t < BOUND for s, _, t in answers), answers
    assert _threads(server.proc.pid) <= before + 1
    server.kill()


# ------------------------------------------------------------------ SIGTERM under overload


def _raw_request(event: dict, path: str = "/sinch/callback") -> bytes:
    body, headers = signed(event)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{head}\r\n"
    ).encode() + body


def _answer(sock: socket.socket) -> str:
    """The status line the server sent, or what happened instead."""
    sock.settimeout(30)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return "reset after a partial answer" if data else "reset"
    except TimeoutError:
        return "no answer"
    finally:
        sock.close()
    return data.split(b"\r\n", 1)[0].decode() if data else "closed without an answer"


def test_sigterm_under_overload_answers_every_request_sent_before_it(serve, tmp_path):
    """250 clients connect and send ICE or DiCE to a server with 2 threads; most wait in
    the kernel's listen backlog (waitress accepts at most 100 connections). SIGTERM
    right then: every one of them gets its HTTP answer, none is reset."""
    site = tmp_path / "site"
    make_dist(site, "switchboard-test-plugins", "slow = tests.slow_plugin")
    server = serve(
        _config(f"sqlite:///{tmp_path}/sb.db", "threads = 2").replace(
            "enabled = []", 'enabled = ["slow"]\n[plugins.slow]\ndelay = 0.005\n'
        ),
        pythonpath=str(site),
    )
    host, port = server.url.split("/")[2].split(":")
    stamp = uuid.uuid4().hex[:8]
    requests = [
        _raw_request(ice(f"ovl-{stamp}-{i}") if i % 2 else dice(f"ovl-{stamp}-{i}"))
        for i in range(250)
    ]
    socks = []
    for request in requests:
        sock = socket.create_connection((host, int(port)))
        sock.sendall(request)
        socks.append(sock)
    server.proc.send_signal(signal.SIGTERM)
    answers: list[str] = [""] * len(socks)

    def read(i: int) -> None:
        answers[i] = _answer(socks[i])

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(socks))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert server.proc.wait(timeout=30) == 0
    assert Counter(answers) == {"HTTP/1.1 200 OK": 250}
    assert "stopped" in server.log


def test_callbacks_keep_the_budget_while_postgres_is_unreachable(serve, pg_behind_proxy):
    """PostgreSQL goes away: an ICE gets the configured fallback within the budget as the
    client sees it (not the pool's 10 s), a DiCE gets 503 as fast; once it is back, the
    DiCE's redelivery is answered 200 and settled."""
    proxy, url = pg_behind_proxy
    server = serve(
        _config(url).replace(
            "enabled = []",
            'enabled = ["credit"]\n[plugins.credit]\naccount_from = "fixed"\naccount = "acme"\n'
            'rates = { "+1" = "0.01" }\ninitial_accounts = { acme = "10.00" }\n'
            '[policy]\nbudget = 1.0\nice_default = "connect"\n',
        )
    )
    assert json.loads(server.post(ice("pgd-1"))[2])["action"]["name"] == "connectPstn"
    proxy.stop()
    for event in (ice("pgd-2"), dice("pgd-1", duration=60)):
        began = time.monotonic()
        status, _, body = server.post(event)
        took = time.monotonic() - began
        assert took < 1.0 + 0.4, (event["event"], took, body)
        if event["event"] == "ice":
            assert (status, json.loads(body)) == (200, {"action": {"name": "hangup"}})
        else:
            assert status == 503, body
    proxy.start()
    deadline = time.monotonic() + 30
    while server.post(dice("pgd-1", duration=60))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    import psycopg

    with psycopg.connect(url) as conn:
        settled = conn.execute("SELECT status FROM credit_settled WHERE callid = 'pgd-1'").fetchall()
    assert settled == [("settled",)]
