"""Switchboard command line: serve (default), plugins, check, simulate, plugin commands.

python serve.py                      # serve config.toml with waitress
python serve.py plugins              # installed plugins, their hooks and precedence
python serve.py check                # validate the config, say what would load
python serve.py simulate ice         # send a signed ICE to the running server
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from core import config as config_mod
from core.config import ConfigError, Settings
from core.plugins import PluginError, Plugins, list_installed, make_plugins
from core.runtime import Runtime
from core.signing import format_timestamp, sign_headers
from core.store import SqliteStore, Store, StoreError, open_store, redact_url

DEFAULT_CONFIG = os.environ.get("SWITCHBOARD_CONFIG", "config.toml")
log = logging.getLogger("switchboard")
MAX_HEADER_BYTES = 16384  # request line and headers together (waitress's default: 256 kB)
QUEUE_WARNING_INTERVAL = 10.0  # seconds between waitress's "Task queue depth" warnings


class CliError(Exception):
    """A command failed with a message for the user."""


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


class Sparse(logging.Filter):
    """Lets one record through per ``interval`` seconds and counts the rest into it.

    waitress warns "Task queue depth is N" for every request that has to queue: under
    load that is a line per request, which floods the log and costs each request the
    formatting and writing of it. One line every few seconds says the same."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.next_at = 0.0
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.msg} ({self.held} more in the last {self.interval:g} s)"
            self.held = 0
        self.next_at = now + self.interval
        return True


def _load_settings(path: str) -> Settings:
    return config_mod.load(path)


# ---------------------------------------------------------------------------- serve


class Switch:
    """The WSGI app waitress serves: forwards to the current runtime's app, so that a
    reload swaps it between two requests while requests in flight finish on the old one."""

    def __init__(self, runtime: Runtime) -> None:
        from core.app import make_app

        self.runtime = runtime
        self.app = make_app(runtime)
        self.retired: list[Runtime] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

    def reload(self, config_path: str) -> bool:
        """Validate the configuration completely and switch to it; on any error keep
        the running one. Returns whether it switched."""
        from core.app import make_app

        old = self.runtime
        try:
            settings = _load_settings(config_path)
            fixed = ("host", "port", "threads")
            changed = [k for k in fixed if settings.server[k] != old.settings.server[k]]
            same_store = settings.store["url"] == old.settings.store["url"]
            runtime = Runtime.build(settings, store=old.store if same_store else None)
            try:
                app = make_app(runtime)
            except Exception:
                runtime.close(close_store=not same_store)
                raise
        except Exception as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return False
        if changed:
            log.warning(
                "reload: server.%s changes need a restart; the rest applies now",
                ", server.".join(changed),
            )
        self.runtime, self.app = runtime, app
        old.retire(close_store=not same_store)
        self.retired.append(old)
        log.info("reloaded %s: plugins %s", config_path, ", ".join(runtime.plugins.order) or "none")
        return True

    @property
    def inflight(self) -> int:
        return self.runtime.inflight + sum(r.inflight for r in self.retired)


def pin_cpu(setting: str) -> int | None:
    """Keep the process on one CPU (see ``server.cpu_affinity``); returns the CPU or None."""
    if setting == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        if len(allowed) < 2:
            return None
        cpu = allowed[os.getpid() % len(allowed)]  # instances on one machine spread out
    else:
        cpu = int(setting)
        if cpu not in allowed:
            raise CliError(f"server.cpu_affinity: CPU {cpu} is not available (allowed: {allowed})")
    os.sched_setaffinity(0, {cpu})
    return cpu


def exit_past_hung_hooks(code: int) -> None:
    """A hook still running after shutdown (a plugin stuck on a dead network call) would
    keep the interpreter from exiting, since it waits for worker threads: leave now."""
    import threading

    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("switchboard-hook") and t.is_alive()
    ]
    if stuck:
        log.warning("exiting with %d plugin hook(s) still running", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)


FRESH_CONNECTION_WAIT = 1.0  # seconds a drained connection may take to show its request


