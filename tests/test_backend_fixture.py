"""The store backends the suite runs on: without the postgres extra the PostgreSQL
variants skip, saying why; with $SWITCHBOARD_TEST_POSTGRES set they fail instead.

Each case runs pytest in a subprocess whose ``sitecustomize`` makes ``import psycopg``
fail, as on an install without ``.[postgres]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Backend

REPO = Path(__file__).resolve().parent.parent

HIDE_PSYCOPG = '''
import sys


class NoPsycopg:
    """As if the postgres extra were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("psycopg", "psycopg_pool", "psycopg_binary"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoPsycopg())
'''

# one test on both backends, one that needs PostgreSQL only (through ``postgres_url``)
TESTS = [
    "tests/test_store.py::test_migrations_apply_once_in_order",
    "tests/test_health.py::test_readyz_is_503_within_the_bound_while_postgres_is_unreachable",
]


def _pytest_without_psycopg(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(HIDE_PSYCOPG)
    base = {k: v for k, v in os.environ.items() if k != "SWITCHBOARD_TEST_POSTGRES"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *TESTS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**base, "PYTHONPATH": f"{tmp_path}:{REPO}", **env},
        check=False,
    )


def test_without_psycopg_the_postgres_variants_skip_with_the_reason(tmp_path):
    run = _pytest_without_psycopg(tmp_path, {})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 2 skipped" in run.stdout
    reason = "PostgreSQL tests need psycopg (pip install -e '.[postgres]') and a server"
    assert run.stdout.count(reason) == 2, run.stdout


def test_without_psycopg_a_requested_postgres_fails_loudly(tmp_path):
    run = _pytest_without_psycopg(
        tmp_path, {"SWITCHBOARD_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:1/none"}
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed, 2 errors" in run.stdout
    assert "SWITCHBOARD_TEST_POSTGRES is set but psycopg is not installed" in run.stdout


def test_a_backend_is_sqlite_or_postgres_with_a_server(tmp_path):
    sqlite = Backend("sqlite")
    assert (sqlite.name, repr(sqlite)) == ("sqlite", "Backend('sqlite')")
    assert sqlite.url(tmp_path, "one") == f"sqlite:///{tmp_path}/one.db"
    store = sqlite.store()
    try:
        assert store.backend == "sqlite"
    finally:
        store.close()
    sqlite.close()  # nothing to drop
    for name, url in (("postgres", ""), ("sqlite", "postgresql://x"), ("mysql", "")):
        with pytest.raises(ValueError):
            Backend(name, url)
