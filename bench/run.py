"""Benchmark: Switchboard's full pipeline against the bare bottle + waitress floor.

    python bench/run.py                 # the full run (about 10 minutes on 2 cores)
    python bench/run.py --quick         # fewer requests and rounds, to try it out

Starts the real server (``serve.py``, allowlist + credit + crm enabled, signatures on,
SQLite store) and, in the same run, ``bench/bare.py`` (a bottle app on waitress answering
a constant JSON body), and drives both with wrk (installed with apt-get when missing)
replaying pre-signed callbacks, each exactly once. Server and wrk are pinned to
different cores with taskset on a multi-core machine. A and B alternate over several
rounds; each figure is the median over rounds, and ratios compare runs of the same
round. Workloads: ICE (allowed, capped by credit), ACE, DiCE (settle + CRM record) and
a call mix (ICE, ACE, DiCE per call), at 1, 16 and 64 keep-alive connections. Reports
req/s, p50/p99 latency, server CPU per request, peak RSS, the unpinned/pinned
throughput at 64 connections, and RSS growth from 1k to 100k callbacks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.signing import Credential, format_timestamp, sign_headers  # noqa: E402

KEY = "669E367E-6BBA-48AB-AF15-266871C28135"
SECRET = "BeIukql3pTKJ8RGL5zo0DA=="
CRED = Credential(KEY, SECRET)
CALLERS = 200
SYNCHRONOUS = ["full"]
STORE = {"url": "sqlite:///bench.db"}
TICKS = os.sysconf("SC_CLK_TCK")

CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0
threads = {{threads}}
[sinch]
timestamp_window = 3600
keys = [{{{{ key = "{KEY}", secret = "{SECRET}" }}}}]
[store]
url = "{{store_url}}"
sqlite_synchronous = "{{synchronous}}"
[logging]
level = "WARNING"
[plugins]
enabled = ["allowlist", "credit", "crm"]
[plugins.allowlist]
allow = ["+1*"]
max_duration = 3600
[plugins.credit]
account_from = "cli"
rates = {{{{ "+1" = "0.02" }}}}
increments = "60/60"
max_duration = 3600
initial_accounts = {{{{ {", ".join(f'"+1201555{i:04d}" = "100000.00"' for i in range(CALLERS))} }}}}
"""


# ------------------------------------------------------------------ request files


def event(kind: str, callid: str, n: int) -> dict:
    caller = f"1201555{n % CALLERS:04d}"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = {"event": kind, "callid": callid, "timestamp": now, "version": 1, "applicationKey": KEY}
    if kind == "ice":
        base.update(
            callResourceUrl=f"https://calling-use1.api.sinch.com/calling/v1/calls/id/{callid}",
            userRate={"currencyId": "USD", "amount": 0.02},
            cli=caller,
            to={"type": "number", "endpoint": "+14155550100"},
            domain="pstn",
            originationType="PSTN",
            rdnis="",
        )
    elif kind == "dice":
        base.update(
            reason="CALLERHANGUP",
            result="ANSWERED",
            debit={"currencyId": "USD", "amount": 0.02},
            userRate={"currencyId": "USD", "amount": 0.02},
            to={"type": "number", "endpoint": "14155550100"},
            duration=95,
            **{"from": caller},
        )
    return base


def write_requests(path: Path, events: list[dict]) -> None:
    ts = format_timestamp(datetime.now(UTC))
    with path.open("w") as out:
        for ev in events:
            body = json.dumps(ev, separators=(",", ":")).encode()
            auth = sign_headers(CRED, "POST", "/sinch/callback", body, timestamp=ts)[
                "Authorization"
            ]
            out.write(f"{ts}\t{auth}\t{body.decode()}\n")