def _accept_backlog(server: Any) -> int:
    """Accept every connection waiting in the listen backlog; returns how many.

    The kernel completes TCP handshakes on its own and queues them until the server
    calls accept(); waitress accepts one per loop pass and none at all past its
    ``connection_limit`` (100 open channels), so under load hundreds of clients have
    connected and sent their request without waitress knowing. Closing the listening
    socket resets every one of them. Taking them all in first (the limit guards file
    descriptors in normal running, the backlog bounds what is added here) lets the
    drain answer them like the rest."""
    import select

    poller = select.poll()
    poller.register(server.socket.fileno(), select.POLLIN)
    taken = 0
    while poller.poll(0):
        before = len(server._map)
        server.handle_accept()  # waitress's own accept: a channel per connection
        if len(server._map) == before:  # nothing accepted: aborted, or out of descriptors
            break
        taken += 1
    return taken


def _draining(server: Any, switch: Switch, elapsed: float) -> bool:
    """Whether an accepted connection still waits for its answer.

    Counts callbacks in the app, requests waitress has read but not yet handed to a
    thread (its task queue), answers not yet flushed, requests partly read, and, for
    ``FRESH_CONNECTION_WAIT`` seconds, connections that have not sent a byte yet: one
    accepted from the backlog has its request in the socket buffer, read on the next
    loop pass; past that wait such a connection is an idle one and is closed."""
    from waitress.channel import HTTPChannel

    if switch.inflight:
        return True
    for ch in list(server._map.values()):
        if not isinstance(ch, HTTPChannel):
            continue
        if ch.requests or ch.total_outbufs_len or ch.request is not None:
            return True
        if ch.last_activity == ch.creation_time and elapsed < FRESH_CONNECTION_WAIT:
            return True  # accepted, nothing read yet
    return False


