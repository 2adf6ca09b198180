"""The built-in commands: serve, plugins, check, trace, calls, inbox, simulate, console,
replay, revisions and purge.

They are registered exactly as plugin commands are, by a
``switchboard_register_commands(cli)`` function adding click commands to the group.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click

from core.cli.calls import calls_command
from core.cli.context import Invocation, invocation, pass_runtime
from core.cli.report import print_traces
from core.config import Settings
from core.plugins import list_installed
from core.runtime import Runtime
from core.store import open_store, redact_url

_json = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def switchboard_register_commands(cli: click.Group) -> None:
    from core.cli.policy import purge, replay, revisions
    from core.console.cli import console

    for command in (
        serve, plugins, check, trace, calls_command, inbox, simulate, console, replay,
        revisions, purge,
    ):
        cli.add_command(command)


# ---------------------------------------------------------------------------- serve


@click.command(help="serve callbacks with waitress (the default command)")
@click.option("--host", help="override server.host")
@click.option("--port", type=int, help="override server.port (0 picks a free port)")
def serve(host: str | None, port: int | None) -> int:
    from core import server

    signals = server.Signals()  # first: a SIGHUP during the start-up is a reload
    inv = invocation()
    runtime = Runtime.build(inv.settings, plugins=inv.plugins)  # serve() closes it
    code = server.serve(runtime, inv.config_path, signals, host=host, port=port)
    server.exit_past_hung_hooks(code)
    return code


# ---------------------------------------------------------------------------- plugins


@click.command(help="list installed plugins, their hooks and precedence")
@_json
def plugins(as_json: bool) -> int:
    settings = invocation().settings_or_none
    enabled = list(settings.enabled) if settings else []
    shadow = list(settings.shadow) if settings else []
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
                "shadow": info.name in shadow,
                "origin": info.origin,
                "hooks": list(info.hooks),
                **({"error": info.error} if info.error else {}),
            }
        )
    missing = [n for n in (*enabled, *shadow) if n not in {r["name"] for r in rows}]
    if as_json:
        print(json.dumps({"plugins": rows, "missing": missing}, indent=2))
    else:
        if not rows:
            print("no plugins installed (entry-point group 'switchboard')")
        for r in sorted(rows, key=lambda r: (r["precedence"] or 10**6, not r["shadow"], r["name"])):
            kind = "built-in" if r["builtin"] else "third-party"
            where = f"precedence {r['precedence']}" if r["enabled"] else "not enabled"
            if r["shadow"]:
                where = "in shadow: run and traced, never merged"
            print(f"{r['name']} {r['version'] or '-'} ({kind}, {where})")
            print(f"    from {r['origin']}")
            if r.get("error"):
                print(f"    ERROR: {r['error']}")
            else:
                print(f"    hooks: {', '.join(r['hooks']) or 'none'}")
        for name in missing:
            listed = "in plugins.shadow" if name in shadow else "enabled in config"
            print(f"{name}: {listed} but NOT INSTALLED")
    return 1 if missing or any("error" in r for r in rows if r["enabled"] or r["shadow"]) else 0


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


@click.command(help="validate the configuration and say what would load")
def check() -> int:
    runtime = invocation().runtime(start=False)
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
    print(f"  store {redact_url(s.store['url'])} ({runtime.store.backend}) {_from(s, 'store.url')}")
    token = s.admin["token"]
    print(
        f"  admin token {'<redacted>' if token is not None else 'unset'} {_from(s, 'admin.token')}"
    )
    print(
        f"  logging {s.logging['level']}, {s.logging['format']} {_from(s, 'logging.level', 'logging.format')}"
    )
    print(f"  plugins in precedence order: {', '.join(s.enabled) or 'none'}")
    numbered = [(f"{i}.", name) for i, name in enumerate(s.enabled, 1)]
    if s.shadow:
        print(f"  plugins in shadow (run and traced, never merged): {', '.join(s.shadow)}")
        numbered += [("shadow:", name) for name in s.shadow]
    for mark, name in numbered:
        info = runtime.plugins.info[name]
        print(f"    {mark} {name} {info.version or ''} from {info.origin}")
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


# ---------------------------------------------------------------------------- trace


@click.command(help="why a call was answered as it was: every callback's answer and trace")
@click.argument("callid")
@_json
def trace(callid: str, as_json: bool) -> int:
    from core.app import trace_view

    settings = invocation().settings
    store = open_store(settings.store["url"], settings.base_dir, pool_size=2)
    try:
        try:
            rows = store.traces(callid)
        except Exception:  # no schema yet
            rows = []
        if not rows:
            print(
                f"error: no callbacks recorded for call {callid!r} in {redact_url(settings.store['url'])}"
            )
            return 1
        if as_json:
            print(
                json.dumps({"callid": callid, "callbacks": [trace_view(r) for r in rows]}, indent=2)
            )
            return 0
        for row in rows:
            view = trace_view(row)
            answer = json.dumps(view["answer"]) if view["answer"] else "(200, empty body)"
            print(f"{row['event'].upper()} {row['state']}: {answer}")
        print_traces(store, callid)
        return 0
    finally:
        store.close()


# ---------------------------------------------------------------------------- inbox


@click.group(
    invoke_without_command=True,
    help="received DiCE/Notify callbacks whose plugin work waits for a retry or is parked",
)
@_json
@click.pass_context
def inbox(ctx: click.Context, as_json: bool) -> int:
    """DiCE and Notify callbacks received (answered 200) whose plugin work has not all
    succeeded: waiting for a retry, or parked after policy.retry_attempts."""
    if ctx.invoked_subcommand is not None:
        return 0
    items = invocation().runtime().store.waiting(None)
    if as_json:
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


@inbox.command(help="run the waiting work now (all of it, or one call's)")
@click.argument("callid", required=False)
@pass_runtime
def retry(runtime: Runtime, callid: str | None) -> int:
    items = runtime.store.waiting(callid)
    now = time.time()
    # not one a server is processing right now
    todo = [i for i in items if i.state in ("retry", "parked") or i.lease_until < now]
    if callid and not todo:
        print(f"error: nothing waiting for call {callid!r}")
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


# ---------------------------------------------------------------------------- simulate


@click.command(help="send a realistic, signed callback and print the answer and trace")
@click.argument(
    "event", type=click.Choice(["ice", "ace", "pie", "dice", "notify"], case_sensitive=False)
)
@click.option("--to", default="+15612600684", show_default=True, help="dialled number")
@click.option("--cli", "caller", default="+12015555555", show_default=True, help="caller's number")
@click.option("--callid", help="call id (default: a new UUID)")
@click.option(
    "--duration", type=int, default=42, show_default=True, help="DiCE duration in seconds"
)
@click.option("--digits", default="1", show_default=True, help="PIE digits")
@click.option("--currency", default="USD", show_default=True)
@click.option(
    "--url",
    help="callback URL of a running server (default: where the server started on this "
    "configuration listens, else the configured address); the trace is read from the "
    "configuration's store",
)
@click.option("--port", type=int, help="port of a running server on the configured host")
@click.option("--in-process", is_flag=True, help="answer with an in-process app instead")
@click.option(
    "--use-store",
    is_flag=True,
    help="with --in-process: use the configured store, not a scratch one",
)
def simulate(
    event: str,
    to: str,
    caller: str,
    callid: str | None,
    duration: int,
    digits: str,
    currency: str,
    url: str | None,
    port: int | None,
    in_process: bool,
    use_store: bool,
) -> int:
    from core.cli import simulate as sim

    inv: Invocation = invocation()
    settings = inv.settings
    call = sim.Call(callid, to, caller, duration, digits, currency)
    return sim.simulate(
        settings,
        event.lower(),
        call,
        url=sim.target(settings, inv.config_path, url, port),
        in_process=in_process,
        use_store=use_store,
    )
