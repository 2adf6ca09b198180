"""Benchmark: Switchboard against the same work written by hand, and against the floor.

    python bench/run.py                 # the full run (about 8 minutes on 2 cores)
    python bench/run.py --quick         # fewer requests and rounds, to try it out
    python bench/run.py --smoke         # a few requests, to check that it all runs

Starts, in the same run, three servers on waitress with the same number of threads:

* ``switchboard``: the real server (``serve.py``, allowlist + credit + crm enabled,
  signatures on, SQLite store);
* ``samework``: ``bench/samework.py``, a single-file bottle app doing the same work for
  this traffic with the same guarantees (signature check, parse, dedupe per callid and
  event, allowlist, credit reservation at ICE, settlement and call record at DiCE, one
  durable SQLite commit before each answer), written without a plugin system;
* ``constant``: ``bench/bare.py``, a bottle app answering a constant JSON body.

wrk (installed with apt-get when missing) replays pre-signed callbacks, each exactly
once, to each server. Servers and wrk are pinned to different cores with taskset on a
multi-core machine. The three take turns (in a rotating order) over several rounds;
each figure is the median over rounds, and each ratio is the median of the ratios of
runs of the same round. Workloads: ICE (allowed, capped by credit), ACE, DiCE (settle +
call record) and a call mix (ICE, ACE, DiCE per call), at 1, 16 and 64 keep-alive
connections. Reports req/s, p50/p99 latency, server CPU per request and peak RSS of
each, Switchboard/samework and Switchboard/constant ratios, the unpinned/pinned
throughput of Switchboard at 64 connections, and its RSS growth from 1k to 100k
callbacks.
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


ACCOUNTS = {f"+1201555{i:04d}": "100000.00" for i in range(CALLERS)}  # as initial_accounts
APPS = ("switchboard", "samework", "constant")


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


def start_servers(
    work: Path, threads: int, pinned: bool, apps: tuple[str, ...] = APPS
) -> dict[str, Proc]:
    """Fresh stores, then the servers named in ``apps``, each on the server core."""
    server_cpu, _ = cores() if pinned else (None, None)
    for f in [*work.glob("bench.db*"), *work.glob("samework.db*")]:
        f.unlink()
    procs: dict[str, Proc] = {}
    try:
        for app in apps:
            if app == "switchboard":
                url = STORE["url"]
                if url.startswith("postgresql://"):  # a fresh schema for every server started
                    url = fresh_schema(url)
                (work / "config.toml").write_text(
                    CONFIG.format(threads=threads, synchronous=SYNCHRONOUS[0], store_url=url)
                )
                cmd = [
                    sys.executable,
                    str(REPO / "serve.py"),
                    "--config",
                    str(work / "config.toml"),
                ]
            elif app == "samework":
                (work / "accounts.json").write_text(json.dumps(ACCOUNTS))
                cmd = [
                    sys.executable,
                    str(REPO / "bench" / "samework.py"),
                    *("--port", "0", "--threads", str(threads), "--db", str(work / "samework.db")),
                    *("--seed", str(work / "accounts.json"), "--window", "3600"),
                    *("--key", KEY, "--secret", SECRET, "--synchronous", SYNCHRONOUS[0]),
                ]
            else:
                cmd = [
                    sys.executable,
                    str(REPO / "bench" / "bare.py"),
                    *("--port", "0", "--threads", str(threads)),
                ]
            procs[app] = Proc(cmd, work, server_cpu)
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return procs


def compare(work: Path, args: argparse.Namespace) -> dict:
    _, load_cpu = cores()
    procs = start_servers(work, args.threads, pinned=True)
    names = list(procs)
    results: dict = {}
    try:
        warm = make_workloads(work, "warm", args.warmup)
        for kind in ("ice", "ace", "dice", "mix"):
            for proc in procs.values():
                measure(proc, warm[kind], 16, load_cpu)
        for conns in args.conns:
            for rnd in range(args.rounds):
                files = make_workloads(
                    work, f"c{conns}r{rnd}", args.requests if conns > 1 else args.requests // 4
                )
                for kind in ("ice", "ace", "dice", "mix"):
                    shift = rnd % len(names)  # each server goes first in turn
                    for name in names[shift:] + names[:shift]:
                        res = measure(procs[name], files[kind], conns, load_cpu)
                        results.setdefault(f"{kind}@{conns}", {}).setdefault(name, []).append(res)
                        print(
                            f"  {kind:>4} c={conns:<3} round {rnd} {name:<11} {res['rps']:8.0f} req/s "
                            f"p50 {res['p50_us'] / 1000:6.2f} ms  p99 {res['p99_us'] / 1000:6.2f} ms  "
                            f"cpu {res['cpu_us_per_req']:6.0f} us/req  non-200 {res['bad']}",
                            flush=True,
                        )
        results["peak_rss_kib"] = {name: proc.rss_kib("VmHWM") for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.stop()
    return results


def unpinned(work: Path, args: argparse.Namespace) -> dict:
    """Switchboard, ICE at 64 connections: pinned (server core 0, wrk the rest) vs not."""
    out: dict = {}
    for pinned in (True, False):
        _, load_cpu = cores() if pinned else (None, None)
        sb = start_servers(work, args.threads, pinned=pinned, apps=("switchboard",))["switchboard"]
        try:
            runs = []
            for rnd in range(args.rounds):
                files = make_workloads(work, f"u{int(pinned)}r{rnd}", args.requests)
                runs.append(measure(sb, files["ice"], 64, load_cpu)["rps"])
            out["pinned" if pinned else "unpinned"] = statistics.median(runs)
        finally:
            sb.stop()
    out["ratio"] = out["unpinned"] / out["pinned"]
    return out


def growth(work: Path, args: argparse.Namespace) -> dict:
    """Switchboard's RSS after 1k and after N callbacks (a call mix)."""
    _, load_cpu = cores()
    sb = start_servers(work, args.threads, pinned=True, apps=("switchboard",))["switchboard"]
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