def _channel_class() -> type:
    """waitress's connection class, with two changes:

    * each request carries the moment it was read in full (``core.app.RECEIVED_HEADER``,
      overwriting any the client sent): a callback that waited in waitress's queue for a
      free thread has that much less of its budget left;
    * the errors waitress answers itself, before the app runs (413, 400, 431, 501), keep
      their status but get the app's short JSON body ``{"error": ...}`` instead of a
      text quoting the offending input whole.

    Both go through waitress's channel internals (``parser_class``,
    ``error_task_class``), stable since waitress 1.x; pyproject pins waitress < 4."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.task import ErrorTask

    from core.app import RECEIVED_HEADER
    from core.pipeline import error_body

    class StampedParser(HTTPRequestParser):
        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            if self.completed:
                self.headers[RECEIVED_HEADER] = repr(time.monotonic())
            return consumed

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            body = error_body(f"{error.reason}: {error.body}").encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        parser_class = StampedParser
        error_task_class = JsonErrorTask

    return Channel


def cmd_serve(args: argparse.Namespace, runtime: Runtime) -> int:
    import waitress

    server_cfg = runtime.settings.server
    cpu = pin_cpu(server_cfg["cpu_affinity"])
    if cpu is not None:
        log.info("running on CPU %d (server.cpu_affinity = %s)", cpu, server_cfg["cpu_affinity"])
    host = args.host or server_cfg["host"]
    port = server_cfg["port"] if args.port is None else args.port
    switch = Switch(runtime)
    logging.getLogger("waitress.queue").addFilter(Sparse(QUEUE_WARNING_INTERVAL))
    server = waitress.create_server(
        switch,
        host=host,
        port=port,
        threads=server_cfg["threads"],
        # the app answers 413 as JSON up to this size; beyond it waitress refuses the
        # body itself, so an oversized request never fills memory
        max_request_body_size=max(server_cfg["max_body_bytes"] * 4, 1 << 20),
        # waitress quotes a malformed header line in full in its 400: this bounds that
        # echo (Sinch's headers are a few hundred bytes); larger headers get a 431
        max_request_header_size=MAX_HEADER_BYTES,
        ident="switchboard",
        clear_untrusted_proxy_headers=True,
    )
    server.channel_class = _channel_class()  # for the connections accepted from now on
    url = f"http://{host}:{server.effective_port}{server_cfg['callback_path']}"
    enabled = ", ".join(runtime.plugins.order) or "none"
    print(f"switchboard listening on {url} (plugins: {enabled})", flush=True)

    stopping: list[int] = []
    reloads: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGHUP, lambda signum, _frame: reloads.append(signum))
    loop = server.asyncore.loop
    try:
        while not stopping:
            loop(timeout=0.2, map=server._map, count=1, use_poll=True)
            if reloads:
                reloads.clear()
                log.info("SIGHUP: reloading %s", args.config)
                switch.reload(args.config)
            for old in [r for r in switch.retired if r.inflight == 0]:
                old.close_retired()
                switch.retired.remove(old)
        log.info("signal %s: no new connections; finishing in-flight callbacks", stopping[0])
        server.accepting = False
        taken = _accept_backlog(server)
        server.del_channel()
        server.socket.close()
        if taken:
            log.info("accepted %d connection(s) that were waiting in the listen backlog", taken)
        began = time.monotonic()
        grace_end = began + server_cfg["shutdown_grace"]
        while _draining(server, switch, time.monotonic() - began) and time.monotonic() < grace_end:
            loop(timeout=0.05, map=server._map, count=1, use_poll=True)
        if _draining(server, switch, time.monotonic() - began):
            log.warning(
                "shutdown grace of %s s passed with callbacks in flight",
                server_cfg["shutdown_grace"],
            )
    finally:
        server.task_dispatcher.shutdown(timeout=1)
        for old in switch.retired:
            old.close_retired()
        switch.runtime.close()
        log.info("stopped")
    return 0


# ---------------------------------------------------------------------------- plugins


def cmd_plugins(args: argparse.Namespace, settings: Settings | None) -> int:
    enabled = list(settings.enabled) if settings else []
    rows: list[dict[str, Any]] = []
    for info in list_installed():
        rank = enabled.index(info.name) + 1 if info.name in enabled else None
        rows.append(
            {
                "name": info.name,
                "version": info.version,
                "builtin": info.builtin,
                "precedence": rank,
                "enabled": rank is not None,
                "origin": info.origin,
                "hooks": list(info.hooks),
                **({"error": info.error} if info.error else {}),
            }
        )
    missing = [n for n in enabled if n not in {r["name"] for r in rows}]
    if args.json:
        print(json.dumps({"plugins": rows, "missing": missing}, indent=2))
    else:
        if not rows:
            print("no plugins installed (entry-point group 'switchboard')")
        for r in sorted(rows, key=lambda r: (r["precedence"] or 10**6, r["name"])):
            kind = "built-in" if r["builtin"] else "third-party"
            where = f"precedence {r['precedence']}" if r["enabled"] else "not enabled"
            print(f"{r['name']} {r['version'] or '-'} ({kind}, {where})")
            print(f"    from {r['origin']}")
            if r.get("error"):
                print(f"    ERROR: {r['error']}")
            else:
                print(f"    hooks: {', '.join(r['hooks']) or 'none'}")
        for name in missing:
            print(f"{name}: enabled in config but NOT INSTALLED")
    return 1 if missing or any("error" in r for r in rows if r["enabled"]) else 0


# ---------------------------------------------------------------------------- check


def _from(s: Settings, *keys: str) -> str:
    """Where settings came from, for ``check``: ``(from config file)``, ``(from
    $SWITCHBOARD_STORE_URL)``, ``(default)``; keys of mixed origin are grouped."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(s.source(key), []).append(key.rsplit(".", 1)[-1])
    if len(groups) == 1:
        (where,) = groups
        return "(default)" if where == "default" else f"(from {where})"
    parts = [
        f"{', '.join(names)} {'default' if where == 'default' else 'from ' + where}"
        for where, names in groups.items()
    ]
    return f"({'; '.join(parts)})"


