"""Documented environment variables win over config.toml, and `check` says so.

The bug this guards against: with the example config (which sets ``store.url``)
``SWITCHBOARD_STORE_URL`` was silently ignored, so "several instances, one store" ran
each instance on its own SQLite file.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from core import config as cfg
from core.config import ConfigError, Key
from plugins.crm import KEYS as CRM_KEYS
from tests.cli_runner import cli as run_cli
from tests.helpers import KEY, SECRET, ice

REPO = Path(__file__).resolve().parent.parent
BASE = {"sinch": {"keys": [{"key": KEY, "secret": SECRET}]}}
PG_URL = "postgresql://app:hunter2@db.internal:5432/calls"


def _parse(data, env):
    return cfg.parse({**BASE, **data}, None, env=env)


def test_store_url_from_environment_wins_over_the_file():
    file = {"store": {"url": "sqlite:///switchboard.db"}}
    s = _parse(file, {"SWITCHBOARD_STORE_URL": PG_URL})
    assert s.store["url"] == PG_URL
    assert s.sources["store.url"] == "$SWITCHBOARD_STORE_URL"
    assert s.source("store.url") == "$SWITCHBOARD_STORE_URL"
    s = _parse(file, {})
    assert s.store["url"] == "sqlite:///switchboard.db"
    assert s.sources["store.url"] == "file" and s.source("store.url") == "config file"
    s = _parse({}, {})
    assert s.store["url"] == "sqlite:///switchboard.db" and s.sources["store.url"] == "default"
    assert s.sources["store.pool_size"] == "default" and s.sources["server.port"] == "default"


def test_admin_token_from_environment_wins_over_the_file():
    s = _parse(
        {"admin": {"token": "file-token-0123456789"}},
        {"SWITCHBOARD_ADMIN_TOKEN": "env-token-0123456789"},
    )
    assert s.admin["token"] == "env-token-0123456789"
    assert s.sources["admin.token"] == "$SWITCHBOARD_ADMIN_TOKEN"
    assert s.describe()["admin"]["token"] == "<redacted>"
    # the environment's value is held to the same rules as the file's
    with pytest.raises(ConfigError, match="admin.token: use at least 16 characters"):
        _parse({}, {"SWITCHBOARD_ADMIN_TOKEN": "short"})


def test_set_but_empty_is_set_and_validated():
    with pytest.raises(ConfigError, match=r"store.url \(from \$SWITCHBOARD_STORE_URL\)"):
        _parse({"store": {"url": "sqlite:///switchboard.db"}}, {"SWITCHBOARD_STORE_URL": ""})


def test_plugin_env_keys_win_over_the_file():
    s = _parse(
        {
            "plugins": {
                "enabled": ["crm", "p"],
                "crm": {"webhook_url": "https://crm.example.com/x", "webhook_secret": "from-file"},
                "p": {"limit": 3, "price": 0.25, "token": "file-token"},
            }
        },
        {},
    )
    declared = {
        "crm": CRM_KEYS,
        "p": {
            "limit": Key(int, 1, "calls", env="P_LIMIT"),
            "price": Key(Decimal, Decimal(0), "per minute", env="P_PRICE"),
            "token": Key(str, None, "api token", secret=True, env="P_TOKEN"),
        },
    }
    env = {"SWITCHBOARD_CRM_SECRET": "from-env", "P_LIMIT": "7", "P_TOKEN": "env-token"}
    done = cfg.with_plugins(s, declared, env=env)
    assert done.plugins["crm"]["webhook_secret"] == "from-env"
    assert done.plugins["p"]["limit"] == 7 and done.plugins["p"]["token"] == "env-token"
    assert done.plugins["p"]["price"] == Decimal("0.25")  # P_PRICE unset: the file's
    assert done.sources["plugins.crm.webhook_secret"] == "$SWITCHBOARD_CRM_SECRET"
    assert done.sources["plugins.p.limit"] == "$P_LIMIT"
    assert done.sources["plugins.p.price"] == "file"
    assert done.sources["plugins.crm.batch"] == "default"
    assert done.sources["store.url"] == "default"  # the core's sources are kept
    with pytest.raises(ConfigError, match=r"plugins.p.limit: environment variable P_LIMIT"):
        cfg.with_plugins(s, declared, env={"P_LIMIT": "seven"})


def test_credential_secret_source_is_named():
    s = _parse(
        {"sinch": {"keys": [{"key": KEY, "secret_env": "SINCH_SECRET"}]}},
        {"SINCH_SECRET": SECRET},
    )
    assert s.sources["sinch.keys[0].secret"] == "$SINCH_SECRET"


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "conf" / "switchboard.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        '[store]\nurl = "sqlite:///from-file.db"\n'
        '[admin]\ntoken = "file-token-0123456789"\n'
        '[plugins]\nenabled = ["crm"]\n'
        '[plugins.crm]\nwebhook_url = "https://crm.example.com/x"\nwebhook_secret = "file-secret"\n'
        + extra
    )
    return path


def test_check_names_the_source_of_each_value(tmp_path):
    config = _config(tmp_path)
    other = tmp_path / "from-env.db"
    run = run_cli(
        config,
        "check",
        env={
            "SWITCHBOARD_STORE_URL": f"sqlite:///{other}",
            "SWITCHBOARD_ADMIN_TOKEN": "env-token-0123456789",
            "SWITCHBOARD_CRM_SECRET": "env-secret",
        },
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"store sqlite:///{other} (sqlite) (from $SWITCHBOARD_STORE_URL)" in out
    assert "admin token <redacted> (from $SWITCHBOARD_ADMIN_TOKEN)" in out
    assert 'webhook_secret = "<redacted>" (from $SWITCHBOARD_CRM_SECRET)' in out
    assert 'webhook_url = "https://crm.example.com/x" (from config file)' in out
    assert "batch = 20 (default)" in out
    assert "env-secret" not in out and "env-token" not in out and "file-secret" not in out
    assert not (config.parent / "from-file.db").exists()  # the file's store is never opened

    run = run_cli(config, "check", env={})
    assert run.returncode == 0, run.stderr
    assert "store sqlite:///from-file.db (sqlite) (from config file)" in run.stdout
    assert "admin token <redacted> (from config file)" in run.stdout


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_check_redacts_a_store_password_from_the_environment(tmp_path, backend):
    url = backend.url(tmp_path, "redacted")
    scheme, rest = url.split("://", 1)
    with_password = f"{scheme}://{rest.replace('@', ':hunter2@', 1)}"  # trust auth ignores it
    run = run_cli(_config(tmp_path), "check", env={"SWITCHBOARD_STORE_URL": with_password})
    assert run.returncode == 0, run.stderr
    assert ":***@" in run.stdout and "(postgresql) (from $SWITCHBOARD_STORE_URL)" in run.stdout
    assert "hunter2" not in run.stdout + run.stderr


def test_switchboard_config_selects_the_file(tmp_path):
    import subprocess
    import sys

    config = _config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, str(REPO / "serve.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SWITCHBOARD_CONFIG": str(config)},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"config {config}: OK" in run.stdout


# ------------------------------------------------------- two instances, one store from env


def test_two_instances_share_the_store_named_only_in_the_environment(serve, tmp_path, backend):
    """config.toml names a SQLite file; SWITCHBOARD_STORE_URL names one shared store.
    The balance covers exactly one call: if each instance used its own store, both
    calls would be connected."""
    config = f"""
