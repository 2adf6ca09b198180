"""The real server: `python serve.py` as a subprocess, signed HTTP callbacks over TCP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import KEY, SECRET, ace, dice, ice, signed
from tests.test_plugins import make_dist

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def start(serve, tmp_path):
    """A server with the test plugins installed; ``extra`` is appended to its config."""
    site = tmp_path / "site"
    make_dist(site, "switchboard-test-plugins", "vip = tests.vip_plugin\nslow = tests.slow_plugin")
    count = iter(range(100))

    def _start(extra: str = "", enabled: str = "", insecure: bool = False):
        n = next(count)
        keys = (
            "insecure = true" if insecure else f'keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]'
        )
        return serve(
            f'[server]\nport = 0\n[sinch]\n{keys}\n[store]\nurl = "sqlite:///sb{n}.db"\n'
            f"[plugins]\nenabled = [{enabled}]\n{extra}",
            name=f"config{n}",
            pythonpath=str(site),
        )

    return _start


def test_real_server_answers_signed_callbacks(start):
    server = start('[plugins.vip]\ncallers = ["+12015555555"]\n', enabled='"vip"')
    status, ctype, body = server.post(ice("srv-1", cli="12015555555"))
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {
        "instructions": [{"name": "say", "text": "Welcome back"}],
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 3600},
    }
    assert json.loads(server.post(ace("srv-1"))[2]) == {"action": {"name": "continue"}}
    assert server.post(dice("srv-1"))[::2] == (200, b"")
    assert server.post(dice("srv-1"))[::2] == (200, b"")  # duplicate: still 200, nothing new
    with urllib.request.urlopen(
        server.url.replace("/sinch/callback", "/healthz"), timeout=5
    ) as health:
        assert json.loads(health.read()) == {"status": "ok"}
    assert server.stop() == 0
    lines = [
        json.loads(line.split("switchboard.callback ", 1)[1])
        for line in server.log.splitlines()
        if "switchboard.callback " in line
    ]
    assert [(entry["event"], entry["outcome"]) for entry in lines] == [
        ("ice", "connectPstn"),
        ("ace", "continue"),
        ("dice", "ok"),
        ("dice", "duplicate"),
    ]


def test_real_server_rejects_bad_requests(start):
    server = start()
    body, headers = signed(ice("srv-2"))
    assert (
        server.post(None, body=body, headers={**headers, "Authorization": "application x:y"})[0]
        == 401
    )
    assert server.post(None, body=body, headers={**headers, "Content-Type": "text/plain"})[0] == 415
    assert server.post(None, body=b"{", headers=signed(b"{")[1])[0] == 400
    big, big_headers = signed(ice("srv-2", pad="x" * 100_000))
    status, ctype, reply = server.post(None, body=big, headers=big_headers)
    assert (status, ctype) == (413, "application/json") and b"exceeds the limit" in reply
    request = urllib.request.Request(server.url, method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    with err.value as response:
        assert response.code == 405
        assert json.loads(response.read())["error"].startswith("method GET not allowed")
    assert SECRET not in server.log


def test_simulate_against_the_running_server(start, tmp_path):
    server = start()
    config = next(tmp_path.glob("config0.toml"))
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "serve.py"),
            "--config",
            str(config),
            "simulate",
            "ice",
            "--url",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr
    assert "< HTTP 200" in run.stdout
    answer = json.loads(
        "\n".join(
            line[2:]
            for line in run.stdout.splitlines()
            if line.startswith("< ") and "HTTP" not in line
        )
    )
    assert answer == {"action": {"name": "hangup"}}


def test_sigterm_finishes_in_flight_callbacks(start):
    server = start("[plugins.slow]\ndelay = 0.8\n", enabled='"slow"')
    result = {}
    worker = threading.Thread(target=lambda: result.update(reply=server.post(ice("srv-3"))))
    worker.start()
    time.sleep(0.3)  # the ICE is now inside the slow plugin
    assert server.stop() == 0
    worker.join(10)
    status, _, body = result["reply"]
    assert status == 200 and json.loads(body)["action"]["name"] == "connectPstn"
    assert "finishing in-flight callbacks" in server.log and "stopped" in server.log


def test_insecure_mode_warns_at_every_start(start):
    for _ in range(2):
        server = start(insecure=True)
        status, _, _ = server.post(
            None, body=json.dumps(ice()).encode(), headers={"Content-Type": "application/json"}
        )
        assert status == 200
        server.stop()
        assert "INSECURE: callback signatures are NOT verified" in server.log


def test_sigterm_does_not_wait_for_a_hung_plugin(start):
    server = start(
        '[plugins.slow]\ndelay = 60.0\ntimeout = 0.5\non_error = "abstain"\n', enabled='"slow"'
    )
    status, _, body = server.post(ice("srv-hung"))
    assert status == 200 and json.loads(body) == {"action": {"name": "hangup"}}  # cut at 0.5 s
    began = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - began < 10
    assert "exiting with 1 plugin hook(s) still running" in server.log
