"""Fixtures shared by the real-server tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Backend, runtime, signed, webapp

REPO = Path(__file__).resolve().parent.parent


class Server:
    """A `python serve.py` subprocess and a signed HTTP client for it."""

    def __init__(self, proc: subprocess.Popen[str], url: str, stderr: Path, config: Path) -> None:
        self.proc, self.url, self._stderr, self.config = proc, url, stderr, config

    @property
    def log(self) -> str:
        return self._stderr.read_text()

    def post(self, event, *, headers=None, body=None, timeout=10):
        data, signed_headers = signed(event) if body is None else (body, {})
        request = urllib.request.Request(
            self.url, data=data, headers=headers or signed_headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.headers.get("Content-Type"), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers.get("Content-Type"), err.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=20)


@pytest.fixture
def serve(tmp_path):
    """``serve(config_text, name=..., env=...)`` starts `python serve.py` on that config.

    The config should set ``[server] port = 0``; the server's URL is read from its first
    line of output. Every server still running is killed after the test.
    """
    servers: list[Server] = []

    def _serve(
        config_text: str,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        pythonpath: str = "",
    ) -> Server:
        name = name or f"server{len(servers)}"
        config = tmp_path / f"{name}.toml"
        config.write_text(config_text)
        stderr = tmp_path / f"{name}-{len(servers)}.log"
        full_env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": f"{pythonpath}:{REPO}" if pythonpath else str(REPO),
        }
        with stderr.open("w") as err_file:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "serve.py"), "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
                env=full_env,
                cwd=tmp_path,
            )
        assert proc.stdout is not None  # stdout=PIPE
        line = proc.stdout.readline()
        if not line.startswith("switchboard listening on "):
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise AssertionError(f"server did not start: {line!r}\n{stderr.read_text()}")
        server = Server(proc, line.split()[3], stderr, config)
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.proc.stdout.close()


@pytest.fixture
def make(request):
    """``make(plugins, **config_sections) -> (runtime, WebTest app)``: in-process apps
    with exactly the given plugins and a scratch store (on the test's ``backend`` when it
    uses that fixture, else SQLite); all closed after the test."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else None
    made = []

    def _make(given=None, **sections):
        rt = backend.runtime(given, **sections) if backend else runtime(given, **sections)
        made.append(rt)
        return rt, webapp(rt)

    yield _make
    for rt in made:
        rt.close()


def run_cli(
    config: Path, *args: str, env: dict[str, str] | None = None, pythonpath: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a `python serve.py` command on ``config`` (``pythonpath``: as for ``serve``)."""
    return subprocess.run(
        [sys.executable, str(REPO / "serve.py"), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
        env={
            **os.environ,
            **(env or {}),
            "PYTHONPATH": f"{pythonpath}:{REPO}" if pythonpath else str(REPO),
        },
        check=False,
    )


# ------------------------------------------------------------------ store backends

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_url() -> str:
    """The PostgreSQL server for tests: $SWITCHBOARD_TEST_POSTGRES (then it must work),
    else the local default if one answers; otherwise the PostgreSQL variant skips."""
    url = os.environ.get("SWITCHBOARD_TEST_POSTGRES")
    try:
        import psycopg
    except ImportError:
        if url:
            pytest.fail(
                "SWITCHBOARD_TEST_POSTGRES is set but psycopg is not installed (pip install -e '.[postgres]')"
            )
        pytest.skip("PostgreSQL tests need psycopg (pip install -e '.[postgres]') and a server")
    try:
        with psycopg.connect(url or DEFAULT_PG, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        if url:
            pytest.fail(f"SWITCHBOARD_TEST_POSTGRES is set but PostgreSQL does not answer: {exc}")
        pytest.skip(f"no PostgreSQL at {DEFAULT_PG} and SWITCHBOARD_TEST_POSTGRES unset")
    return url or DEFAULT_PG


@pytest.fixture
def postgres_url():
    """The PostgreSQL server's URL; skips (or fails, when $SWITCHBOARD_TEST_POSTGRES is
    set) as ``_postgres_url`` says."""
    return _postgres_url()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    """Run the test once on SQLite and once on PostgreSQL: a ``tests.helpers.Backend``
    with ``.name``, ``.store()``, ``.url(tmp, name)`` and ``.runtime(plugins, **sections)``
    (on PostgreSQL each store in its own schema, dropped after the test)."""
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    chosen = Backend("postgres", _postgres_url())
    try:
        yield chosen
    finally:
        chosen.close()
