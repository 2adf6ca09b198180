"""The cost of a callback without HTTP: signed callbacks driven through a WSGI app by
one thread, CPU time per callback.

    python bench/inprocess.py ice                    # 3000 ICE after 300 to warm up
    python bench/inprocess.py dice -n 2000           # DiCE of calls whose ICE came first
    python bench/inprocess.py ice --app samework     # the hand-written same-work app
    python bench/inprocess.py ice --profile          # then a profiled batch: top functions
    python bench/inprocess.py dice --blocks          # then CPU per step (verify, claim, ...)

``--app switchboard`` (default) is the configuration of ``bench/run.py`` (allowlist,
credit, crm, signatures on, SQLite in a scratch folder); ``--app samework`` is
``bench/samework.py`` seeded with the same accounts; ``--app constant`` is
``bench/bare.py``. Pin it for steadier figures: ``taskset -c 0 python
bench/inprocess.py ice``. Switchboard's hook workers are real threads, so the thread
hand-off is counted. ``--profile`` then drives a second batch of the same size under
cProfile in every thread of the process (the request thread, the hook workers, and the
rest) and lists the top functions per callback. ``--timer cpu`` (default) counts each
thread's CPU time, at the price of a system call per profiler event; ``--timer wall``
is cheaper but shows every wait (idle workers' too) as the own time of a lock acquire,
``fsync`` and the like. Either way the profiler inflates Python code (per function
call) far more than C code (an SQLite statement, an ``fsync``): compare the profiled
total with the unprofiled figure printed first, and use a sampling profiler (py-spy)
on ``bench/run.py``'s servers for shares of CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import logging
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: its configuration and request files)

from core.app import wsgi_post  # noqa: E402

Request = tuple[dict[str, str], bytes]
TICKS = os.sysconf("SC_CLK_TCK")


def requests(path: Path) -> list[Request]:
    out = []
    for line in path.read_text().splitlines():
        timestamp, auth, body = line.split("\t", 2)
        headers = {
            "Authorization": auth,
            "x-timestamp": timestamp,
            "Content-Type": "application/json; charset=utf-8",
        }
        out.append((headers, body.encode()))
    return out


class ThreadProfiles:
    """cProfile in every thread that runs Python code while it is on: the threads
    started later get it from ``threading.setprofile``, and those already running (the
    hook workers, idle at a queue) install theirs at their next Python call, which the
    Python-level hook in place until then catches."""

    def __init__(self, cpu: bool) -> None:
        self.cpu = cpu
        self.on = False
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def hook(self, frame: Any, event: str, arg: Any) -> None:
        if not self.on:
            return
        # replaces this hook in this thread
        profile = cProfile.Profile(time.thread_time) if self.cpu else cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()

    def install(self) -> None:
        """Before any thread that should be profiled starts (the hook stays in those
        threads, idle, until ``start``)."""
        threading.setprofile(self.hook)

    def start(self) -> None:
        self.on = True
        sys.setprofile(self.hook)  # this thread too

    def stop(self) -> pstats.Stats:
        """The calls completed so far, all threads merged. (Not ``Profile.disable``: it
        acts on the calling thread, and would book the other threads' unfinished frames,
        idle workers waiting at their queue, on this thread's clock.)"""
        self.on = False
        sys.setprofile(None)  # this thread's profiler
        threading.setprofile(None)  # type: ignore[arg-type]
        with self._lock:
            profiles = list(self.profiles)
        snapshots = []
        for profile in profiles:
            profile.snapshot_stats()  # what it has recorded (under the GIL: consistent)
            snapshots.append(SimpleNamespace(stats=profile.stats, create_stats=lambda: None))
        stats = pstats.Stats(snapshots[0])
        if snapshots[1:]:
            stats.add(*snapshots[1:])
        return stats


# The blocks --blocks times: "module:Class.method" or "module:function" (patched where the
# caller looks it up). Nested blocks include each other; hooks are timed per plugin.
BLOCKS = {
    "switchboard": (
        "core.signing:Verifier.verify",
        "core.pipeline:parse_event",
        "core.store.base:Store.claim",
        "core.pipeline:Pipeline._run_hooks",
        "core.dispatch:dispatch",
        "core.dispatch:Call.run",
        "core.plugins:Impl.__call__",
        "core.store.base:Store.run",
        "core.store.base:Store.traces",
        "core.store.sqlite:SqliteStore.write",
        "core.store.sqlite:SqliteStore.query",
        "core.store.sqlite:GroupFlush.wait",
        "core.store.sqlite:GroupFlush._fsync",
        "core.pipeline:Pipeline._merge",
        "core.pipeline:Pipeline._seal",
        "core.pipeline:Pipeline._finish",
        "core.store.base:Store.finish",
        "core.pipeline:Pipeline._respond",
        "core.pipeline:Pipeline._after_answer",
        "core.pipeline:Pipeline._observe",
        "core.pipeline:Pipeline._work",
        "core.pipeline:Pipeline._record",
        "core.pipeline:Pipeline.handle",
    ),
    "samework": (
        "samework:Signature.check",
        "samework:parse_body",
        "samework:Handler.handle",
        "samework:Handler.ice",
        "samework:Handler.decide",
        "samework:Handler.dice",
    ),
    "constant": (),
}


class Blocks:
    """Thread CPU time (``time.thread_time``) of chosen functions, inclusive, while on."""

    def __init__(self) -> None:
        self.on = False
        self.stats: dict[str, list[float]] = {}  # label -> [calls, seconds]

    def install(self, spec: str) -> None:
        import importlib

        module_name, _, path = spec.partition(":")
        *outer, name = path.split(".")
        try:
            owner: Any = importlib.import_module(module_name)
            for part in outer:
                owner = getattr(owner, part)
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        except (ImportError, AttributeError, KeyError):
            print(f"(--blocks: {spec} no longer exists; not timed)")
            return
        per_plugin = path == "Impl.__call__"
        stats, clock = self.stats, time.thread_time

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return original(*args, **kwargs)
            began = clock()
            try:
                return original(*args, **kwargs)
            finally:
                label = f"hook {args[0].plugin}.{args[0].hook}" if per_plugin else path
                entry = stats.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += clock() - began

        functools.update_wrapper(timed, original)
        setattr(owner, name, timed)

    @staticmethod
    def threads() -> dict[str, float]:
        """CPU seconds so far of each thread of this process, by thread name."""
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = names.get(int(task.name), f"thread {task.name}")
            name = name.rstrip("0123456789").rstrip("_-") or name  # one row per pool
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
        return out

    def report(self, n: int, real_cpu: float) -> None:
        print(
            f"\nblocks: thread CPU per block, inclusive of the blocks inside it (the hooks "
            f"run in a worker thread); unprofiled CPU {real_cpu * 1e6:.0f} µs per callback"
        )
        print(f"{'calls/cb':>9} {'µs/call':>8} {'µs/cb':>7}  block")
        for label, (calls, seconds) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            print(
                f"{calls / n:9.2f} {seconds / calls * 1e6:8.1f} {seconds / n * 1e6:7.1f}  {label}"
            )


def switchboard_app(work: Path, synchronous: str) -> tuple[Any, Callable[[], None]]:
    from core.app import make_app
    from core.config import load
    from core.runtime import Runtime

    (work / "config.toml").write_text(
        bench.CONFIG.format(threads=8, synchronous=synchronous, store_url="sqlite:///bench.db")
    )
    runtime = Runtime.build(load(work / "config.toml"))
    runtime.start()
    return make_app(runtime), runtime.close


def samework_app(work: Path, synchronous: str) -> tuple[Any, Callable[[], None]]:
    import samework

    db = samework.Db(str(work / "samework.db"), synchronous)
    db.seed(bench.ACCOUNTS)
    signature = samework.Signature(bench.KEY, bench.SECRET, 3600)
    return samework.make_app(samework.Handler(db, signature, outbox=False)), db.conn.close


def constant_app(work: Path, synchronous: str) -> tuple[Any, Callable[[], None]]:
    import bare

    return bare.make_app(), lambda: None


APPS = {"switchboard": switchboard_app, "samework": samework_app, "constant": constant_app}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=("ice", "ace", "dice", "mix"))
    parser.add_argument("-n", type=int, default=3000, help="callbacks measured")
    parser.add_argument("--app", choices=tuple(APPS), default="switchboard")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--profile", action="store_true", help="profile every thread")
    parser.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="--profile's clock: cpu (time.thread_time: no waits, but a system call per "
        "profiler event, which inflates Python code several times over) or wall (cProfile's "
        "own, cheap; every wait shows as the own time of a lock acquire, fsync and the like, "
        "idle workers' too)",
    )
    parser.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    parser.add_argument(
        "--sort",
        nargs="+",
        default=["cumulative", "tottime"],
        choices=("cumulative", "tottime", "calls"),
        help="orders of the --profile lists, one list each (default: cumulative, tottime)",
    )
    parser.add_argument("--profile-out", type=Path, help="also write the merged pstats here")
    parser.add_argument(
        "--blocks",
        action="store_true",
        help="then a batch with the thread CPU time of the main steps (BLOCKS) measured",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # "DiCE for a call never reserved" and the like

    profiles = ThreadProfiles(args.timer == "cpu") if args.profile else None
    if profiles:
        profiles.install()  # before the app starts its threads
    blocks = Blocks() if args.blocks else None
    if blocks:
        for spec in BLOCKS[args.app]:
            blocks.install(spec)
    work = Path(tempfile.mkdtemp(prefix="switchboard-inprocess-"))
    app, close = APPS[args.app](work, args.synchronous)

    def drive(batch: list[Request]) -> None:
        for headers, body in batch:
            status, text = wsgi_post(app, "/sinch/callback", headers, body)
            if status != 200:
                raise SystemExit(f"answered {status}: {text}")

    def prepared(tag: str, n: int) -> list[Request]:
        files = bench.make_workloads(work, tag, n)
        if args.kind == "dice":  # settle real reservations: their ICE first, unmeasured
            drive(requests(files["ice"]))
        return requests(files[args.kind])

    drive(prepared("warm", 300))
    measured = prepared("run", args.n)
    cpu, wall = time.process_time(), time.perf_counter()
    drive(measured)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    label = f"{args.kind}" if args.app == "switchboard" else f"{args.app} {args.kind}"
    print(
        f"{label}: {cpu / args.n * 1e6:.0f} µs CPU and {wall / args.n * 1e6:.0f} µs "
        f"wall per callback over {args.n} (sqlite_synchronous {args.synchronous})",
        flush=True,
    )
    if profiles:  # a second batch of the same size, profiled
        batch = prepared("profiled", args.n)
        profiles.start()
        drive(batch)
        stats = profiles.stop()
        report_profile(stats, args, cpu / args.n)
    if blocks:  # a batch of the same size, timed by blocks
        batch = prepared("blocks", args.n)
        before = blocks.threads()
        blocks.on = True
        drive(batch)
        blocks.on = False
        after = blocks.threads()
        blocks.report(args.n, cpu / args.n)
        print("\nCPU per callback by thread (/proc, clock ticks: coarse for small -n):")
        for name in sorted(after, key=lambda k: before.get(k, 0.0) - after[k]):
            used = after[name] - before.get(name, 0.0)
            if used > 0:
                print(f"  {used / args.n * 1e6:7.1f} µs  {name}")
    close()


def _where(path: str, line: int, name: str) -> str:
    if path == "~":
        return name  # a built-in
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        root = str(Path(__file__).resolve().parent.parent) + "/"
        path = path.removeprefix(root)
    return f"{path}:{line}({name})"


def report_profile(stats: pstats.Stats, args: argparse.Namespace, real_cpu: float) -> None:
    """The top functions per callback: calls, own and cumulative CPU (µs, under the
    profiler), and own CPU scaled to the unprofiled run by its share."""
    table = stats.stats  # type: ignore[attr-defined]
    n = args.n
    total = sum(tt for (_, _, tt, _, _) in table.values())
    calls = sum(nc for (_, nc, _, _, _) in table.values())
    print(
        f"\nprofiled, all threads, {args.timer} time: {total / n * 1e6:.0f} µs and "
        f"{calls / n:.0f} function calls per callback (unprofiled CPU {real_cpu * 1e6:.0f} µs: "
        f"the profile is {total / n / real_cpu:.1f}x that); 'scaled own' = share of the "
        "profiled time x unprofiled CPU"
    )
    rows = [
        (_where(*key), nc / n, tt / n * 1e6, ct / n * 1e6, tt / total)
        for key, (_, nc, tt, ct, _) in table.items()
    ]
    for order in args.sort:
        column = {"cumulative": 3, "tottime": 2, "calls": 1}.get(order, 3)
        print(f"\n--- top {args.top} by {order} (per callback)")
        print(f"{'calls':>7} {'own µs':>8} {'cum µs':>8} {'share':>6} {'scaled own':>10}  function")
        for where, nc, tt, ct, share in sorted(rows, key=lambda r: -r[column])[: args.top]:
            print(
                f"{nc:7.1f} {tt:8.1f} {ct:8.1f} {share * 100:5.1f}% "
                f"{share * real_cpu * 1e6:9.1f}  {where}"
            )
    if args.profile_out:
        stats.dump_stats(str(args.profile_out))
        print(f"\nmerged pstats written to {args.profile_out}")


if __name__ == "__main__":
    main()