[server]
port = 0
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "sqlite:///per-instance.db"
[plugins]
enabled = ["allowlist", "credit"]
[plugins.allowlist]
allow = ["+1*"]
[plugins.credit]
account_from = "fixed"
account = "shared"
rates = {{ "+1" = "0.60" }}
increments = "1/1"
minimum_seconds = 30
max_duration = 120
initial_accounts = {{ shared = "0.30" }}
"""
    env = {"SWITCHBOARD_STORE_URL": backend.url(tmp_path, "one-truth")}
    a = serve(config, name="env-a", env=env)
    b = serve(config, name="env-b", env=env)
    status, _, body = a.post(ice("env-call-1"))
    assert status == 200 and json.loads(body)["action"]["name"] == "connectPstn"
    status, _, body = b.post(ice("env-call-2"))
    assert status == 200 and json.loads(body)["action"]["name"] == "hangup"
    # the same callback redelivered to the other instance gets the first answer
    status, _, body = b.post(ice("env-call-1"))
    assert status == 200 and json.loads(body)["action"]["name"] == "connectPstn"
    assert not (tmp_path / "per-instance.db").exists()
    a.stop()
    b.stop()
    check = run_cli(a.config, "check", env=env)
    assert check.returncode == 0, check.stderr
    assert "(from $SWITCHBOARD_STORE_URL)" in check.stdout