def cmd_check(args: argparse.Namespace, runtime: Runtime) -> int:
    s = runtime.settings
    print(f"config {s.path}: OK")
    server = s.server
    print(
        f"  listen   http://{server['host']}:{server['port']}{server['callback_path']} "
        + _from(s, "server.host", "server.port", "server.callback_path")
    )
    if server["public_path_prefix"]:
        print(
            f"  signed path {server['public_path_prefix']}{server['callback_path']} "
            + _from(s, "server.public_path_prefix")
        )
    if s.sinch["insecure"]:
        print("  signatures NOT verified (sinch.insecure = true) " + _from(s, "sinch.insecure"))
    else:
        keys = ", ".join(
            f"{c.key} (secret {_from(s, f'sinch.keys[{i}].secret')[1:-1]})"
            for i, c in enumerate(s.credentials)
        )
        window = s.sinch["timestamp_window"]
        print(
            f"  signatures verified for key(s) {keys}; timestamp window {window:g} s "
            + _from(s, "sinch.timestamp_window")
            if window
            else f"  signatures verified for key(s) {keys}; timestamp check off "
            + _from(s, "sinch.timestamp_window")
        )
    print(
        f"  budget {s.policy['budget']:g} s {_from(s, 'policy.budget')}, "
        f"ICE default {s.policy['ice_default']} {_from(s, 'policy.ice_default')}"
    )
    print(
        f"  store {redact_url(s.store['url'])} ({runtime.store.backend}) {_from(s, 'store.url')}"
    )
    token = s.admin["token"]
    print(
        f"  admin token {'<redacted>' if token is not None else 'unset'} {_from(s, 'admin.token')}"
    )
    print(f"  plugins in precedence order: {', '.join(s.enabled) or 'none'}")
    for i, name in enumerate(s.enabled, 1):
        info = runtime.plugins.info[name]
        print(f"    {i}. {name} {info.version or ''} from {info.origin}")
        print(f"       hooks: {', '.join(info.hooks)}")
        for key, value in s.describe()["plugins"][name].items():
            print(
                f"       {key} = {json.dumps(value, default=str)} "
                + _from(s, f"plugins.{name}.{key}")
            )
    pending = runtime.pending_migrations()
    if pending:
        print(
            "  migrations to apply at start: " + "; ".join(f"{o} {v}" for o, v in pending.items())
        )
    else:
        print("  store schema up to date")
    return 0


# ---------------------------------------------------------------------------- simulate


def build_event(name: str, args: argparse.Namespace, application_key: str | None) -> dict[str, Any]:
    """A realistic callback body, shaped like Sinch's (SINCH.md section 2)."""
    callid = args.callid or str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base: dict[str, Any] = {"event": name, "callid": callid, "timestamp": now, "version": 1}
    if application_key:
        base["applicationKey"] = application_key
    to = {"type": "number", "endpoint": args.to}
    money = {"currencyId": args.currency, "amount": 0.0}
    if name == "ice":
        base.update(
            callResourceUrl=f"https://calling-use1.api.sinch.com/calling/v1/calls/id/{callid}",
            userRate=money,
            cli=args.cli.lstrip("+"),
            to=to,
            domain="pstn",
            originationType="PSTN",
            rdnis="",
        )
    elif name == "pie":
        base["menuResult"] = {
            "type": "sequence",
            "value": args.digits,
            "menuId": "main",
            "inputMethod": "dtmf",
        }
    elif name == "dice":
        base.update(
            reason="CALLERHANGUP",
            result="ANSWERED",
            debit=money,
            userRate=money,
            to={"type": "number", "endpoint": args.to.lstrip("+")},
            duration=args.duration,
            **{"from": args.cli.lstrip("+")},
        )
    elif name == "notify":
        base.update(
            type="recording_finished", destination="azure://switchboard/recordings/simulated.mp3"
        )
    return base


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    event = args.event.lower()
    key = settings.credentials[0] if settings.credentials else None
    body = json.dumps(
        build_event(event, args, key.key if key else None), separators=(",", ":")
    ).encode()
    server = settings.server
    signed_path = server["public_path_prefix"] + server["callback_path"]
    headers = (
        sign_headers(key, "POST", signed_path, body, timestamp=format_timestamp(datetime.now(UTC)))
        if key
        else {"Content-Type": "application/json; charset=utf-8"}
    )
    callid = json.loads(body)["callid"]
    print(f"> {event.upper()} call {callid}")
    print("> " + body.decode())
    if args.in_process:
        from core.app import make_app, wsgi_post

        runtime = Runtime.build(settings, store=_scratch_store() if not args.use_store else None)
        try:
            runtime.start(serving=False)  # one callback: no background workers
            status, text = wsgi_post(make_app(runtime), server["callback_path"], headers, body)
            _print_answer(status, text)
            _print_trace(runtime.store, callid)
        finally:
            runtime.close()
        return 0 if status == 200 else 1
    url = args.url or f"http://{server['host']}:{server['port']}{server['callback_path']}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            status, text = exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"no server answered at {url} ({reason}); start it with 'python serve.py' or use --in-process"
        ) from None
    _print_answer(status, text)
    try:  # the server records the trace in the store this config names
        store = open_store(settings.store["url"], settings.base_dir, pool_size=2)
    except (StoreError, ConfigError):
        return 0 if status == 200 else 1
    try:
        if not _print_trace(store, callid):
            print(
                f"(no trace of call {callid} in {redact_url(settings.store['url'])}: "
                "the server uses another store)"
            )
    finally:
        store.close()
    return 0 if status == 200 else 1


def _scratch_store() -> Store:
    return SqliteStore(":memory:")


def _print_answer(status: int, text: str) -> None:
    print(f"< HTTP {status}")
    if text:
        try:
            print("< " + json.dumps(json.loads(text), indent=2).replace("\n", "\n< "))
        except ValueError:
            print("< " + text)
    else:
        print("< (empty body)")


def _print_trace(store: Store, callid: str) -> bool:
    """Print the recorded traces of a call; False when there are none."""
    try:
        rows = store.traces(callid)
    except Exception:  # no schema yet: the server has not used this store
        return False
    for row in rows:
        trace = json.loads(row["trace"]) if row["trace"] else {}
        print(f"trace {row['event']}: rule {trace.get('rule')}, {trace.get('elapsed_ms', '?')} ms")
        for p in trace.get("plugins", []):
            detail = p.get("decision") or p.get("error") or ""
            print(
                f"  {p['plugin']}: {p['status']} in {p.get('ms')} ms {json.dumps(detail) if detail else ''}"
            )
        for c in trace.get("conflicts", []):
            print(
                f"  conflict: {c['plugin']} proposed {json.dumps(c['proposed'])}, lost to {c['lost_to']}"
            )
        for n in trace.get("notes", []):
            print(f"  note: {n}")
    return bool(rows)


# ---------------------------------------------------------------------------- trace


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    from core.app import trace_view

    store = open_store(settings.store["url"], settings.base_dir, pool_size=2)
    try:
        try:
            rows = store.traces(args.callid)
        except Exception:  # no schema yet
            rows = []
        if not rows:
            print(
                f"error: no callbacks recorded for call {args.callid!r} in {redact_url(settings.store['url'])}"
            )
            return 1
        if args.json:
            print(
                json.dumps(
                    {"callid": args.callid, "callbacks": [trace_view(r) for r in rows]}, indent=2
                )
            )
            return 0
        for row in rows:
            view = trace_view(row)
            answer = json.dumps(view["answer"]) if view["answer"] else "(200, empty body)"
            print(f"{row['event'].upper()} {row['state']}: {answer}")
        _print_trace(store, args.callid)
        return 0
    finally:
        store.close()


# ---------------------------------------------------------------------------- inbox


def cmd_inbox(args: argparse.Namespace, runtime: Runtime) -> int:
    """DiCE and Notify callbacks received (answered 200) whose plugin work has not all
    succeeded: waiting for a retry, or parked after policy.retry_attempts."""
    items = runtime.store.waiting(getattr(args, "callid", None))
    if args.inbox_command != "retry":
        if args.json:
            print(json.dumps({"waiting": [_inbox_row(i) for i in items]}, indent=2))
            return 0
        for item in items:
            row = _inbox_row(item)
            print(
                f"{item.callid} {item.event} {item.state} attempts={item.attempts} "
                f"next={row['next_attempt'] if item.state == 'retry' else '-'} "
                f"done={','.join(item.done) or '-'} last_error={item.last_error or '-'}"
            )
        print(f"{len(items)} callback(s) waiting")
        return 0
    now = time.time()
    # not one a server is processing right now
    todo = [i for i in items if i.state in ("retry", "parked") or i.lease_until < now]
    if args.callid and not todo:
        print(f"error: nothing waiting for call {args.callid!r}")
        return 1
    assert runtime.pipeline is not None
    failed = 0
    for item in todo:
        outcome = runtime.pipeline.retry(item)
        if outcome != "done":
            failed += 1
            left = runtime.store.waiting(item.callid)
            error = next((w.last_error for w in left if w.event == item.event), None)
            print(f"{item.callid} {item.event}: {outcome}" + (f" ({error})" if error else ""))
        else:
            print(f"{item.callid} {item.event}: done")
    print(f"{len(todo) - failed} of {len(todo)} done")
    return 1 if failed else 0


