"""The example third-party package, installed as a user would: into a fresh virtual
environment beside the project, discovered through its entry point, listed by
`switchboard plugins` (the console script installed with it), enabled from config and merged into answers; its own tests run
there with the test kit."""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.helpers import KEY, SECRET

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "business_hours"


def _copy(source: Path, names: list[str], into: Path) -> Path:
    """The files a build needs, copied: pip builds in the source folder, and its
    build/ and *.egg-info folders must not land in the checkout."""
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".*")
    into.mkdir()
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, into / name, ignore=skip)
        else:
            shutil.copy2(source / name, into / name)
    return into


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True, clear=True)
    python = root / "bin" / "python"
    sources = tmp_path_factory.mktemp("sources")
    project = _copy(
        REPO, ["pyproject.toml", "README.md", "LICENSE", "core", "plugins"], sources / "project"
    )
    example = _copy(EXAMPLE, [p.name for p in EXAMPLE.iterdir()], sources / "example")
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(project),
            f"{example}[test]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def run(cwd: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    # from a folder outside the checkout, so only what is installed in the venv counts
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )


def test_example_package_is_discovered_enabled_and_merged(fresh_env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        '[plugins]\nenabled = ["business_hours", "allowlist"]\n'
        '[plugins.business_hours]\ndays = []\nclosed_prompt = "Closed for the test."\n'
        '[plugins.allowlist]\nallow = ["+15612600684"]\n'
    )
    switchboard = fresh_env.parent / "switchboard"  # the console script
    assert run(tmp_path, switchboard, "--version").stdout == "switchboard 0.1.0\n"
    listed = run(tmp_path, switchboard, "--config", config, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    hours = rows["business_hours"]
    assert (hours["version"], hours["builtin"], hours["precedence"]) == ("1.0.0", False, 1)
    assert (
        "package switchboard-business-hours" in hours["origin"]
        and "switchboard_ice" in hours["hooks"]
    )
    assert rows["allowlist"]["builtin"] is True and rows["allowlist"]["precedence"] == 2

    sim = run(tmp_path, switchboard, "--config", config, "simulate", "ice", "--in-process")
    assert sim.returncode == 0, sim.stderr
    assert '"text": "Closed for the test."' in sim.stdout and '"name": "hangup"' in sim.stdout
    assert "business_hours: decided" in sim.stdout and "allowlist: decided" in sim.stdout


def test_example_package_tests_pass_with_the_test_kit(fresh_env, tmp_path):
    tests = run(
        tmp_path, fresh_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout
