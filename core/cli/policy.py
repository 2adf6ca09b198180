"""Commands for changing policy safely: ``revisions`` (which configurations were loaded,
and what changed between two) and ``purge`` (recorded callbacks past their retention).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from core import revisions as revs
from core.cli.context import CliError, pass_runtime
from core.runtime import Runtime
from core.store import Store, redact_url
from core.cli.calls import iso as utc

_json = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.command(help="configuration revisions loaded, or what changed between two")
@click.argument("old", required=False)
@click.argument("new", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@_json
@pass_runtime
def revisions(runtime: Runtime, old: str | None, new: str | None, limit: int, as_json: bool) -> int:
    """With no argument, the latest loads (start or reload) of any server on this store,
    newest first, and the revision of the configuration file as it is now. With one
    revision, its content; with two, the settings that differ."""
    store = runtime.store
    current = revs.revision_of(revs.policy_content(runtime.settings))
    if old is None:
        loads = revs.loads(store, limit)
        if as_json:
            out = {
                "file": {"path": str(runtime.settings.path), "revision": current},
                "loads": [
                    {"revision": x.revision, "loaded_at": utc(x.loaded_at), "how": x.how,
                     "instance": x.instance}
                    for x in loads
                ],
            }
            print(json.dumps(out, indent=2))
            return 0
        for x in loads:
            print(f"{utc(x.loaded_at)}  {x.revision}  {x.how:<6}  {x.instance or '-'}")
        if not loads:
            print(f"no configuration loaded by a server on {redact_url(runtime.settings.store['url'])}")
        print(f"{runtime.settings.path}: revision {current}")
        return 0
    first = _content(store, old, current, runtime)
    if new is None:
        print(json.dumps(first, indent=2, sort_keys=True))
        return 0
    second = _content(store, new, current, runtime)
    lines = revs.differences(first, second)
    if as_json:
        print(json.dumps({"old": old, "new": new, "changes": lines}, indent=2))
        return 0
    for line in lines:
        print(line)
    if not lines:
        print("no difference")
    return 0


def _content(store: Store, revision: str, current: str, runtime: Runtime) -> dict[str, Any]:
    """A recorded revision's content, or the configuration file's (``file``)."""
    if revision in ("file", current):
        return revs.policy_content(runtime.settings)
    try:
        found = revs.content(store, revision)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if found is None:
        raise CliError(f"no revision {revision!r} recorded (see: switchboard revisions)")
    return found


@click.command(help="delete recorded callbacks older than store.retention_days")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(0, min_open=True),
    help="days (default: store.retention_days)",
)
@pass_runtime
def purge(runtime: Runtime, days: float | None) -> int:
    """The server does this hourly by itself; run it to purge at once, or with a shorter
    retention than configured."""
    days = runtime.settings.store["retention_days"] if days is None else days
    deleted = runtime.store.purge(time.time() - days * 86400)
    print(f"purged {deleted} recorded callback(s) older than {days:g} days")
    return 0
