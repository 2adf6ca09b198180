"""Where a server's CPU goes under the benchmark's load: py-spy samples of one of
``bench/run.py``'s servers while wrk replays one workload to it.

    python bench/sample_profile.py ice                        # Switchboard, ICE, 16 connections
    python bench/sample_profile.py dice --app samework        # the same-work app, DiCE
    python bench/sample_profile.py mix --requests 20000 --top 30 --raw /tmp/mix.txt

Needs py-spy (``pip install py-spy``; not a dependency of the project). The server runs
as in ``bench/run.py``: pinned to core 0, the benchmark's configuration, warmed up
first; py-spy and wrk run on the other cores. For DiCE, the ICE of the same calls is
replayed first, unsampled, so that the DiCE settle real reservations.

py-spy samples the thread holding the GIL (``--gil``): on a busy pinned core py-spy's
own idea of an "active" thread counts threads that were woken but wait for the CPU, so
waits would show as costs (``--all-active`` shows that). GIL-held samples times the
interval give the CPU time spent in Python; the report spreads it over functions by
their share of the samples, per request, with the CPU per request measured in the same
run (``/proc``); what ran without the GIL (SQLite's statements, ``fsync``, socket
calls, the kernel) is the remainder and is not split by function. Own: samples in which
the function is the innermost Python frame; inclusive: samples in which it is anywhere
on the stack. Sampling does not slow the
Python code down as cProfile does (``bench/inprocess.py --profile``), but it gives no
call counts. ``--syscalls`` counts system calls per request with ``strace -c`` instead.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: servers, workloads, wrk)


def short(frame: str) -> str:
    """``func (path:line)`` with the path cut to the project, site-packages or stdlib."""
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:
        where = where.removeprefix(str(bench.REPO) + "/")
    return f"{where} {name}"


def summarise(raw: Path, cpu_us: float, top: int, held: float | None = None) -> str:
    """The report: ``held`` is the share of the run's wall time in which some thread
    held the GIL (``--gil``), else None (every sample counts as CPU)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        files[frames[-1].split(":")[0]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return "no samples"
    if held is None:
        scale = cpu_us  # a sample's share of all samples is its share of the CPU
        lines = [f"{total} samples; {cpu_us:.0f} µs CPU per request in this run"]
    else:
        scale = cpu_us * held  # samples are GIL-held time only
        head = (
            f"{total} samples of the thread holding the GIL; {cpu_us:.0f} µs CPU per request "
            f"in this run, of which Python with the GIL ~{scale:.0f} µs (samples x interval: "
            f"{held * 100:.0f} % of the CPU time); the rest, ~{cpu_us - scale:.0f} µs, ran "
            "without the GIL: SQLite statements, fsync, socket calls, the kernel"
        )
        lines = [head]
    for title, table in (("inclusive", incl), ("own", own), ("own, by file", files)):
        lines += ["", f"top {top} by {title} samples: share, µs per request, function"]
        for frame, n in table.most_common(top):
            lines.append(f"{n / total * 100:6.1f}% {n / total * scale:7.1f} µs  {frame}")
    return "\n".join(lines)


def syscalls(summary: Path, requests: int) -> str:
    """strace -c's table as calls per request."""
    lines = ["system calls per request (strace -c -f):"]
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            if calls / requests >= 0.05:
                lines.append(f"  {parts[-1]:<16} {calls / requests:6.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=("ice", "ace", "dice", "mix"))
    parser.add_argument("--app", choices=bench.APPS, default="switchboard")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--requests", type=int, default=12000)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the server's system calls per request with strace -c instead (strace "
        "slows the server down, which changes how many events each poll returns)",
    )
    parser.add_argument(
        "--all-active",
        action="store_true",
        help="sample every thread py-spy thinks active instead of the GIL holder only (on a "
        "busy pinned core, threads woken but not yet running count as active: waits show)",
    )
    args = parser.parse_args()
    if args.syscalls:
        spy = shutil.which("strace") or ""
        if not spy:
            raise SystemExit("strace is not installed")
    else:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            raise SystemExit("py-spy is not installed: pip install py-spy")
    bench.ensure_wrk()
    _, load_cpu = bench.cores()
    with tempfile.TemporaryDirectory(prefix="switchboard-profile-") as tmp:
        work = Path(tmp)
        proc = bench.start_servers(work, args.threads, pinned=True, apps=(args.app,))[args.app]
        try:
            warm = bench.make_workloads(work, "warm", 600)
            for kind in ("ice", "ace", "dice", "mix"):
                bench.measure(proc, warm[kind], 16, load_cpu)
            files = bench.make_workloads(work, "prof", args.requests)
            if args.kind == "dice":
                bench.measure(proc, files["ice"], args.conns, load_cpu)
            raw = args.raw or work / "pyspy.txt"
            cmd = (["taskset", "-c", load_cpu] if load_cpu else []) + (
                [spy, "-c", "-f", "-p", str(proc.p.pid), "-o", str(raw)]
                if args.syscalls
                else [
                    spy,
                    "record",
                    *("-p", str(proc.p.pid), "-r", str(args.rate), "-f", "raw", "-o", str(raw)),
                    "--function",
                    "--nonblocking",
                    *([] if args.all_active else ["--gil"]),
                ]
            )
            sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            res = bench.measure(proc, files[args.kind], args.conns, load_cpu)
            sampler.send_signal(signal.SIGINT)
            _, err = sampler.communicate(timeout=60)
            if not raw.exists():
                raise SystemExit(f"{Path(spy).name} failed: {err.decode()[-2000:]}")
        finally:
            proc.stop()
        print(
            f"{args.app} {args.kind} at {args.conns} connections: {res['rps']:.0f} req/s, "
            f"{res['cpu_us_per_req']:.0f} µs CPU per request, non-200 {res['bad']}"
        )
        if args.syscalls:
            print(syscalls(raw, res["requests"]))
            return
        held = None
        if not args.all_active:  # GIL-held samples over the samples the whole time allows
            samples = sum(
                int(line.rpartition(" ")[2])
                for line in raw.read_text().splitlines()
                if line.rpartition(" ")[2].isdigit()
            )
            busy = res["requests"] * res["cpu_us_per_req"] / 1e6  # CPU seconds of the load
            held = min(1.0, samples / args.rate / busy)
        print(summarise(raw, res["cpu_us_per_req"], args.top, held))


if __name__ == "__main__":
    main()
