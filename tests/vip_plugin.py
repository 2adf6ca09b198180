"""A small third-party-style plugin used by the tests: VIP callers get a direct line.

It is registered through a real entry point (a generated ``.dist-info`` folder) in
``test_plugins.py`` and ``test_server.py``, exactly as a pip-installed package would be.
"""

from __future__ import annotations

from core import pass_runtime
from core.config import Key
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.store import Migration
from core.svaml import ConnectPstn, Say

seen_calls: list[str] = []


@hookimpl
def switchboard_config_keys():
    return {
        "callers": Key(list, [], "caller numbers (E.164) that are VIPs"),
        "line": Key(str, "+15612600684", "where VIP calls go"),
    }


@hookimpl
def switchboard_store_migrations():
    return [
        Migration(1, ("CREATE TABLE vip_calls (callid TEXT PRIMARY KEY, caller TEXT NOT NULL)",))
    ]


@hookimpl
def switchboard_ice(event, ctx):
    if event.cli_e164 not in ctx.config["callers"]:
        return None
    with ctx.store.transaction() as tx:
        tx.execute(
            "INSERT INTO vip_calls (callid, caller) VALUES (?, ?)", (event.callid, event.cli_e164)
        )
    return Decision.propose(
        ConnectPstn(number=ctx.config["line"], max_duration=3600),
        "VIP caller",
        instructions=[Say(text="Welcome back")],
    )


@hookimpl
def switchboard_register_commands(cli):
    @cli.command(help="list VIP calls")
    @pass_runtime
    def vip(runtime):
        return _list(runtime)


def _list(runtime):
    rows = runtime.store.query("SELECT callid, caller FROM vip_calls ORDER BY callid")
    for callid, caller in rows:
        print(f"{callid} {caller}")
    print(f"{len(rows)} VIP call(s)")
    return 0
