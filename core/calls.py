"""The calls view: recent calls with filters, one call's timeline, an overview of a
time window. The query layer of ``switchboard calls`` and of the operator console.

Storage. A call is the row of its ICE in the core's ``callbacks`` table; core migration
4 added, to every callback's row, the columns this module reads, so that a page is
one indexed query and never parses a JSON trace:

* written with the claim, from the event (``core.store.Received``): ``caller`` and
  ``destination`` (ICE, DiCE), ``duration`` and ``result`` (DiCE);
* written by ``Store.finish``, in the same statement that records the answer and trace
  (``core.store.Summary``): ``rule``, ``decided_by`` (comma-separated), ``capped_at``
  (the answer's maxDuration), ``capped_by``, ``fallback`` (1 when the answer is the
  configured fallback), ``elapsed_ms`` (time to decide) and ``failed`` (the plugins
  that failed, ``name:status``); the action's name was already kept, as ``outcome``;
* counted on redelivery (``redeliveries``, and ``call_redeliveries`` on the call's ICE
  row for every callback of the call): a repeated delivery already opens a transaction
  to read the stored answer (``Store.claim``); the count is one ``UPDATE`` in it. So a
  duplicate still costs no write of its own, and a first delivery nothing more.

Columns on the existing rows rather than a ``calls`` table: the pipeline's single write
at the finish (an autocommit ``UPDATE`` by primary key) stays one statement; a table of
its own would make it a transaction of two on every callback. The price is that the
DiCE's duration is on the DiCE's row, joined by primary key for each listed call.

Indexes, kept few because every ICE pays for each (bench/RESULTS.md: about 33 us of
CPU per ICE on SQLite for all of migration 4, half of it the two number indexes), all
partial, of the ICE rows only (``WHERE event = 'ice'``: the other events' rows cost
them nothing): ``calls_started (received_at, callid)``, which the list walks newest
first, paging by keyset on ``(received_at, callid)`` (without it SQLite's planner
scanned a number index and sorted every call); ``(caller, received_at, callid)`` and
``(destination, ...)`` for the number filters; ``(rule, ...)`` for the rule filter and
the fallbacks (``rule IN`` the fallback rules; an ICE enters it once answered, ``rule
IS NOT NULL``); and ``(received_at, callid) WHERE call_redeliveries > 0`` for the calls
with a redelivered callback. A number prefix is an index range (``caller >= '+44' AND
caller < '+45'``) checked exactly with ``substr`` (so a collation other than the
binary one cannot widen it). The outcome and plugin filters have no index of their
own: they walk the calls newest first and stop at a page's worth, quick for the common
answers and deciders (connectPstn, hangup; allowlist, credit), slower for rare ones
over a long history; bound those with ``since``. The overview reads the window's rows
through ``calls_started`` and ``callbacks_received``: tens of milliseconds for an hour,
most of a second for a busy day.

Not in the store, hence not here: a fallback sent without any write (a callback that
waited past half its budget for a server thread, a store that cannot be reached, an
internal error); ``switchboard_fallbacks_total`` counts those. Calls recorded before
migration 4 are listed without their summary columns; their traces are in the timeline.

Every query is a ``Store.inspect``: on SQLite a read connection of its own, so that an
overview scanning a day of calls never holds up a callback's reads.

Plugins add what they know of a call (a charge, a delivery state) with
``switchboard_call_details``, called once per page or timeline with its call ids.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from core.events import freeze
from core.metrics import FALLBACK_RULES
from core.store import Store
from core.trace import Trace

if TYPE_CHECKING:
    from core.plugins import Plugins

log = logging.getLogger("switchboard.calls")

DETAILS_HOOK = "switchboard_call_details"
FALLBACKS = sorted(FALLBACK_RULES)  # the rules of an answer that is the configured fallback
MAX_LIMIT = 1000
MAX_MINUTES = 7 * 24 * 60  # a longer overview lists only the minutes that had calls
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last moment a datetime holds
CALLID_LIMIT = 1000  # characters of a call id in a cursor
_EMPTY: Mapping[str, str] = MappingProxyType({})


# ---------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Filters:
    """Which calls to list; every field optional, combined with AND."""

    number: str | None = None  # caller OR destination starts with this ('+44' or '+44*')
    caller: str | None = None  # prefix
    destination: str | None = None  # prefix
    outcome: str | None = None  # the ICE answer's action name: connectPstn, hangup, ...
    rule: str | None = None  # the deciding merge rule of the ICE: deny, proposal, budget, ...
    plugin: str | None = None  # a deciding plugin (decided_by of the ICE)
    duplicates: bool = False  # only calls with a redelivered callback
    fallbacks: bool = False  # only calls answered with a fallback (budget, ...)
    since: float | None = None  # epoch seconds, ICE received at or after
    until: float | None = None  # epoch seconds, ICE received before


@dataclass(frozen=True)
class CallRow:
    """One call, as listed: its ICE (when, who, the answer and why) and its DiCE."""

    callid: str
    started_at: float  # the ICE received (epoch seconds)
    caller: str | None
    destination: str | None
    answer: str | None  # the ICE answer's action name; None while it is being decided
    rule: str | None  # the merge rule that decided it
    decided_by: tuple[str, ...]
    capped_at: int | None  # the answer's maxDuration
    duration: int | None  # from the DiCE
    result: str | None  # the DiCE's result (ANSWERED, BUSY, ...)
    fallback: bool  # answered with the configured fallback
    duplicates: int  # redeliveries of the call's callbacks
    details: Mapping[str, str] = field(
        default_factory=lambda: _EMPTY
    )  # from the plugins, e.g. {"charge": "0.40 USD"}
    capped_by: str | None = None  # the plugin whose cap set maxDuration
    elapsed_ms: float | None = None  # the ICE's time to decide


@dataclass(frozen=True)
class Page:
    rows: tuple[CallRow, ...]
    next: str | None  # opaque cursor for the next (older) page; None on the last


@dataclass(frozen=True)
class Callback:
    """One callback of a call, as it arrived and was answered."""

    event: str
    sub: str
    state: str  # done, pending, retry, parked
    received_at: float
    answer: Mapping[str, Any] | None
    trace: Trace | None
    outcome: str | None
    duplicate: bool  # delivered more than once
    attempts: int
    last_error: str | None
    redeliveries: int = 0


@dataclass(frozen=True)
class Timeline:
    callid: str
    callbacks: tuple[Callback, ...]  # in arrival order
    details: Mapping[str, str]
    row: CallRow | None  # None when the call has no ICE recorded


@dataclass(frozen=True)
class Overview:
    since: float
    until: float
    per_minute: tuple[tuple[float, int], ...]  # (minute start, calls), every minute of
    # the window (of a window over MAX_MINUTES long: only the minutes with calls)
    outcomes: Mapping[str, int]  # ICE answer action -> calls
    denials: Mapping[tuple[str, str], int]  # (plugin, kind) -> calls denied
    fallbacks: Mapping[str, int]  # rule -> callbacks
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    duplicates: int  # redeliveries of callbacks received in the window
    waiting_retry: int  # DiCE/Notify work waiting for its retry (now)
    parked: int  # and parked for an operator (now)
    calls: int = 0
    plugin_failures: Mapping[tuple[str, str], int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- list

_ROW = (
    "c.callid, c.received_at, c.caller, c.destination, c.outcome, c.rule, c.decided_by, "
    "c.capped_at, d.duration, d.result, c.fallback, c.call_redeliveries, c.capped_by, "
    "c.elapsed_ms"
)
_FROM = (
    "FROM callbacks c LEFT JOIN callbacks d "
    "ON d.callid = c.callid AND d.event = 'dice' AND d.sub = ''"
)


def recent_calls(
    store: Store,
    filters: Filters = Filters(),
    *,
    limit: int = 50,
    after: str | None = None,
    plugins: Plugins | None = None,
) -> Page:
    """The calls matching ``filters``, newest first, ``limit`` at most, older than the
    cursor ``after`` (a previous page's ``next``). Keyset pagination on ``(started_at,
    callid)``: no call is listed twice or skipped while new calls arrive. ``plugins``
    (the enabled ones) fill each row's ``details``. A bad cursor is a ``ValueError``."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    sql, params = page_query(filters, limit=limit, after=after)
    found = [_row(r) for r in store.inspect(sql, params)]
    rows, more = found[:limit], len(found) > limit
    rows = _with_details(rows, store, plugins)
    return Page(tuple(rows), encode_cursor(rows[-1]) if more and rows else None)