def make_workloads(folder: Path, tag: str, n: int) -> dict[str, Path]:
    """ICE, ACE and DiCE files over the same n calls (so DiCE settles real
    reservations), and a mix file of fresh calls, ICE, ACE and DiCE each."""
    callids = [f"{tag}-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    files = {}
    for kind in ("ice", "ace", "dice"):
        files[kind] = folder / f"{tag}-{kind}.txt"
        write_requests(files[kind], [event(kind, c, i) for i, c in enumerate(callids)])
    mix_ids = [f"{tag}-m-{uuid.uuid4().hex[:12]}" for _ in range(n // 3 + 1)]
    mix = [event(kind, c, i) for i, c in enumerate(mix_ids) for kind in ("ice", "ace", "dice")][:n]
    files["mix"] = folder / f"{tag}-mix.txt"
    write_requests(files["mix"], mix)
    return files


# ------------------------------------------------------------------ processes


class Proc:
    def __init__(self, args: list[str], cwd: Path, cpus: str | None) -> None:
        cmd = (["taskset", "-c", cpus] if cpus else []) + args
        self.p = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.p.stdout.readline()
        if "listening on " not in line:
            self.p.kill()
            raise SystemExit(f"server did not start: {args}: {line!r}")
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.split(":")[2].split("/")[0])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_kib(self, key: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.p.stdout.close()


def wrk(port: int, file: Path, conns: int, cpus: str | None) -> dict:
    """Replay every request of ``file`` once; stop wrk as soon as the last answer is in."""
    threads = 1 if conns == 1 else 2
    marker = Path(tempfile.mkdtemp(prefix="wrk-")) / "done-"
    cmd = (["taskset", "-c", cpus] if cpus else []) + [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        "600s",
        "--timeout",
        "10s",
        "-s",
        str(Path(__file__).parent / "replay.lua"),
        f"http://127.0.0.1:{port}/sinch/callback",
        "--",
        str(file),
        str(threads),
        str(marker),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while len(list(marker.parent.glob("done-*"))) < threads and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"wrk did not finish {file.name}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    shutil.rmtree(marker.parent, ignore_errors=True)
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {err or out}")
    res = json.loads(line[len("WRKJSON ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


def measure(proc: Proc, file: Path, conns: int, cpus: str | None) -> dict:
    before = proc.cpu_seconds()
    res = wrk(proc.port, file, conns, cpus)
    res["cpu_us_per_req"] = (proc.cpu_seconds() - before) / res["requests"] * 1e6
    return res


# ------------------------------------------------------------------ phases


def cores() -> tuple[str | None, str | None]:
    n = os.cpu_count() or 1
    if n < 2 or not shutil.which("taskset"):
        return None, None
    return "0", ",".join(str(c) for c in range(1, n))


SCHEMAS: list[tuple[str, str]] = []


def fresh_schema(base: str) -> str:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    SCHEMAS.append((base, schema))
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def drop_schemas() -> None:
    if not SCHEMAS:
        return
    import psycopg

    for base, schema in SCHEMAS:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def start_pair(work: Path, threads: int, pinned: bool) -> tuple[Proc, Proc]:
    server_cpu, _ = cores() if pinned else (None, None)
    for f in work.glob("bench.db*"):
        f.unlink()
    url = STORE["url"]
    if url.startswith("postgresql://"):  # a fresh schema for every server started
        url = fresh_schema(url)
    (work / "config.toml").write_text(
        CONFIG.format(threads=threads, synchronous=SYNCHRONOUS[0], store_url=url)
    )
    sb = Proc(
        [sys.executable, str(REPO / "serve.py"), "--config", str(work / "config.toml")],
        work,
        server_cpu,
    )
    bare = Proc(
        [sys.executable, str(REPO / "bench" / "bare.py"), "--port", "0", "--threads", str(threads)],
        work,
        server_cpu,
    )
    return sb, bare


def compare(work: Path, args: argparse.Namespace) -> dict:
    _, load_cpu = cores()
    sb, bare = start_pair(work, args.threads, pinned=True)
    results: dict = {}
    try:
        warm = make_workloads(work, "warm", 600)
        for kind in ("ice", "ace", "dice", "mix"):
            measure(sb, warm[kind], 16, load_cpu)
            measure(bare, warm[kind], 16, load_cpu)
        for conns in args.conns:
            for rnd in range(args.rounds):
                files = make_workloads(
                    work, f"c{conns}r{rnd}", args.requests if conns > 1 else args.requests // 4
                )
                for kind in ("ice", "ace", "dice", "mix"):
                    order = [("switchboard", sb), ("bare", bare)]
                    if rnd % 2:
                        order.reverse()
                    for name, proc in order:
                        res = measure(proc, files[kind], conns, load_cpu)
                        results.setdefault(f"{kind}@{conns}", {}).setdefault(name, []).append(res)
                        print(
                            f"  {kind:>4} c={conns:<3} round {rnd} {name:<11} {res['rps']:8.0f} req/s "
                            f"p50 {res['p50_us'] / 1000:6.2f} ms  p99 {res['p99_us'] / 1000:6.2f} ms  "
                            f"cpu {res['cpu_us_per_req']:6.0f} us/req  non-200 {res['bad']}",
                            flush=True,
                        )
        results["peak_rss_kib"] = {
            "switchboard": sb.rss_kib("VmHWM"),
            "bare": bare.rss_kib("VmHWM"),
        }
    finally:
        sb.stop()
        bare.stop()
    return results


def unpinned(work: Path, args: argparse.Namespace) -> dict:
    """ICE at 64 connections: pinned (server core 0, wrk the rest) vs no pinning."""
    out: dict = {}
    for pinned in (True, False):
        _, load_cpu = cores() if pinned else (None, None)
        sb, bare = start_pair(work, args.threads, pinned=pinned)
        try:
            runs = []
            for rnd in range(args.rounds):
                files = make_workloads(work, f"u{int(pinned)}r{rnd}", args.requests)
                runs.append(measure(sb, files["ice"], 64, load_cpu)["rps"])
            out["pinned" if pinned else "unpinned"] = statistics.median(runs)
        finally:
            sb.stop()
            bare.stop()
    out["ratio"] = out["unpinned"] / out["pinned"]
    return out


def growth(work: Path, args: argparse.Namespace) -> dict:
    """RSS after 1k and after N callbacks (a call mix)."""
    server_cpu, load_cpu = cores()
    sb, bare = start_pair(work, args.threads, pinned=True)
    bare.stop()
    try:
        first = make_workloads(work, "g0", 1000)["mix"]
        measure(sb, first, 16, load_cpu)
        rss_1k = sb.rss_kib()
        done = 1000
        while done < args.growth:
            batch = min(20000, args.growth - done)
            measure(sb, make_workloads(work, f"g{done}", batch)["mix"], 16, load_cpu)
            done += batch
        rss_n = sb.rss_kib()
    finally:
        sb.stop()
    return {
        "callbacks": done,
        "rss_1k_kib": rss_1k,
        "rss_n_kib": rss_n,
        "growth": rss_n / rss_1k - 1,
    }


# ------------------------------------------------------------------ report


def summarise(results: dict) -> list[dict]:
    rows = []
    for key, runs in results.items():
        if "@" not in key:
            continue
        sb, bare = runs["switchboard"], runs["bare"]
        ratios = [s["rps"] / b["rps"] for s, b in zip(sb, bare, strict=True)]
        p99 = [s["p99_us"] / b["p99_us"] for s, b in zip(sb, bare, strict=True)]
        rows.append(
            {
                "workload": key,
                "rps": statistics.median(s["rps"] for s in sb),
                "bare_rps": statistics.median(b["rps"] for b in bare),
                "ratio": statistics.median(ratios),
                "p50_ms": statistics.median(s["p50_us"] for s in sb) / 1000,
                "p99_ms": statistics.median(s["p99_us"] for s in sb) / 1000,
                "bare_p99_ms": statistics.median(b["p99_us"] for b in bare) / 1000,
                "p99_ratio": statistics.median(p99),
                "cpu_us": statistics.median(s["cpu_us_per_req"] for s in sb),
                "bare_cpu_us": statistics.median(b["cpu_us_per_req"] for b in bare),
                "non_200": sum(s["bad"] for s in sb),
            }
        )
    return rows


def report(rows: list[dict], extra: dict) -> str:
    lines = [
        "| workload | req/s | bare req/s | ratio | p50 ms | p99 ms | bare p99 ms | p99 ratio | CPU us/req | bare CPU us/req | non-200 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['rps']:.0f} | {r['bare_rps']:.0f} | {r['ratio']:.2f}x | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['bare_p99_ms']:.2f} | {r['p99_ratio']:.2f}x | {r['cpu_us']:.0f} | "
            f"{r['bare_cpu_us']:.0f} | {r['non_200']} |"
        )
    if "peak_rss_kib" in extra:
        rss = extra["peak_rss_kib"]
        lines.append(
            f"\nPeak RSS: switchboard {rss['switchboard'] / 1024:.1f} MiB, bare {rss['bare'] / 1024:.1f} MiB"
        )
    if "unpinned" in extra:
        u = extra["unpinned"]
        lines.append(
            f"ICE at 64 connections: pinned {u['pinned']:.0f} req/s, unpinned {u['unpinned']:.0f} req/s "
            f"({u['ratio']:.2f}x)"
        )
    if "growth" in extra:
        g = extra["growth"]
        lines.append(
            f"RSS after 1k callbacks {g['rss_1k_kib'] / 1024:.1f} MiB, after {g['callbacks']} "
            f"{g['rss_n_kib'] / 1024:.1f} MiB ({g['growth'] * 100:+.1f} %)"
        )
    return "\n".join(lines)


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="waitress threads for both servers"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=6000, help="requests per run at 16 and 64 connections"
    )
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--growth", type=int, default=100_000, help="callbacks for the RSS growth phase"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["compare", "unpinned", "growth"])
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default) or a postgresql:// URL; each server gets a fresh schema there",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default="full",
        help="store.sqlite_synchronous of the server under test (default: the project's default)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.growth = 1, 1500, 5000
    if args.threads is None:
        sys.path.insert(0, str(REPO))
        from core.config import SERVER_KEYS

        args.threads = SERVER_KEYS["threads"].default
    SYNCHRONOUS[0] = args.sqlite_synchronous
    if args.store != "sqlite":
        STORE["url"] = args.store
    ensure_wrk()
    started = datetime.now(UTC)
    extra: dict = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        "threads": args.threads,
        "sqlite_synchronous": args.sqlite_synchronous,
        "store": "sqlite" if args.store == "sqlite" else "postgresql",
        "pinning": "server on core 0, wrk on the others" if cores()[0] else "none (single core)",
    }
    print(
        f"# Switchboard benchmark {extra['date']} on {extra['machine']}, waitress threads {args.threads}, "
        f"sqlite_synchronous {args.sqlite_synchronous}"
    )
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        work = Path(tmp)
        rows: list[dict] = []
        try:
            if "compare" not in args.skip:
                results = compare(work, args)
                rows = summarise(results)
                extra["peak_rss_kib"] = results["peak_rss_kib"]
                extra["runs"] = results
            if "unpinned" not in args.skip:
                extra["unpinned"] = unpinned(work, args)
            if "growth" not in args.skip:
                extra["growth"] = growth(work, args)
        finally:
            drop_schemas()
    text = report(rows, extra)
    print("\n" + text)
    if args.out:
        args.out.write_text(json.dumps({"summary": rows, **extra}, indent=2, default=str))
    print(f"\n(took {(datetime.now(UTC) - started).total_seconds():.0f} s)")


if __name__ == "__main__":
    main()
