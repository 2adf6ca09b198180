"""The example third-party package, installed as a user would: into a fresh virtual
environment beside the project, discovered through its entry point, listed by
`serve.py plugins`, enabled from config and merged into answers; its own tests run
there with the test kit."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from tests.helpers import KEY, SECRET

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "business_hours"


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True, clear=True)
    python = root / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(REPO),
            f"{EXAMPLE}[test]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # from a folder outside the checkout, so only what is installed in the venv counts
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


def test_example_package_is_discovered_enabled_and_merged(fresh_env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        '[plugins]\nenabled = ["business_hours", "allowlist"]\n'
        '[plugins.business_hours]\ndays = []\nclosed_prompt = "Closed for the test."\n'
        '[plugins.allowlist]\nallow = ["+15612600684"]\n'
    )
    serve = str(REPO / "serve.py")
    listed = run(fresh_env, tmp_path, serve, "--config", str(config), "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    hours = rows["business_hours"]
    assert (hours["version"], hours["builtin"], hours["precedence"]) == ("1.0.0", False, 1)
    assert (
        "package switchboard-business-hours" in hours["origin"]
        and "switchboard_ice" in hours["hooks"]
    )
    assert rows["allowlist"]["builtin"] is True and rows["allowlist"]["precedence"] == 2

    sim = run(
        fresh_env, tmp_path, serve, "--config", str(config), "simulate", "ice", "--in-process"
    )
    assert sim.returncode == 0, sim.stderr
    assert '"text": "Closed for the test."' in sim.stdout and '"name": "hangup"' in sim.stdout
    assert "business_hours: decided" in sim.stdout and "allowlist: decided" in sim.stdout


def test_example_package_tests_pass_with_the_test_kit(fresh_env, tmp_path):
    tests = run(
        fresh_env, tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout
