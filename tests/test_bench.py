"""The in-process benchmark keeps working (its figures are quoted in bench/RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_inprocess_benchmark_runs_and_reports_cpu_per_callback():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "inprocess.py"), "dice", "-n", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^dice: \d+ µs CPU and \d+ µs wall per callback over 20 ", run.stdout, re.M)
