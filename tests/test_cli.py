"""The command line: click's group in-process (CliRunner), and `python serve.py` as a
user runs it for what only a real process shows (signals, pipes, ports, exit status)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from core import logs
from core.cli.main import make_cli, register_plugin_commands
from core.cli.simulate import target
from core.config import load
from core.plugins import PluginError, make_plugins
from core.server import listen_file, listening
from tests.cli_runner import cli
from tests.helpers import KEY, SECRET, wait_for
from tests.test_plugins import make_dist

REPO = Path(__file__).resolve().parent.parent
BASE = f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'


def config(tmp_path: Path, text: str = "", *, enabled: str = '"cmds"', name: str = "c") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"{BASE}[plugins]\nenabled = [{enabled}]\n{text}")
    return path


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The command-adding test plugin, installed (an entry point on sys.path)."""
    root = tmp_path / "site"
    make_dist(root, "switchboard-cmds", "cmds = tests.cli_plugin\nhijack = tests.cli_plugin:Hijack")
    monkeypatch.syspath_prepend(str(root))
    return root


# ---------------------------------------------------------------- in-process


def test_plugin_command_gets_a_started_runtime_and_its_status_is_the_exit_status(site, tmp_path):
    path = config(tmp_path)
    ran = cli(path, "where")
    assert ran.returncode == 0, ran.stderr
    assert f"config {path}" in ran.stdout and "store sqlite" in ran.stdout
    assert "plugins cmds" in ran.stdout and "started True" in ran.stdout
    assert cli(path, "where", "--status", "3").returncode == 3


def test_help_lists_plugin_commands_and_a_broken_config_still_gets_help(site, tmp_path):
    listed = cli(config(tmp_path), "--help")
    assert listed.returncode == 0
    assert "flood" in listed.stdout and "where" in listed.stdout and "simulate" in listed.stdout
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nport = 'x'\n")
    helped = cli(broken, "--help")
    assert helped.returncode == 0 and "check" in helped.stdout and "flood" not in helped.stdout
    ran = cli(broken, "flood", "1")  # a plugin command needs the configuration
    assert ran.returncode == 2
    assert ran.stderr.startswith("error: cannot start: server.port: expected")


def test_a_plugin_cannot_replace_a_command(site, tmp_path):
    ran = cli(config(tmp_path, enabled='"cmds", "hijack"'), "flood", "1")
    assert ran.returncode == 2
    assert "plugin 'hijack' replaces the command(s) check" in ran.stderr
    with pytest.raises(PluginError, match="'hijack' replaces"):
        register_plugin_commands(make_cli(), make_plugins(["hijack"]))


def test_built_in_commands_do_not_load_plugin_commands(site, tmp_path):
    """Only a command line that needs them asks plugins for their commands."""
    group = make_cli()
    ran = CliRunner().invoke(group, ["--config", str(config(tmp_path)), "check"])
    assert ran.exit_code == 0, ran.output
    assert "flood" not in group.commands and not group.plugins_added


def test_version_and_usage_errors(tmp_path):
    ran = cli(tmp_path / "none.toml", "--version")
    assert ran.returncode == 0 and ran.stdout.startswith("switchboard ")
    assert cli(tmp_path / "none.toml", "simulate", "fax").returncode == 2
    missing = cli(tmp_path / "none.toml", "check")
    assert missing.returncode == 2
    assert (
        missing.stderr
        == f"error: cannot start: {tmp_path / 'none.toml'}: no such configuration file\n"
    )


def test_logs_are_json_lines_when_the_config_asks(tmp_path):
    path = config(tmp_path, '[logging]\nformat = "json"\n', enabled="")
    ran = cli(path, "inbox")  # starts the runtime: migrations are logged
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"].startswith("applied core migrations") for line in lines)
    (tmp_path / "env").mkdir()  # a new store: its migrations are logged again
    text = cli(
        config(tmp_path / "env", enabled=""), "inbox", env={"SWITCHBOARD_LOG_FORMAT": "json"}
    )
    assert json.loads(text.stderr.splitlines()[0])["level"] == "INFO"


def test_json_lines_carry_the_callid_extra_fields_and_a_callback_line_unquoted(capsys):
    undo = logs.setup("INFO", "json")
    try:
        log = logging.getLogger("switchboard.plugin.vip")
        token = logs.CALLID.set("call-7")
        try:
            log.info("looked up %s", "+1555", extra={"account": "acme"})
        finally:
            logs.CALLID.reset(token)
        log.warning("outside a call")
        logging.getLogger("switchboard.callback").info(
            json.dumps({"callid": "call-8", "event": "ice", "latency_ms": 1.5})
        )
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        undo()
    inside, outside, callback, failed = map(json.loads, capsys.readouterr().err.splitlines())
    assert inside["callid"] == "call-7" and inside["account"] == "acme"
    assert inside["message"] == "looked up +1555" and inside["logger"] == "switchboard.plugin.vip"
    assert "callid" not in outside and outside["level"] == "WARNING"
    assert callback["message"] == "callback" and callback["event"] == "ice"
    assert callback["callid"] == "call-8" and callback["latency_ms"] == 1.5
    assert "ValueError: bad" in failed["exception"]


def test_callid_filter_copies_the_context_variable(caplog):
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    token = logs.CALLID.set("abc")
    try:
        assert logs.CallidFilter().filter(record) and record.callid == "abc"
    finally:
        logs.CALLID.reset(token)
    given = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    given.callid = "mine"
    logs.CallidFilter().filter(given)
    assert given.callid == "mine"


def test_log_setup_is_undone():
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    undo = logs.setup("DEBUG", "text")
    assert root.level == logging.DEBUG and root.handlers != before[1]
    undo()
    assert (root.level, root.handlers) == before
    with pytest.raises(ValueError, match="text, json"):
        logs.setup("INFO", "xml")


