"""Commands for changing policy safely: ``replay`` (what a candidate configuration
would have answered to the recorded calls), ``revisions`` (which configurations were
loaded, and what changed between two) and ``purge`` (recorded callbacks past their
retention).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from core import revisions as revs
from core.cli.context import CliError, invocation, pass_runtime
from core.runtime import Runtime
from core.store import Store, open_store, redact_url
from core.cli.calls import When
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
    current = revs.revision_for(runtime.settings)
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


@click.command(help="what a candidate configuration would have answered to the recorded calls")
@click.option(
    "--config",
    "candidate",
    required=True,
    type=click.Path(dir_okay=False),
    help="the candidate configuration (its store is not used: a sandbox is)",
)
@click.option("--since", type=When(), help="calls whose ICE arrived at or after (ISO, epoch, 1h)")
@click.option("--until", type=When(), help="calls whose ICE arrived before")
@click.option("--callid", help="only this call")
@click.option("--limit", type=click.IntRange(1), help="at most this many calls (the oldest)")
@click.option("--all", "show_all", is_flag=True, help="list every answer, not only the changed")
@_json
def replay(
    candidate: str,
    since: float | None,
    until: float | None,
    callid: str | None,
    limit: int | None,
    show_all: bool,
    as_json: bool,
) -> int:
    """Runs the candidate's plugins on the recorded ICE, ACE, PIE, DiCE and Notify
    callbacks of the calls in the window, in their original order, in a sandbox (a
    scratch copy of the store's plugin tables: nothing of the real store changes and
    nothing is sent), and compares each answer with the recorded one. The real store
    is the one of the running configuration (the top-level --config)."""
    from core.config import ConfigError
    from core.plugins import PluginError
    from core.replay import candidate_settings, describe_answer
    from core.replay import replay as run_replay

    try:
        settings = candidate_settings(candidate)
    except ConfigError as exc:
        raise CliError(f"candidate configuration: {exc}") from None
    real = invocation().settings
    store = open_store(real.store["url"], real.base_dir, pool_size=2)
    store.inspect_timeout = 3600.0  # the replay's own reads: not an operator's query
    try:
        if "callbacks" not in store.tables():
            raise CliError(
                f"no recorded callbacks in {redact_url(real.store['url'])}: "
                "is --config (before replay) the running server's configuration?"
            )
        try:
            report = run_replay(
                settings, store, since=since, until=until, callid=callid, limit=limit
            )
        except (ConfigError, PluginError) as exc:
            raise CliError(f"candidate configuration: {exc}") from None
    finally:
        store.close()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    recorded = ", ".join(report.recorded_revisions) or "unknown"
    print(
        f"replayed {report.calls} call(s), {report.replayed} callback(s), with candidate "
        f"revision {report.candidate}; recorded answers from revision(s) {recorded}"
    )
    if report.rewound:
        print(f"state put back to the window's start: {', '.join(report.rewound)}")
    if report.without_body:
        print(f"{report.without_body} callback(s) had no recorded body: not replayed")
    print(f"{len(report.changed)} of {len(report.results)} answer(s) would change")
    for group in report.groups:
        print(f"  {group.text}")
    shown = report.results if show_all else report.changed
    if shown:
        print()
    for r in shown:
        cause = f"  [{r.plugin}: {r.rule}]" if r.plugin or r.rule else ""
        cause = cause.replace("[None: ", "[")
        print(
            f"{utc(r.at)} {r.callid} {r.event} {r.caller or '-'} -> {r.destination or '-'}: "
            f"{describe_answer(r.recorded)} (revision {r.revision or '?'}) => "
            f"{describe_answer(r.candidate)}{cause}"
        )
    print("\nlimits of a replay:")
    for line in report.limits():
        print(f"  - {line}")
    return 0
