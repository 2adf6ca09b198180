"""Replay: what a candidate configuration would have answered to recorded calls.

``replay(candidate, store, ...)`` runs the candidate's plugins on the recorded callbacks
of the calls whose ICE arrived in a window, in the order they arrived, in a sandbox, and
compares each ICE, ACE and PIE answer with the one recorded:

* The sandbox is a private in-memory SQLite store: the core's and the candidate
  plugins' migrations applied, then every plugin table the real store has copied into
  it as it is now, then each plugin's ``switchboard_replay_rewind`` puts its state back
  as it was when the window starts (credit undoes the calls begun since; allowlist
  forgets the velocity counts made since). The real store is only read, with the
  operators' reads (``Store.inspect``: never the connection the callbacks read with, so a
  replay run from a live server's console does not hold up its callbacks): no balance,
  reservation, counter, call record or outbox row of it changes.
* Each recorded callback goes to the candidate's plugins as it would live
  (``Pipeline.replay``: the same timeouts, on_error and merge), with ``CallContext.now``
  at the time it arrived, so stateful plugins see the state evolve as the replay goes.
  DiCE and Notify are given to the plugins too (a reservation is settled before the
  next call of the account is decided), and the after-answer observers run; nothing is
  sent anywhere: the plugins start with ``serving=False`` (no outbox worker).
* ``Report`` lists every decision callback with its recorded answer (and the revision
  that decided it) against the candidate's, and groups the changes by what changed and
  which plugin and rule caused it. ``LIMITS`` states what a replay cannot know.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.config import Settings
from core.events import DECISION_EVENTS, EventError, parse_event
from core.runtime import Runtime
from core.store import SqliteStore, Store
from core.trace import Trace

# tables of the core's own: the sandbox starts with none of their rows
CORE_TABLES = frozenset(
    {"callbacks", "schema_migrations", "switchboard_health", "config_revisions", "config_loads"}
)
CHUNK = 500  # calls whose callbacks are read at once

LIMITS = (
    "The sandbox starts from the store as it is now; plugins that can (allowlist, credit) "
    "put their state back as it was when the window starts, the others replay from their "
    "current state.",
    "Callbacks are replayed one at a time in the order they arrived: what depended on "
    "concurrency or on a plugin's timing (timeouts, a store that failed) may differ.",
    "Only callbacks recorded with their body are replayed: those older than "
    "store.retention_days are purged, and those recorded before bodies were kept have none.",
    "Nothing outside the sandbox is called: DiCE and Notify reach the plugins in the "
    "sandbox only, and the plugins run without their background work (no CRM delivery).",
    "The sandbox is SQLite, whatever the real store.",
)

# what changed in an answer, as the summary says it
CHANGES = {
    "now-denied": "now denied",
    "now-allowed": "now allowed",
    "capped-shorter": "capped shorter",
    "capped-longer": "capped longer",
    "action-changed": "answered with another action",
    "instructions-changed": "answered with other instructions",
    "not-answered": "not answered before",
}


@dataclass(frozen=True)
class Replayed:
    """One recorded ICE, ACE or PIE and what the candidate answered."""

    callid: str
    event: str
    at: float
    caller: str | None
    destination: str | None
    revision: str | None  # of the recorded answer
    recorded: Mapping[str, Any] | None
    candidate: Mapping[str, Any] | None
    change: str  # "same" or a key of CHANGES
    plugin: str | None  # which plugin caused the change
    rule: str | None  # and why (its decision's reason, numbers masked)
    trace: Trace

    def to_dict(self) -> dict[str, Any]:
        return {
            "callid": self.callid,
            "event": self.event,
            "at": self.at,
            "caller": self.caller,
            "destination": self.destination,
            "revision": self.revision,
            "recorded": self.recorded,
            "candidate": self.candidate,
            "change": self.change,
            "plugin": self.plugin,
            "rule": self.rule,
            "trace": json.loads(self.trace.to_json()),
        }


@dataclass(frozen=True)
class Group:
    """Changed answers with the same change, plugin and rule."""

    change: str
    plugin: str | None
    rule: str | None
    callids: tuple[str, ...]
    destinations: str | None  # what their destinations have in common ("+44"), if anything
    same_destination: bool = False  # all to that one number

    @property
    def text(self) -> str:
        calls = f"{len(self.callids)} call{'s' if len(self.callids) != 1 else ''}"
        to = ""
        if self.destinations:
            to = f" to {self.destinations}{'' if self.same_destination else '*'}"
        by = f" by {self.plugin}" if self.plugin else ""
        why = f": {self.rule}" if self.rule else ""
        return f"{calls}{to} {CHANGES[self.change]}{by}{why}"


@dataclass
class Report:
    candidate: str  # the candidate configuration's revision
    since: float | None
    until: float | None
    calls: int = 0
    replayed: int = 0  # callbacks given to the plugins, DiCE and Notify included
    without_body: int = 0
    results: list[Replayed] = field(default_factory=list)
    rewound: tuple[str, ...] = ()  # plugins that put their state back to ``since``
    not_rewound: tuple[str, ...] = ()
    recorded_revisions: tuple[str, ...] = ()

    @property
    def changed(self) -> list[Replayed]:
        return [r for r in self.results if r.change != "same"]

    @property
    def groups(self) -> list[Group]:
        found: dict[tuple[str, str | None, str | None], list[Replayed]] = {}
        for r in self.changed:
            found.setdefault((r.change, r.plugin, r.rule), []).append(r)
        groups = []
        for (change, plugin, rule), rs in found.items():
            numbers = [r.destination for r in rs]
            groups.append(
                Group(
                    change,
                    plugin,
                    rule,
                    tuple(r.callid for r in rs),
                    _common(numbers),
                    len(set(numbers)) == 1,
                )
            )
        return sorted(groups, key=lambda g: (-len(g.callids), g.change, g.plugin or "", g.rule or ""))

    def limits(self) -> list[str]:
        out = list(LIMITS)
        if self.not_rewound:
            out.append(
                "Replayed from their current state (no switchboard_replay_rewind): "
                + ", ".join(self.not_rewound)
                + "."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "since": self.since,
            "until": self.until,
            "calls": self.calls,
            "replayed": self.replayed,
            "without_body": self.without_body,
            "compared": len(self.results),
            "changed": len(self.changed),
            "recorded_revisions": list(self.recorded_revisions),
            "rewound": list(self.rewound),
            "summary": [
                {
                    "text": g.text,
                    "change": g.change,
                    "plugin": g.plugin,
                    "rule": g.rule,
                    "calls": list(g.callids),
                }
                for g in self.groups
            ],
            "results": [r.to_dict() for r in self.results],
            "limits": self.limits(),
        }


def replay(
    candidate: Settings,
    store: Store,
    *,
    since: float | None = None,
    until: float | None = None,
    callid: str | None = None,
    limit: int | None = None,
    given: Mapping[str, object] | None = None,
    load_entrypoints: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Replay the recorded calls whose ICE arrived in ``[since, until)`` (or the one
    call ``callid``), the oldest ``limit`` of them, with ``candidate``'s plugins in a
    sandbox; ``store`` (the real one) is only read."""
    calls = _calls(store, since, until, callid, limit)
    start = since if since is not None else (calls[0][1] if calls else time.time())
    sandbox = SqliteStore(":memory:", synchronous="normal")
    runtime: Runtime | None = None
    try:
        runtime = Runtime.build(
            candidate, store=sandbox, given=given, load_entrypoints=load_entrypoints
        )
        migrations = runtime.migrations()
        for owner, items in migrations.items():
            sandbox.migrate(owner, items)
        _copy(store, sandbox)
        rewinders = {impl.plugin for impl in runtime.plugins.impls("switchboard_replay_rewind")}
        runtime.plugins.call_each("switchboard_replay_rewind", store=sandbox, since=start)
        pipeline = runtime.start(serving=False)
        report = Report(
            candidate=pipeline.revision,
            since=since,
            until=until,
            calls=len(calls),
            rewound=tuple(n for n in runtime.plugins.order if n in rewinders),
            not_rewound=tuple(
                n
                for n in runtime.plugins.order
                if n not in rewinders and n in migrations and migrations[n]
            ),
        )
        seen_revisions: dict[str, None] = {}
        for row in _callbacks(store, calls):
            cid, event_name, body, answer, trace_text, at, caller, destination = row
            if body is None:
                report.without_body += 1
                continue
            try:
                event = parse_event(body.encode())
            except EventError:
                report.without_body += 1
                continue
            traced = pipeline.replay(event, at)
            report.replayed += 1
            if progress is not None:
                progress(report.replayed)
            if event_name not in DECISION_EVENTS:
                continue
            recorded_trace = Trace.from_json(trace_text) if trace_text else None
            revision = recorded_trace.revision if recorded_trace else None
            if revision:
                seen_revisions[revision] = None
            recorded = json.loads(answer) if answer else None
            now = json.loads(traced.to_json())["answer"]
            change, plugin, rule = compare(recorded, now, traced)
            report.results.append(
                Replayed(
                    cid, event_name, at, caller, destination, revision, recorded, now,
                    change, plugin, rule, traced,
                )
            )
        report.recorded_revisions = tuple(seen_revisions)
        return report
    finally:
        if runtime is not None:
            runtime.close()
        else:
            sandbox.close()