# (workload, connections) -> the targets of the issue: Switchboard against samework
CPU_TARGET = 1.3  # CPU per request at 16 connections, ICE, DiCE and mix
P99_TARGET = 1.5  # p99 at 1 and 16 connections, ICE, DiCE and mix
TARGET_KINDS = ("ice", "dice", "mix")


def _ratio(a: list[dict], b: list[dict], key: str) -> float:
    """Median over rounds of a[key] / b[key], runs of the same round paired."""
    return statistics.median(
        x[key] / y[key] if y[key] else float("inf") for x, y in zip(a, b, strict=True)
    )


def summarise(results: dict) -> list[dict]:
    rows = []
    for key, runs in results.items():
        if "@" not in key:
            continue
        row: dict = {"workload": key}
        for name, res in runs.items():
            row[name] = {
                "rps": statistics.median(r["rps"] for r in res),
                "p50_ms": statistics.median(r["p50_us"] for r in res) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in res) / 1000,
                "cpu_us": statistics.median(r["cpu_us_per_req"] for r in res),
                "non_200": sum(r["bad"] + r["errors_timeout"] for r in res),
            }
        sb = runs.get("switchboard")
        for other in ("samework", "constant"):
            if sb is None or other not in runs:
                continue
            row[f"vs_{other}"] = {
                "cpu": _ratio(sb, runs[other], "cpu_us_per_req"),
                "p99": _ratio(sb, runs[other], "p99_us"),
                "rps": _ratio(sb, runs[other], "rps"),
            }
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[str]:
    """One line per target of the issue that this run measured."""
    by = {r["workload"]: r for r in rows}
    lines = []
    for kind in TARGET_KINDS:
        row = by.get(f"{kind}@16")
        if row and "vs_samework" in row:
            got = row["vs_samework"]["cpu"]
            lines.append(
                f"{kind.upper()} CPU/req vs samework @16: {got:.2f}x (target <= {CPU_TARGET}x): "
                + ("met" if got <= CPU_TARGET else "NOT met")
            )
        for conns in (1, 16):
            row = by.get(f"{kind}@{conns}")
            if row and "vs_samework" in row:
                got = row["vs_samework"]["p99"]
                lines.append(
                    f"{kind.upper()} p99 vs samework @{conns}: {got:.2f}x (target <= {P99_TARGET}x): "
                    + ("met" if got <= P99_TARGET else "NOT met")
                )
    return lines


