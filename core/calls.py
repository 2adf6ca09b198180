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
first, paging by keyset on ``(received_at, callid)``; ``calls_caller (caller,
received_at, callid)`` and ``calls_destination`` for the number filters; ``calls_rule``
for the rule filter and the fallbacks (``rule IN`` the fallback rules), and
(migration 6) ``calls_outcome`` and ``calls_decided`` (``decided_by``, the deciding
plugins comma-separated) for the answer and plugin filters, each entered once the ICE
is answered (``IS NOT NULL``); and ``calls_redelivered (received_at, callid) WHERE
call_redeliveries > 0`` for the calls with a redelivered callback. A number prefix is
an index range (``caller >= '+44' AND caller < '+45'``) checked exactly with ``substr``
(so a collation other than the binary one cannot widen it); a plugin is the
``decided_by`` values that name it, found by one index lookup per distinct value.

A page picks its plan from its filters (``_choose``): the filters that have an index
are counted through it, up to ``NARROW`` calls in the window; the smallest, when under
that, is read whole and sorted (a narrow prefix, a rare answer), the other filters
tested on its rows. When every filter matches more, an index in time order is walked
newest first and the others tested on each call (a broad prefix walks
``calls_started``: most calls match, a page comes quickly), a step at a time, at most
``SCAN_ROWS`` calls or ``SCAN_SECONDS``: a page that stops before it is full says how
far back it looked (``Page.scanned_to``) and its ``next`` goes on from there, so
filters that match few calls over a long history cost the operator a click per
``SCAN_ROWS`` calls, never seconds of the server. Each query is written so that it
can only read the index its plan chose (the other filters as ``c.rule || ''`` and
``c.received_at + 0``, which no index serves). The overview reads the window's rows
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
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    scanned_to: float | None = None  # the page stopped looking at calls this old before it
    # was full (see ``recent_calls``): older ones are not looked at yet; ``next`` goes on


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

NARROW = 5000  # a filter matching fewer calls than this (in the window) is read whole
SCAN_ROWS = 50_000  # calls one page looks at, at most, when no index narrows its filters
SCAN_SECONDS = 0.05  # and for about this long (looked at between the steps of a walk)
FIRST_STEP = 1000  # calls looked at in the first step of a walk
MAX_STEP = 10_000  # and in any one step (about 25 ms on SQLite, a little more on PostgreSQL)
MAX_STREAMS = 16  # a filter that is more runs of its index than this is never walked

_ROW = (
    "c.callid, c.received_at, c.caller, c.destination, c.outcome, c.rule, c.decided_by, "
    "c.capped_at, d.duration, d.result, c.fallback, c.call_redeliveries, c.capped_by, "
    "c.elapsed_ms"
)
_FROM = (
    "FROM callbacks c LEFT JOIN callbacks d "
    "ON d.callid = c.callid AND d.event = 'dice' AND d.sub = ''"
)
_NEWEST = "ORDER BY c.received_at DESC, c.callid DESC"
# a page's calls chosen and sorted first, their DiCE joined after (to the page's rows)
_CALL = (
    "c.callid, c.received_at, c.caller, c.destination, c.outcome, c.rule, c.decided_by, "
    "c.capped_at, c.fallback, c.call_redeliveries, c.capped_by, c.elapsed_ms"
)
_PAGE = (
    "SELECT x.callid, x.received_at, x.caller, x.destination, x.outcome, x.rule, "
    "x.decided_by, x.capped_at, d.duration, d.result, x.fallback, x.call_redeliveries, "
    "x.capped_by, x.elapsed_ms FROM ({}) x LEFT JOIN callbacks d "
    "ON d.callid = x.callid AND d.event = 'dice' AND d.sub = '' "
    "ORDER BY x.received_at DESC, x.callid DESC"
)
DECIDERS = (  # every distinct decided_by, one index lookup each (a loose index scan)
    "WITH RECURSIVE v(d) AS (SELECT MIN(decided_by) FROM callbacks "
    "WHERE event = 'ice' AND decided_by IS NOT NULL UNION ALL SELECT (SELECT MIN(decided_by) "
    "FROM callbacks WHERE event = 'ice' AND decided_by > v.d) FROM v WHERE v.d IS NOT NULL) "
    "SELECT d FROM v WHERE d IS NOT NULL"
)

Key = tuple[float, str]  # a call's place in the list: its ICE's (received_at, callid)