def _inbox_row(item: Any) -> dict[str, Any]:
    return {
        "callid": item.callid,
        "event": item.event,
        "state": item.state,
        "attempts": item.attempts,
        "done": list(item.done),
        "next_attempt": datetime.fromtimestamp(item.lease_until, UTC).isoformat(timespec="seconds"),
        "last_error": item.last_error,
    }


# ---------------------------------------------------------------------------- parser


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve.py", description="Switchboard: Sinch Voice callback server"
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="serve callbacks with waitress (the default)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port (0 picks a free port)")

    p = sub.add_parser("plugins", help="list installed plugins, their hooks and precedence")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("check", help="validate the configuration and say what would load")

    p = sub.add_parser(
        "trace", help="why a call was answered as it was: every callback's answer and trace"
    )
    p.add_argument("callid")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "inbox", help="received DiCE/Notify callbacks whose plugin work waits for a retry or is parked"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    inbox = p.add_subparsers(dest="inbox_command", metavar="ACTION")
    r = inbox.add_parser("retry", help="run the waiting work now (all of it, or one call's)")
    r.add_argument("callid", nargs="?")
    p.set_defaults(func=cmd_inbox)

    p = sub.add_parser(
        "simulate", help="send a realistic, signed callback and print the answer and trace"
    )
    p.add_argument("event", choices=["ice", "ace", "pie", "dice", "notify"], type=str.lower)
    p.add_argument("--to", default="+15612600684", help="dialled number (default: %(default)s)")
    p.add_argument("--cli", default="+12015555555", help="caller's number (default: %(default)s)")
    p.add_argument("--callid", help="call id (default: a new UUID)")
    p.add_argument("--duration", type=int, default=42, help="DiCE duration in seconds")
    p.add_argument("--digits", default="1", help="PIE digits")
    p.add_argument("--currency", default="USD")
    p.add_argument(
        "--url",
        help="callback URL of a running server (default: from the config); the trace is read "
        "from the config's store",
    )
    p.add_argument(
        "--in-process", action="store_true", help="answer with an in-process app instead"
    )
    p.add_argument(
        "--use-store",
        action="store_true",
        help="with --in-process: use the configured store, not a scratch one",
    )
    if plugins is not None:
        plugins.call_each("switchboard_add_commands", subparsers=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=DEFAULT_CONFIG)
    known, _ = pre.parse_known_args(argv)

    settings: Settings | None = None
    plugins: Plugins | None = None
    load_error: Exception | None = None
    try:
        settings = _load_settings(known.config)
        plugins = make_plugins(settings.enabled)
    except (ConfigError, PluginError) as exc:
        load_error = exc

    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command == "serve" and not hasattr(args, "host"):
        args.host, args.port = None, None
    _setup_logging(settings.logging["level"] if settings else "INFO")

    try:
        if command == "plugins":
            return cmd_plugins(args, settings)
        if load_error is not None:
            raise CliError(f"cannot start: {load_error}")
        assert settings is not None
        if command == "simulate":
            return cmd_simulate(args, settings)
        if command == "trace":
            return cmd_trace(args, settings)
        runtime = Runtime.build(settings, plugins=plugins)
        if command == "serve":
            code = cmd_serve(args, runtime)
            exit_past_hung_hooks(code)
            return code
        try:
            if command == "check":
                return cmd_check(args, runtime)
            runtime.start(serving=False)
            return int(args.func(args, runtime) or 0)
        finally:
            runtime.close()
    except (CliError, ConfigError, PluginError, StoreError) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, the address is not ours, a file is unreadable
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    """A failure is one line (database errors add DETAIL and HINT lines)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