def report(rows: list[dict], extra: dict) -> str:
    names = [n for n in APPS if any(n in r for r in rows)]
    lines = []
    if rows:
        head = "| workload | " + " | ".join(
            f"{n} req/s | {n} p50 ms | {n} p99 ms | {n} CPU us/req" for n in names
        )
        lines += [head + " | non-200 |", "|---" * (1 + 4 * len(names) + 1) + "|"]
        for r in rows:
            cells = []
            for n in names:
                a = r[n]
                cells.append(
                    f"{a['rps']:.0f} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['cpu_us']:.0f}"
                )
            bad = sum(r[n]["non_200"] for n in names)
            lines.append(f"| {r['workload']} | " + " | ".join(cells) + f" | {bad} |")
        if all("vs_samework" in r and "vs_constant" in r for r in rows):
            lines += [
                "",
                "Switchboard / samework and Switchboard / constant (medians of per-round ratios):",
                "",
                (
                    "| workload | CPU/req vs samework | p99 vs samework | req/s vs samework "
                    "| CPU/req vs constant | p99 vs constant | req/s vs constant |"
                ),
                "|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                s, c = r["vs_samework"], r["vs_constant"]
                lines.append(
                    f"| {r['workload']} | {s['cpu']:.2f}x | {s['p99']:.2f}x | {s['rps']:.2f}x "
                    f"| {c['cpu']:.2f}x | {c['p99']:.2f}x | {c['rps']:.2f}x |"
                )
            lines += ["", *targets(rows)]
    if "peak_rss_kib" in extra:
        rss = extra["peak_rss_kib"]
        lines.append(
            "\nPeak RSS: " + ", ".join(f"{n} {rss[n] / 1024:.1f} MiB" for n in names if n in rss)
        )
    if "unpinned" in extra:
        u = extra["unpinned"]
        lines.append(
            f"Switchboard ICE at 64 connections: pinned {u['pinned']:.0f} req/s, unpinned "
            f"{u['unpinned']:.0f} req/s ({u['ratio']:.2f}x; target >= 0.5x)"
        )
    if "growth" in extra:
        g = extra["growth"]
        lines.append(
            f"Switchboard RSS after 1k callbacks {g['rss_1k_kib'] / 1024:.1f} MiB, after "
            f"{g['callbacks']} {g['rss_n_kib'] / 1024:.1f} MiB ({g['growth'] * 100:+.1f} %; "
            "target < 10 %)"
        )
    return "\n".join(lines)


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("wrk is missing: installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round of 1500 requests, growth 5k")
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="a few requests at 1 and 16 connections, no unpinned or growth phase (tests)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="waitress threads for every server"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=6000, help="requests per run at 16 and 64 connections"
    )
    parser.add_argument("--warmup", type=int, default=600, help="requests per workload first")
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--growth", type=int, default=100_000, help="callbacks for the RSS growth phase"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["compare", "unpinned", "growth"])
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="Switchboard's store: sqlite (default) or a postgresql:// URL, where each server "
        "gets a fresh schema (samework always uses SQLite)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default="full",
        help="SQLite durability of Switchboard and samework (default: full, the project's)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.growth = 1, 1500, 5000
    if args.smoke:
        args.rounds, args.requests, args.warmup, args.conns = 1, 120, 30, [1, 16]
        args.skip = sorted(set(args.skip) | {"unpinned", "growth"})
    if args.threads is None:
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
        "pinning": "servers on core 0, wrk on the others" if cores()[0] else "none (single core)",
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