@dataclass(frozen=True)
class _Term:
    """One filter as SQL on ``callbacks c``, written two ways: ``read`` lets the database
    read it through its index; ``test`` is the same condition written so that no index
    can serve it (``c.rule || ''``, ``c.call_redeliveries + 0``), so that each query reads
    the one index its plan chose and tests the other filters on the rows it reads.
    ``streams``: the runs of the index, each in time order (``rule = 'deny'``), that hold
    the filter's calls; none when its index is not in time order (a number range)."""

    read: str
    read_params: tuple[Any, ...]
    test: str
    test_params: tuple[Any, ...]
    streams: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    either: tuple[_Term, ...] = ()  # the terms of an OR, counted one by one
    # a number range without its exact check, to count (PostgreSQL's planner estimates a
    # range from its statistics, and a check it cannot as rare: it then scanned the
    # range in parallel to count a few thousand calls)
    rough: tuple[str, tuple[Any, ...]] | None = None


_STARTED = _Term("", (), "", (), (("", ()),))  # every call, in time order


@dataclass(frozen=True)
class _Span:
    """The calls left to read, by their place in the list: ``since`` and ``until`` (the
    filters), ``below`` (a cursor: older than that call) and ``down_to`` (the last call
    of a step of a walk: that call and newer)."""

    since: float | None = None
    until: float | None = None
    below: Key | None = None
    down_to: Key | None = None

    def sql(self, *, indexed: bool = True, alias: str = "c") -> tuple[list[str], list[Any]]:
        at = f"{alias}.received_at" if indexed else f"({alias}.received_at + 0)"
        key = f"({at}, {alias}.callid)"
        where: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            where.append(f"{at} >= ?")
            params.append(float(self.since))
        if self.until is not None:
            where.append(f"{at} < ?")
            params.append(float(self.until))
        # the first term of each lets any planner walk the time index from there
        if self.below is not None:
            where.append(f"{at} <= ? AND {key} < (?, ?)")
            params += [self.below[0], *self.below]
        if self.down_to is not None:
            where.append(f"{at} >= ? AND {key} >= (?, ?)")
            params += [self.down_to[0], *self.down_to]
        return where, params


