"""A stricter policy to try in shadow (``[plugins] shadow = ["strict"]``; test_shadow.py):
it denies the callers on its list, caps the others it knows, and, like a stateful
plugin (a velocity limit), counts the calls it saw in a table of its own, writing with
a transaction and with ``store.write``, at start-up too.

Its decisions' reasons say how many calls it had seen before, so a test can tell that
nothing it wrote in shadow was kept: in shadow that is always 0.
"""

from __future__ import annotations

from core.config import Key
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.store import Migration


@hookimpl
def switchboard_config_keys():
    return {
        "deny": Key(list[str], [], "callers (E.164) denied at ICE"),
        "cap": Key(dict[str, int], {}, "callers (E.164) capped at ICE, with the cap in seconds"),
        "deny_menu": Key(str, "", "the menu input (PIE) that hangs up"),
    }


@hookimpl
def switchboard_store_migrations():
    return [
        Migration(
            1,
            (
                "CREATE TABLE strict_seen (callid TEXT NOT NULL, event TEXT NOT NULL)",
                "CREATE TABLE strict_started (at INTEGER NOT NULL)",
            ),
        )
    ]


@hookimpl
def switchboard_startup(store):
    store.write("INSERT INTO strict_started (at) VALUES (1)")


def _count(ctx, event) -> int:
    """Record the callback; how many the table held before."""
    with ctx.store.transaction() as tx:
        (before,) = tx.one("SELECT COUNT(*) FROM strict_seen")
        tx.execute("INSERT INTO strict_seen (callid, event) VALUES (?, ?)", (event.callid, "tx"))
    ctx.store.write("INSERT INTO strict_seen (callid, event) VALUES (?, ?)", (event.callid, "w"))
    return int(before)


@hookimpl
def switchboard_ice(event, ctx):
    seen = _count(ctx, event)
    caller = event.cli_e164
    if caller in ctx.config["deny"]:
        return Decision.denied(f"caller on the list; {seen} seen before")
    if caller in ctx.config["cap"]:
        return Decision.cap(ctx.config["cap"][caller], f"capped; {seen} seen before")
    return None


@hookimpl
def switchboard_ace(event, ctx):
    _count(ctx, event)
    return None


@hookimpl
def switchboard_pie(event, ctx):
    _count(ctx, event)
    value = event.menu_result.value if event.menu_result is not None else None
    if ctx.config["deny_menu"] and value == ctx.config["deny_menu"]:
        return Decision.denied("menu input refused")
    return None


@hookimpl
def switchboard_dice(event, ctx):  # an observer: never called in shadow
    _count(ctx, event)
