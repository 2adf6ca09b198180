"""Several instances on one store: concurrent start-up, and start-up failures as one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.store import CORE_MIGRATIONS, StoreError, open_store
from plugins.credit import MIGRATIONS as CREDIT_MIGRATIONS
from plugins.crm import MIGRATIONS as CRM_MIGRATIONS
from tests.helpers import KEY, SECRET

REPO = Path(__file__).resolve().parent.parent

CONFIG = f"""
[server]
port = 0
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "@STORE@"
[plugins]
enabled = ["allowlist", "credit", "crm"]
[plugins.allowlist]
allow = ["+1*"]
[plugins.credit]
rates = {{ "+1" = "0.02" }}
account = "demo"
initial_accounts = {{ demo = "5.00" }}
"""


def _start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop a server (if still running) and return its stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_concurrent_migrations_on_a_fresh_database(tmp_path, backend):
    """Six stores open one fresh database and migrate it at the same instant (a barrier
    lines them up), many rounds: every one succeeds and each migration is applied once.
    Before, PostgreSQL failed with a UniqueViolation from the concurrent CREATE TABLE IF
    NOT EXISTS schema_migrations, and SQLite with "database is locked" from switching
    the new file to WAL."""
    owners = {"core": CORE_MIGRATIONS, "credit": CREDIT_MIGRATIONS, "crm": CRM_MIGRATIONS}
    for round_ in range(12 if backend.name == "postgres" else 40):
        url = backend.url(tmp_path, f"migrate-{round_}")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []
        applied: list[dict[str, list[int]]] = []

        def run():
            try:
                barrier.wait(timeout=10)
                store = open_store(url, tmp_path, pool_size=1)
                try:
                    applied.append({o: store.migrate(o, items) for o, items in owners.items()})
                finally:
                    store.close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == [], f"round {round_}: {errors[0]!r}"
        for owner, items in owners.items():  # each version applied by exactly one store
            done = sorted(v for a in applied for v in a[owner])
            assert done == [m.version for m in items], (round_, owner, done)


def test_instances_started_together_all_start(tmp_path, backend):
    """4 real `serve.py` processes started at the same moment on a fresh store, several
    rounds: every one starts (no raw UniqueViolation from a concurrent CREATE TABLE)."""
    rounds = 8 if backend.name == "postgres" else 2
    for round_ in range(rounds):
        config = tmp_path / f"round{round_}" / "config.toml"
        config.parent.mkdir()
        config.write_text(CONFIG.replace("@STORE@", backend.url(tmp_path, f"fresh-{round_}")))
        procs = [_start(config) for _ in range(4)]
        try:
            lines = [p.stdout.readline() for p in procs]
        finally:
            for p in procs:  # all at once: each takes a moment to shut down
                if p.poll() is None:
                    p.terminate()
            errs = [_stop(p) for p in procs]
        for line, err in zip(lines, errs, strict=True):
            assert line.startswith("switchboard listening on "), f"round {round_}: {line!r}\n{err}"
            assert "Traceback" not in err
        store = open_store(backend.url(tmp_path, f"fresh-{round_}"), tmp_path, pool_size=1)
        try:
            rows = store.query(
                "SELECT owner, COUNT(*) FROM schema_migrations GROUP BY owner ORDER BY owner"
            )
            accounts = store.query("SELECT COUNT(*) FROM credit_accounts")
        finally:
            store.close()
        assert rows == [
            ("allowlist", 1),
            ("core", len(CORE_MIGRATIONS)),
            ("credit", len(CREDIT_MIGRATIONS)),
            ("crm", len(CRM_MIGRATIONS)),
        ]
        assert accounts == [(1,)]


def _fails_in_one_line(config: Path) -> str:
    """Run `serve.py` on ``config``, which must fail to start; return its error line."""
    proc = _start(config)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert "listening" not in out
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_a_failed_migration_is_one_line(tmp_path, backend):
    url = backend.url(tmp_path, "broken")
    store = open_store(url, tmp_path, pool_size=1)
    try:  # a table in the way of crm's first migration
        store.write("CREATE TABLE crm_calls (x INTEGER)")
    finally:
        store.close()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("@STORE@", url))
    line = _fails_in_one_line(config)
    assert "migration 1 of 'crm' failed" in line and "crm_calls" in line


def test_an_unreachable_store_is_one_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("@STORE@", "sqlite:///missing/dir/x.db"))
    line = _fails_in_one_line(config)
    assert "cannot open SQLite store" in line


def test_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        text = CONFIG.replace("@STORE@", "sqlite:///sb.db").replace("port = 0", f"port = {port}")
        config.write_text(text)
        line = _fails_in_one_line(config)
    assert "in use" in line


def test_store_errors_are_one_line(tmp_path):
    """A database error with DETAIL lines still reads as one line."""
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    try:
        from core.store import Migration

        with pytest.raises(StoreError) as err:
            store.migrate("bad", [Migration(1, ("CREATE TABLE (",), "broken")])
        assert "\n" not in str(err.value) and "migration 1 of 'bad' failed" in str(err.value)
    finally:
        store.close()