def page_query(
    filters: Filters = Filters(), *, limit: int = 50, after: str | None = None
) -> tuple[str, list[Any]]:
    """The SQL of a page (one row more than ``limit``: whether there is a next page)
    and its parameters; ``bench/console.py`` shows its plan."""
    where, params = where_of(filters)
    if after is not None:
        at, callid = decode_cursor(after)
        # the first term lets any planner walk the received_at index from the cursor
        where.append("c.received_at <= ? AND (c.received_at, c.callid) < (?, ?)")
        params += [at, at, callid]
    sql = (
        f"SELECT {_ROW} {_FROM} WHERE {' AND '.join(where)} "
        f"ORDER BY c.received_at DESC, c.callid DESC LIMIT {int(limit) + 1}"
    )
    return sql, params


def where_of(filters: Filters) -> tuple[list[str], list[Any]]:
    """The WHERE conditions (on ``callbacks c``, the ICE rows) of ``filters``."""
    where, params = ["c.event = 'ice'"], []  # a literal: the partial indexes match it
    f = filters
    if f.number:
        a, pa = _prefix("c.caller", f.number)
        b, pb = _prefix("c.destination", f.number)
        where.append(f"(({a}) OR ({b}))")
        params += pa + pb
    for column, value in (("c.caller", f.caller), ("c.destination", f.destination)):
        if value:
            sql, more = _prefix(column, value)
            where.append(sql)
            params += more
    if f.outcome:
        where.append("c.outcome = ?")
        params.append(f.outcome)
    if f.rule:
        where.append("c.rule = ?")
        params.append(f.rule)
    if f.plugin:
        where.append("',' || c.decided_by || ',' LIKE ? ESCAPE '!'")
        params.append("%," + _like_escape(f.plugin) + ",%")
    if f.duplicates:
        where.append("c.call_redeliveries > 0")
    if f.fallbacks:  # by rule: the rule index answers it
        where.append(f"c.rule IN ({', '.join('?' for _ in FALLBACKS)})")
        params += FALLBACKS
    if f.since is not None:
        where.append("c.received_at >= ?")
        params.append(float(f.since))
    if f.until is not None:
        where.append("c.received_at < ?")
        params.append(float(f.until))
    return where, params