def test_simulate_target(tmp_path):
    path = config(tmp_path, "[server]\nport = 8123\n", enabled="")
    settings = load(path)
    assert target(settings, str(path), None, None) == "http://127.0.0.1:8123/sinch/callback"
    assert target(settings, str(path), None, 9) == "http://127.0.0.1:9/sinch/callback"
    assert target(settings, str(path), "http://x/y", 9) == "http://x/y"
    listen_file(path).write_text(json.dumps({"url": "http://127.0.0.1:1/a", "pid": os.getpid()}))
    assert listening(path) == "http://127.0.0.1:1/a"
    assert target(settings, str(path), None, None) == "http://127.0.0.1:1/a"
    gone = subprocess.Popen(["true"])
    gone.wait()
    listen_file(path).write_text(json.dumps({"url": "http://127.0.0.1:1/a", "pid": gone.pid}))
    assert listening(path) is None  # a server killed without a chance to remove its file


# ---------------------------------------------------------------- real processes


def run(path: Path, *args: str, site: Path | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "serve.py"), "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(site),
        check=False,
        **kw,
    )


def _env(site: Path | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{site}:{REPO}" if site else str(REPO)}


def start(path: Path, *args: str, site: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """``python serve.py --config path *args``; returns it and the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), "--config", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(site),
    )
    line = proc.stdout.readline()
    if not line.startswith("switchboard listening on "):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"server did not start: {line!r}\n{err}")
    return proc, line.split()[3]


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_is_one_line(tmp_path, taken_port):
    ran = run(config(tmp_path, enabled=""), "--port", str(taken_port))
    assert ran.returncode == 2
    assert ran.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )
    assert "Traceback" not in ran.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_py_port_then_simulate_finds_the_server(tmp_path):
    """`python serve.py --port P` serves on P, not on the configured port; simulate
    reaches it without being told where, through the file the server keeps."""
    configured, port = free_port(), free_port()
    path = config(tmp_path, f"[server]\nport = {configured}\n", enabled="")
    proc, url = start(path, "--port", str(port))
    try:
        assert url == f"http://127.0.0.1:{port}/sinch/callback"
        assert json.loads(listen_file(path).read_text()) == {"url": url, "pid": proc.pid}
        found = run(path, "simulate", "ice", "--callid", "sim-found")
        assert found.returncode == 0, found.stderr
        assert "< HTTP 200" in found.stdout and "trace ice: rule" in found.stdout
        told = run(path, "simulate", "ice", "--port", str(port))
        assert told.returncode == 0, told.stderr
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert not listen_file(path).exists()
    gone = run(path, "simulate", "ice")
    assert gone.returncode == 2
    assert (
        f"error: no server answered at http://127.0.0.1:{configured}/sinch/callback" in gone.stderr
    )


def test_sighup_during_start_up_is_a_reload_once_serving(site, tmp_path):
    marker, log = tmp_path / "configuring", tmp_path / "server.log"
    path = config(
        tmp_path,
        f'[server]\nport = 0\n[plugins.cmds]\nstart_delay = 1.5\nmarker = "{marker}"\n',
    )
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(site),
        )
    try:
        assert wait_for(marker.exists, timeout=20), "the plugin was never configured"
        proc.send_signal(signal.SIGHUP)  # the start-up is still in switchboard_configure
        line = proc.stdout.readline()
        assert line.startswith("switchboard listening on "), (line, proc.poll(), log.read_text())
        assert wait_for(lambda: "reloaded" in log.read_text(), timeout=20), log.read_text()
        assert "SIGHUP: reloading" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0, log.read_text()


def test_output_into_a_closed_pipe_ends_quietly(site, tmp_path):
    """`switchboard flood 200000 | head -1`: the reader leaves; no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "serve.py"),
            "--config",
            str(config(tmp_path)),
            "flood",
            "200000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(site),
    )
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=30)
    proc.stderr.close()
    assert err == ""
    assert proc.returncode == 1


def test_head_in_a_shell_pipeline(site, tmp_path):
    path = config(tmp_path)
    ran = subprocess.run(
        f"{sys.executable} {REPO / 'serve.py'} --config {path} flood 100000 | head -2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(site),
        check=False,
    )
    assert ran.stdout == "line 0\nline 1\n" and ran.stderr == ""


def test_version_from_a_checkout():
    ran = subprocess.run(
        [sys.executable, str(REPO / "serve.py"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(None),
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout.startswith("switchboard "), ran.stderr


def test_refused_postgresql_is_named_in_the_last_line(tmp_path):
    pytest.importorskip("psycopg")
    path = tmp_path / "c.toml"
    path.write_text(f'{BASE}[store]\nurl = "postgresql://postgres:s3cret@127.0.0.1:1/test"\n')
    began = time.monotonic()
    ran = run(path, "check")
    assert ran.returncode == 2
    assert ran.stderr.splitlines()[-1] == (
        "error: cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1/test: "
        "connection refused"
    )
    assert "s3cret" not in ran.stdout + ran.stderr
    assert time.monotonic() - began < 30


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted_and_numbers_kept():
    from core import csv_cell, csv_writer

    kept = ["+15612600684", "+442071110000", "plain", "", 3, -2.5, None, "a=b", "x-y"]
    assert [csv_cell(v) for v in kept] == kept
    for formula in ("=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", "+", "+1 555", "+0"):
        assert csv_cell(formula) == "'" + formula
    out = io.StringIO()
    csv_writer(out).writerow(["=1", "'\r=2", "+15612600684"])
    assert out.getvalue() == "'=1,\"'\r=2\",+15612600684\r\n"  # the CR inside is quoted
