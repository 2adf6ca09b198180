"""The pipeline's own cost, without HTTP: signed callbacks driven through the WSGI app by
one thread, CPU time per callback.

    python bench/inprocess.py ice                # 3000 ICE after 300 to warm up
    python bench/inprocess.py dice -n 2000       # DiCE of calls whose ICE came first
    python bench/inprocess.py ice --profile      # and the 30 costliest functions (cProfile)

Same configuration as ``bench/run.py`` (allowlist, credit, crm, signatures on, SQLite in
a scratch folder). Pin it for steadier figures: ``taskset -c 0 python bench/inprocess.py
ice``. The hook workers are real threads, so the thread hand-off is counted; cProfile sees
only the calling thread (``--profile`` shows the core's side of a callback).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: its configuration and request files)

from core.app import make_app, wsgi_post  # noqa: E402
from core.config import load  # noqa: E402
from core.runtime import Runtime  # noqa: E402

Request = tuple[dict[str, str], bytes]


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=("ice", "ace", "dice", "mix"))
    parser.add_argument("-n", type=int, default=3000, help="callbacks measured")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # "DiCE for a call never reserved" and the like

    work = Path(tempfile.mkdtemp(prefix="switchboard-inprocess-"))
    (work / "config.toml").write_text(
        bench.CONFIG.format(threads=8, synchronous=args.synchronous, store_url="sqlite:///bench.db")
    )
    runtime = Runtime.build(load(work / "config.toml"))
    runtime.start()
    app = make_app(runtime)

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
    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    drive(measured)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    runtime.close()
    print(
        f"{args.kind}: {cpu / args.n * 1e6:.0f} µs CPU and {wall / args.n * 1e6:.0f} µs "
        f"wall per callback over {args.n} (sqlite_synchronous {args.synchronous})"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