def candidate_settings(path: str) -> Settings:
    """A candidate configuration file, validated as a server would (``ConfigError``)."""
    from core.config import load

    return load(path)


# ---------------------------------------------------------------------------- reading


def _calls(
    store: Store, since: float | None, until: float | None, callid: str | None, limit: int | None
) -> list[tuple[str, float]]:
    """The calls to replay: (callid, when its ICE arrived), oldest first."""
    where: list[str] = ["event = 'ice'"]
    params: list[Any] = []
    if callid is not None:
        where.append("callid = ?")
        params.append(callid)
    if since is not None:
        where.append("received_at >= ?")
        params.append(since)
    if until is not None:
        where.append("received_at < ?")
        params.append(until)
    sql = (
        f"SELECT callid, received_at FROM callbacks WHERE {' AND '.join(where)} "
        "ORDER BY received_at, callid"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [(c, at) for c, at in store.inspect(sql, params)]


def _callbacks(store: Store, calls: Sequence[tuple[str, float]]) -> Iterator[tuple[Any, ...]]:
    """Every recorded callback of these calls (``(callid, ICE time)``, oldest first), in
    the order they arrived, read ``CHUNK`` calls at a time: a chunk's callbacks are
    given out up to where the next chunk's calls begin, the later ones held back to be
    merged with that chunk's, so memory holds about one chunk whatever the window."""
    held: list[tuple[Any, ...]] = []
    seq = itertools.count()  # callbacks stamped alike keep the order they were read in
    for i in range(0, len(calls), CHUNK):
        chunk = [callid for callid, _ in calls[i : i + CHUNK]]
        marks = ", ".join("?" * len(chunk))
        rows = store.inspect(
            "SELECT callid, event, body, answer, trace, received_at, caller, destination "
            f"FROM callbacks WHERE callid IN ({marks})",
            chunk,
        )
        # the ICE's numbers for every callback of its call (only the ICE and DiCE have them)
        numbers = {r[0]: (r[6], r[7]) for r in rows if r[1] == "ice"}
        for r in rows:
            caller, destination = numbers.get(r[0], (r[6], r[7]))
            row = (*r[:6], caller, destination)
            heapq.heappush(held, (r[5], _ORDER.get(r[1], 9), next(seq), row))
        upto = calls[i + CHUNK][1] if i + CHUNK < len(calls) else math.inf
        while held and held[0][0] < upto:
            yield heapq.heappop(held)[3]
    while held:
        yield heapq.heappop(held)[3]


_ORDER = {"ice": 0, "ace": 1, "pie": 2, "notify": 3, "dice": 4}  # for callbacks stamped alike


# ---------------------------------------------------------------------------- the sandbox


def _copy(real: Store, sandbox: Store) -> None:
    """Copy every plugin table the sandbox has from the real store (the columns both
    have), as it is now."""
    present = set(real.tables())
    for table in sandbox.tables():
        if table in CORE_TABLES or table.startswith(("console_", "sqlite_")) or table not in present:
            continue
        has = set(_columns(real, table, real=True))
        wanted = [c for c in _columns(sandbox, table) if c in has]
        if not wanted:
            continue
        names = ", ".join(wanted)
        rows = real.inspect(f"SELECT {names} FROM {table}")
        insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(wanted))})"
        with sandbox.transaction() as tx:
            for row in rows:
                tx.execute(insert, [_plain(v) for v in row])


