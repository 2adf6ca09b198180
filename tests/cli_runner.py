"""Commands run in-process with click's CliRunner, as ``switchboard --config PATH ...``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from core.cli.main import make_cli


@dataclass(frozen=True)
class Ran:
    """What a command did, shaped like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def cli(config: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Ran:
    """Run ``switchboard --config config *args`` in this process. An exception the
    command line does not turn into an exit status is raised here."""
    result = CliRunner().invoke(make_cli(), ["--config", str(config), *args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)