def _prefix(column: str, value: str) -> tuple[str, list[Any]]:
    """``column`` starts with ``value`` (a trailing ``*`` is allowed): an index range
    when the prefix ends in a digit, always checked exactly."""
    prefix = value.strip().rstrip("*")
    if not prefix:
        return f"{column} IS NOT NULL", []
    sql, params = [f"{column} >= ?"], [prefix]
    upper = _next_prefix(prefix)
    if upper is not None:
        sql.append(f"{column} < ?")
        params.append(upper)
    # the range is exact for a binary collation; the check keeps it exact for any other
    sql.append(f"substr({column}, 1, {len(prefix)}) = ?")
    params.append(prefix)
    return " AND ".join(sql), params


def _next_prefix(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix``, when it ends in
    digits (``'+44'`` -> ``'+45'``, ``'+449'`` -> ``'+45'``); else None."""
    stem = prefix.rstrip("9")
    if not stem or not stem[-1].isdigit() or not stem[-1].isascii():
        return None
    return stem[:-1] + chr(ord(stem[-1]) + 1)


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _row(r: Sequence[Any]) -> CallRow:
    return CallRow(
        callid=r[0],
        started_at=float(r[1]),
        caller=r[2],
        destination=r[3],
        answer=r[4],
        rule=r[5],
        decided_by=tuple(n for n in (r[6] or "").split(",") if n),
        capped_at=r[7],
        duration=r[8],
        result=r[9],
        fallback=bool(r[10]),
        duplicates=int(r[11] or 0),
        capped_by=r[12],
        elapsed_ms=r[13],
    )


def encode_cursor(row: CallRow) -> str:
    """The cursor of the page after ``row``: opaque to callers (URL-safe text)."""
    raw = json.dumps([row.started_at, row.callid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``encode_cursor``'s position; a ``ValueError`` for anything else, and for a
    position no call can have (a time that is not finite or past ``MAX_TIME``, a call id
    with a NUL character, which PostgreSQL cannot compare), so that a forged cursor
    never reaches the store."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, callid = json.loads(raw)
        if isinstance(at, bool) or not isinstance(at, int | float) or not isinstance(callid, str):
            raise TypeError
        if not 0 <= float(at) <= MAX_TIME or "\x00" in callid or len(callid) > CALLID_LIMIT:
            raise ValueError
        return float(at), callid
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise ValueError(f"not a cursor of this list: {cursor[:40]!r}") from None


# ---------------------------------------------------------------------------- details


def call_details(
    store: Store, callids: Sequence[str], plugins: Plugins | None
) -> dict[str, dict[str, str]]:
    """What the enabled plugins say of these calls (``switchboard_call_details``): per
    call id, label -> text, in precedence order (a label given by a plugin of higher
    precedence is kept). A plugin that fails shows as a label of its own; the others'
    details are still shown."""
    out: dict[str, dict[str, str]] = {c: {} for c in callids}
    if plugins is None or not callids:
        return out
    ids = tuple(dict.fromkeys(callids))
    for impl in plugins.impls(DETAILS_HOOK):
        try:
            got = impl(store=store, callids=ids)
            if got is None:
                continue
            if not isinstance(got, Mapping):
                raise TypeError(f"returned {type(got).__name__}, expected a mapping")
            for callid, labels in got.items():
                if callid in out and labels:
                    for label, text in dict(labels).items():
                        out[callid].setdefault(str(label), str(text))
        except Exception as exc:  # noqa: BLE001 - one plugin's failure spoils no page
            log.warning("plugin %r failed in %s: %s", impl.plugin, DETAILS_HOOK, exc)
            for labels in out.values():
                labels.setdefault(impl.plugin, f"details unavailable ({type(exc).__name__})")
    return out


def _with_details(rows: list[CallRow], store: Store, plugins: Plugins | None) -> list[CallRow]:
    if plugins is None or not rows:
        return rows
    details = call_details(store, [r.callid for r in rows], plugins)
    return [_replace_details(r, details.get(r.callid)) for r in rows]


def _replace_details(row: CallRow, details: Mapping[str, str] | None) -> CallRow:
    if not details:
        return row
    from dataclasses import replace

    return replace(row, details=MappingProxyType(dict(details)))


# ---------------------------------------------------------------------------- one call


TIMELINE = (
    "SELECT event, sub, state, received_at, answer, trace, outcome, redeliveries, "
    "attempts, last_error FROM callbacks WHERE callid = ? ORDER BY received_at, event"
)
CALL = f"SELECT {_ROW} {_FROM} WHERE c.callid = ? AND c.event = 'ice' AND c.sub = ''"


def timeline(store: Store, callid: str, plugins: Plugins | None = None) -> Timeline | None:
    """Every recorded callback of the call, in arrival order, with its answer and
    trace; the call's row; what the plugins say of it. None when nothing is recorded."""
    rows = store.inspect(TIMELINE, (callid,))
    if not rows:
        return None
    callbacks = []
    for event, sub, state, at, answer, trace, outcome, again, attempts, error in rows:
        callbacks.append(
            Callback(
                event=event,
                sub=sub,
                state=state,
                received_at=float(at),
                answer=freeze(json.loads(answer)) if answer else None,
                trace=_trace(trace),
                outcome=outcome,
                duplicate=bool(again),
                attempts=int(attempts or 1),
                last_error=error,
                redeliveries=int(again or 0),
            )
        )
    found = store.inspect(CALL, (callid,))
    details = call_details(store, [callid], plugins)[callid]
    row = _replace_details(_row(found[0]), details) if found else None
    return Timeline(callid, tuple(callbacks), MappingProxyType(details), row)


def _trace(text: str | None) -> Trace | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return Trace.from_dict(data) if isinstance(data, dict) and data else None


# ---------------------------------------------------------------------------- overview


OVERVIEW_CALLS = (
    "SELECT c.received_at, c.elapsed_ms FROM callbacks c "
    "WHERE c.event = 'ice' AND c.received_at >= ? AND c.received_at < ?"
)
OVERVIEW_ANSWERS = (
    "SELECT c.outcome, c.rule, c.decided_by, c.failed, COUNT(*) FROM callbacks c "
    "WHERE c.event = 'ice' AND c.received_at >= ? AND c.received_at < ? "
    "GROUP BY c.outcome, c.rule, c.decided_by, c.failed"
)
OVERVIEW_CALLBACKS = (
    "SELECT rule, fallback, failed, COUNT(*), SUM(redeliveries) FROM callbacks "
    "WHERE received_at >= ? AND received_at < ? GROUP BY rule, fallback, failed"
)
OVERVIEW_WAITING = (
    "SELECT state, COUNT(*) FROM callbacks WHERE state IN ('retry', 'parked') GROUP BY state"
)


def overview(store: Store, since: float, until: float) -> Overview:
    """Figures of the calls whose ICE arrived in ``[since, until)``, and of every
    callback received then; ``waiting_retry`` and ``parked`` are as of now."""
    window = (float(since), float(until))
    ice = store.inspect(OVERVIEW_CALLS, window)
    first = math.floor(window[0] / 60) * 60
    count = max(0, math.ceil((window[1] - first) / 60))
    minutes = {first + 60 * i: 0 for i in range(count)} if count <= MAX_MINUTES else {}
    latencies = []
    for at, elapsed in ice:
        minute = math.floor(at / 60) * 60
        minutes[minute] = minutes.get(minute, 0) + 1
        if elapsed is not None:
            latencies.append(float(elapsed))
    latencies.sort()

    outcomes: dict[str, int] = {}
    denials: dict[tuple[str, str], int] = {}
    for outcome, rule, decided_by, failed, count in store.inspect(OVERVIEW_ANSWERS, window):
        key = outcome or "(pending)"
        outcomes[key] = outcomes.get(key, 0) + count
        if rule in ("deny", "cap-unenforceable"):
            statuses = _failures(failed)
            for plugin in (decided_by or "").split(","):
                if plugin:
                    kind = statuses.get(plugin, "deny") if rule == "deny" else rule
                    denials[(plugin, kind)] = denials.get((plugin, kind), 0) + count

    fallbacks: dict[str, int] = {}
    failures: dict[tuple[str, str], int] = {}
    duplicates = 0
    for rule, fallback, failed, count, again in store.inspect(OVERVIEW_CALLBACKS, window):
        duplicates += int(again or 0)
        if fallback:
            fallbacks[rule] = fallbacks.get(rule, 0) + count
        for plugin, status in _failures(failed).items():
            failures[(plugin, status)] = failures.get((plugin, status), 0) + count

    waiting = dict(store.inspect(OVERVIEW_WAITING))
    return Overview(
        since=window[0],
        until=window[1],
        per_minute=tuple(sorted(minutes.items())),
        outcomes=outcomes,
        denials=denials,
        fallbacks=fallbacks,
        latency_p50_ms=_percentile(latencies, 0.50),
        latency_p99_ms=_percentile(latencies, 0.99),
        duplicates=duplicates,
        waiting_retry=int(waiting.get("retry", 0)),
        parked=int(waiting.get("parked", 0)),
        calls=len(ice),
        plugin_failures=failures,
    )


def _failures(failed: str | None) -> dict[str, str]:
    """``failed`` ("credit:timeout,crm:error") as plugin -> status."""
    out = {}
    for item in (failed or "").split(","):
        plugin, _, status = item.partition(":")
        if plugin:
            out[plugin] = status
    return out


def _percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile of sorted values (None without any)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