def recent_calls(
    store: Store,
    filters: Filters = Filters(),
    *,
    limit: int = 50,
    after: str | None = None,
    plugins: Plugins | None = None,
    scan: int | None = None,
    seconds: float | None = None,
) -> Page:
    """The calls matching ``filters``, newest first, ``limit`` at most, older than the
    cursor ``after`` (a previous page's ``next``). Keyset pagination on ``(started_at,
    callid)``: no call is listed twice or skipped while new calls arrive. ``plugins``
    (the enabled ones) fill each row's ``details``. A bad cursor is a ``ValueError``.

    A page whose filters no index narrows (see ``_choose``) looks at ``scan`` calls at
    most (``SCAN_ROWS``), for about ``seconds`` (``SCAN_SECONDS``): when it stops before
    it is full, ``scanned_to`` says how far back it looked and ``next`` goes on from
    there."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    below = decode_cursor(after) if after is not None else None
    span = _Span(filters.since, filters.until, below)
    terms = _terms(store, filters)
    found: list[tuple[Any, ...]] = []
    stopped = None
    if terms is not None:
        scan = SCAN_ROWS if scan is None else scan
        seconds = SCAN_SECONDS if seconds is None else seconds
        found, stopped = _read(store, terms, span, limit + 1, scan, seconds)
    rows = [_row(r) for r in found[:limit]]
    following = None
    if len(found) > limit:
        following = encode_cursor(rows[-1])
    elif stopped is not None:
        following = _cursor(stopped)
    rows = _with_details(rows, store, plugins)
    return Page(tuple(rows), following, stopped[0] if stopped is not None else None)


def _read(
    store: Store, terms: list[_Term], span: _Span, want: int, scan: int, seconds: float
) -> tuple[list[tuple[Any, ...]], Key | None]:
    """Up to ``want`` rows of the calls in ``span`` matching every term, newest first, and
    the last call looked at when the look stopped before the end (None: it did not)."""
    deadline = time.monotonic() + seconds
    driver, whole = _choose(store, terms, span)
    if driver is None:
        return [], None
    others = [t for t in terms if t is not driver]
    if whole or (not others and len(driver.streams) == 1):
        # few calls, read whole and sorted; or one run of an index whose every call
        # matches: the first ``want`` of it
        indexed = bool(driver.streams)
        return _select(store, driver, others, span, want, indexed=indexed), None
    return _walk(store, driver, others, span, want, scan, deadline)


def _choose(store: Store, terms: list[_Term], span: _Span) -> tuple[_Term | None, bool]:
    """The term whose index the page reads, and whether its calls are few enough (fewer
    than ``NARROW`` in the span: counted, through its index alone) to read them all and
    sort them; else an index in time order is walked newest first, the other filters
    tested on each call (``_walk``): a filter's own index when it has one, else
    ``calls_started``. ``(None, True)``: a count found no call."""
    if not terms:
        return _STARTED, False
    if len(terms) == 1 and len(terms[0].streams) == 1:
        return terms[0], False
    fewest, i = min((_count(store, t, span), i) for i, t in enumerate(terms))
    if fewest == 0:
        return None, True
    if fewest < NARROW:
        return terms[i], True
    walkable = [t for t in terms if t.streams]
    return min(walkable, key=lambda t: len(t.streams), default=_STARTED), False


def _count(store: Store, term: _Term, span: _Span) -> int:
    """The calls of ``span`` that ``term`` matches, counted through its index up to
    ``NARROW`` (``NARROW``: that many or more)."""
    if term.either:  # (a planner reads an OR of two ranges by reading each)
        total = 0
        for t in term.either:
            total += _count(store, t, span)
            if total >= NARROW:
                break
        return min(NARROW, total)
    if term.streams:
        where, params = span.sql()
        cond = " AND ".join(["c.event = 'ice'", term.read, *where])
        sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM callbacks c WHERE {cond} LIMIT {NARROW}) n"
        return int(store.inspect(sql, [*term.read_params, *params])[0][0])
    # a range of numbers, not in time order: its first NARROW calls, then the span (a
    # short span of a wide range would otherwise read the whole range)
    where, params = span.sql(alias="n")
    read, read_params = term.rough or (term.read, term.read_params)
    sql = (
        f"SELECT COUNT(*), SUM(CASE WHEN {' AND '.join(where) or '1 = 1'} THEN 1 ELSE 0 END) "
        f"FROM (SELECT c.received_at, c.callid FROM callbacks c WHERE c.event = 'ice' "
        f"AND {read} LIMIT {NARROW}) n"
    )
    ((total, inside),) = store.inspect(sql, [*params, *read_params])
    return NARROW if total >= NARROW else int(inside or 0)


def _select(
    store: Store,
    driver: _Term,
    others: list[_Term],
    span: _Span,
    want: int,
    *,
    indexed: bool = True,
) -> list[tuple[Any, ...]]:
    """The first ``want`` calls of ``span`` read through ``driver``'s index (with the
    span on it too when ``indexed``) that pass every other term's test; an OR through
    each of its indexes (a ``UNION``: planners may otherwise walk the time index)."""
    parts = driver.either or (driver,)
    selects: list[str] = []
    params: list[Any] = []
    for part in parts:
        where = ["c.event = 'ice'"]  # a literal: the partial indexes match it
        if part.read:
            where.append(part.read)
            params += part.read_params
        times, more = span.sql(indexed=indexed)
        where += times
        params += more
        for t in others:
            where.append(t.test)
            params += t.test_params
        selects.append(f"SELECT {_CALL} FROM callbacks c WHERE {' AND '.join(where)}")
    if len(selects) == 1:
        sql = f"{selects[0]} {_NEWEST} LIMIT {int(want)}"
    else:  # the UNION's columns by position: 2 is received_at, 1 the callid
        sql = f"{' UNION '.join(selects)} ORDER BY 2 DESC, 1 DESC LIMIT {int(want)}"
    return store.inspect(_PAGE.format(sql), params)


def _walk(
    store: Store,
    driver: _Term,
    others: list[_Term],
    span: _Span,
    want: int,
    scan: int,
    deadline: float,
) -> tuple[list[tuple[Any, ...]], Key | None]:
    """Walk ``driver``'s index newest first a step at a time (the last call of each step
    found through the index alone), testing the ``others`` on the step's calls, until
    ``want`` rows, the end, ``scan`` calls looked at or the ``deadline``; the steps grow
    as the time left allows (at the pace of the last step: older calls may be colder),
    up to ``MAX_STEP``, so that the last one overruns the deadline by little."""
    rows: list[tuple[Any, ...]] = []
    step, looked = FIRST_STEP, 0
    while True:
        began = time.monotonic()
        end = _step_end(store, driver, span, step)
        rows += _select(store, driver, others, replace(span, down_to=end), want - len(rows))
        if len(rows) >= want or end is None:
            return rows, None
        looked += step
        span = replace(span, below=end)
        now = time.monotonic()
        if looked >= scan or now >= deadline:
            return rows, end
        per_call = (now - began) / step
        fits = (deadline - now) / per_call if per_call > 0 else MAX_STEP
        step = int(min(step * 4, MAX_STEP, scan - looked, max(100, fits)))


def _step_end(store: Store, driver: _Term, span: _Span, step: int) -> Key | None:
    """The last of the next ``step`` calls in ``driver``'s index (the newest such last
    call of its streams, each taking its share); None when fewer are left."""
    where, params = span.sql()
    offset = max(0, -(-step // len(driver.streams)) - 1)
    ends = []
    for sql, more in driver.streams:
        cond = " AND ".join(["c.event = 'ice'", *([sql] if sql else []), *where])
        found = store.inspect(
            f"SELECT c.received_at, c.callid FROM callbacks c WHERE {cond} {_NEWEST} "
            f"LIMIT 1 OFFSET {offset}",
            [*more, *params],
        )
        if found:
            ends.append((float(found[0][0]), str(found[0][1])))
    return max(ends) if ends else None


def _terms(store: Store, filters: Filters) -> list[_Term] | None:
    """The filters as terms; None when no call can match (a plugin that decided none)."""
    f = filters
    terms = []
    if f.number:
        a, b = _prefix("c.caller", f.number), _prefix("c.destination", f.number)
        terms.append(
            _Term(
                f"(({a.read}) OR ({b.read}))",
                a.read_params + b.read_params,
                f"({a.test} OR {b.test})",
                a.test_params + b.test_params,
                either=(a, b),
            )
        )
    if f.caller:
        terms.append(_prefix("c.caller", f.caller))
    if f.destination:
        terms.append(_prefix("c.destination", f.destination))
    if f.duplicates:
        terms.append(
            _Term(
                "c.call_redeliveries > 0",
                (),
                "c.call_redeliveries + 0 > 0",
                (),
                (("c.call_redeliveries > 0", ()),),
            )
        )
    if f.rule:
        terms.append(_one_of("c.rule", [f.rule]))
    if f.outcome:
        terms.append(_one_of("c.outcome", [f.outcome]))
    if f.plugin:
        deciders = [d for (d,) in store.inspect(DECIDERS) if f.plugin in d.split(",")]
        if not deciders:
            return None
        terms.append(_one_of("c.decided_by", deciders))
    if f.fallbacks:  # by rule: the rule index answers it
        terms.append(_one_of("c.rule", FALLBACKS))
    return terms


def _one_of(column: str, values: Sequence[str]) -> _Term:
    """``column`` (TEXT, leading an index with the time after it) is one of ``values``:
    a stream of the index each."""
    marks, params = _values(values)
    if len(values) == 1:
        read, test = f"{column} = {marks[0]}", f"{column} || '' = {marks[0]}"
    else:
        listed = ", ".join(marks)
        read, test = f"{column} IN ({listed})", f"{column} || '' IN ({listed})"
    streams = tuple(
        (f"{column} = {mark}", (value,) if mark == "?" else ())
        for mark, value in zip(marks, values, strict=True)
    )
    return _Term(read, params, test, params, streams if len(streams) <= MAX_STREAMS else ())


_PLAIN = re.compile(r"[A-Za-z0-9_.:,+-]{1,64}")


def _values(values: Sequence[str]) -> tuple[list[str], tuple[Any, ...]]:
    """The SQL of each value: a literal when it is a plain name (an answer, a rule, the
    deciding plugins), else a parameter. A statement that psycopg has prepared (after
    five runs) may get a generic plan from PostgreSQL, made for an average value: for
    an answer no call has, that plan walked every call; a literal is planned with its
    own statistics."""
    marks = [f"'{v}'" if _PLAIN.fullmatch(v) else "?" for v in values]
    return marks, tuple(v for v, mark in zip(values, marks, strict=True) if mark == "?")


def _prefix(column: str, value: str) -> _Term:
    """``column`` starts with ``value`` (a trailing ``*`` is allowed): read as a range of
    the column's index (when the prefix ends in a digit), always checked exactly."""
    prefix = value.strip().rstrip("*")
    # the range is exact for a binary collation; the check keeps it exact for any other
    check = f"substr({column}, 1, {len(prefix)}) = ?"
    if not prefix:
        return _Term(f"{column} IS NOT NULL", (), check, ("",))
    sql, params = [f"{column} >= ?"], [prefix]
    upper = _next_prefix(prefix)
    if upper is not None:
        sql.append(f"{column} < ?")
        params.append(upper)
    rough = (" AND ".join(sql), tuple(params))
    return _Term(f"{rough[0]} AND {check}", (*params, prefix), check, (prefix,), rough=rough)


def _next_prefix(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix``, when it ends in
    digits (``'+44'`` -> ``'+45'``, ``'+449'`` -> ``'+45'``); else None."""
    stem = prefix.rstrip("9")
    if not stem or not stem[-1].isdigit() or not stem[-1].isascii():
        return None
    return stem[:-1] + chr(ord(stem[-1]) + 1)


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
    return _cursor((row.started_at, row.callid))


def _cursor(key: Key) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
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