def _columns(store: Store, table: str, *, real: bool = False) -> list[str]:
    """A table's columns; the real store's read as an operator's (``Store.inspect``)."""
    read = store.inspect if real else store.query  # the sandbox is in memory: its own connection
    if store.backend == "sqlite":
        return [r[1] for r in read(f"PRAGMA table_info({table})")]
    return [
        r[0]
        for r in read(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    ]


def _plain(value: Any) -> Any:
    """A value read from PostgreSQL as SQLite stores it."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    return value


# ---------------------------------------------------------------------------- comparing


def compare(
    recorded: Mapping[str, Any] | None, candidate: Mapping[str, Any] | None, trace: Trace
) -> tuple[str, str | None, str | None]:
    """What changed from the recorded answer to the candidate's, and which plugin and
    rule of the candidate's trace caused it: ``(change, plugin, rule)``."""
    if recorded == candidate:
        return "same", None, None
    if recorded is None:
        return "not-answered", *_cause(trace, "decided")
    old, new = _action(recorded), _action(candidate)
    if old.get("name") != "hangup" and new.get("name") == "hangup":
        return "now-denied", *_cause(trace, "deny")
    if old.get("name") == "hangup" and new.get("name") not in (None, "hangup"):
        return "now-allowed", *_cause(trace, "decided")
    if old.get("name") == new.get("name"):
        before, after = old.get("maxDuration"), new.get("maxDuration")
        if before != after:
            shorter = after is not None and (before is None or after < before)
            kind = "capped-shorter" if shorter else "capped-longer"
            return kind, *_cause(trace, "cap")
        if old != new:
            return "action-changed", *_cause(trace, "decided")
        return "instructions-changed", *_cause(trace, "decided")
    return "action-changed", *_cause(trace, "decided")


def _action(answer: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (answer or {}).get("action") or {}


def _cause(trace: Trace, what: str) -> tuple[str | None, str | None]:
    """The plugin of the candidate's trace behind an answer, and its reason: the
    deniers for a denial, the capping plugin for a cap, else the deciding plugin; the
    core's own rule when no plugin decided (a fallback, a default)."""
    if what == "cap" and trace.capped_by:
        names: Sequence[str] = [trace.capped_by]
    elif what == "deny" and trace.rule != "deny":  # a fallback or a default: the core's
        names = []
    else:
        names = trace.decided_by
    for entry in trace.plugins:
        if entry.plugin in names:
            if entry.error:
                return entry.plugin, f"{entry.status} (on_error={entry.on_error})"
            reason = (entry.decision or {}).get("reason")
            return entry.plugin, mask(reason) if reason else None
    return None, f"rule {trace.rule}" if trace.rule else None


_NUMBER = re.compile(r"\+\d{5,}(?![\d*])")  # a phone number, not a pattern ("+44*")
_AMOUNT = re.compile(r"(?<![+\w*.])\d+(?:\.\d+)?")  # an amount, a duration


def mask(reason: str) -> str:
    """A decision's reason with its call's numbers and amounts masked, so that the
    same rule gives the same text for every call: ``+442079460000 denied by rule
    '+44*'`` -> ``<number> denied by rule '+44*'``. Quoted text (a rule, a name) is
    kept as it is: ``denied by rule '+442079460000'`` names its rule."""
    parts = _QUOTED.split(reason)
    return "".join(
        part if i % 2 else _AMOUNT.sub("<n>", _NUMBER.sub("<number>", part))
        for i, part in enumerate(parts)
    )


_QUOTED = re.compile(r"""('[^']*'|"[^"]*")""")


def _common(numbers: Sequence[str | None]) -> str | None:
    """The prefix every destination shares (at least a country code), or None."""
    present = [n for n in numbers if n]
    if len(present) != len(numbers) or not present:
        return None
    first, last = min(present), max(present)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    prefix = first[:n]
    return prefix if len(prefix) >= 2 and prefix.startswith("+") else None


def describe_answer(answer: Mapping[str, Any] | None) -> str:
    """An answer in a few words: ``connectPstn +15612600684 max 600 s``."""
    if answer is None:
        return "(none)"
    action = _action(answer)
    words = [str(action.get("name", "?"))]
    if action.get("number"):
        words.append(str(action["number"]))
    if action.get("maxDuration") is not None:
        words.append(f"max {action['maxDuration']} s")
    extra = len(answer.get("instructions") or ())
    if extra:
        words.append(f"+{extra} instruction{'s' if extra > 1 else ''}")
    return " ".join(words)

