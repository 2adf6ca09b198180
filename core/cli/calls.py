"""``switchboard calls``: recent calls with filters (a table, ``--json`` or ``--csv``),
and ``switchboard calls CALLID``: one call's timeline, answers, traces and details.

The queries are ``core.calls``, the same the operator console runs.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from core import calls
from core.cli.cells import csv_writer
from core.cli.context import CliError, pass_runtime
from core.cli.report import print_trace
from core.runtime import Runtime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*(?:ago)?\s*$", re.IGNORECASE)


class When(click.ParamType):
    """A time: ISO 8601 (``2026-11-29T08:00``, UTC unless it names its offset), epoch
    seconds, or a time ago (``90s``, ``30m``, ``1h``, ``2d``, ``1w``)."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        at = self._seconds(value)
        if at is None:
            self.fail(
                f"{str(value)[:40]!r} is not a time: use ISO 8601 (2026-11-29T08:00, UTC unless "
                "an offset is given), epoch seconds, or a time ago such as 30m, 1h, 2d",
                param,
                ctx,
            )
        if not 0 <= at <= calls.MAX_TIME:  # NaN, infinities, 1e300: no call is then
            self.fail(f"{str(value)[:40]!r} is out of range (years 1970 to 9999)", param, ctx)
        return at

    @staticmethod
    def _seconds(value: Any) -> float | None:
        """Epoch seconds of ``value``, or None when it is not a time."""
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        found = _RELATIVE.match(text)
        try:
            if found:
                return time.time() - float(found.group(1)) * _UNITS[found.group(2).lower()]
            return float(text)
        except (ValueError, OverflowError):
            pass
        try:
            at = datetime.fromisoformat(text)
            return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return None


class Cursor(click.ParamType):
    """The cursor a page of calls ends with (``core.calls.encode_cursor``): anything
    else is a usage error, before any query."""

    name = "CURSOR"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        try:
            calls.decode_cursor(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


def iso(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ms_iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@click.command(
    "calls",
    help="recent calls, newest first, with filters; with CALLID, that call's timeline: "
    "every callback, its answer and decision trace, and what the plugins say of it",
)
@click.argument("callid", required=False)
@click.option("--number", metavar="PREFIX", help="caller or destination starts with (+44, +44*)")
@click.option("--caller", metavar="PREFIX", help="caller starts with")
@click.option("--destination", metavar="PREFIX", help="destination starts with")
@click.option("--outcome", metavar="ACTION", help="the ICE answer: connectPstn, hangup, ...")
@click.option("--rule", help="the deciding rule: deny, proposal, allow-default, budget, ...")
@click.option("--plugin", help="a deciding plugin (the denier, the proposer)")
@click.option("--duplicates", is_flag=True, help="only calls with a redelivered callback")
@click.option("--fallbacks", is_flag=True, help="only calls answered with the fallback")
@click.option("--since", type=When(), help="ICE at or after: ISO time, epoch, or ago (1h, 30m)")
@click.option("--until", type=When(), help="ICE before: ISO time, epoch, or ago")
@click.option("--limit", type=click.IntRange(1, calls.MAX_LIMIT), default=50, show_default=True)
@click.option(
    "--after", type=Cursor(), help="the next (older) page: the cursor a page ends with"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per call, a header first")
@pass_runtime
def calls_command(
    runtime: Runtime,
    callid: str | None,
    number: str | None,
    caller: str | None,
    destination: str | None,
    outcome: str | None,
    rule: str | None,
    plugin: str | None,
    duplicates: bool,
    fallbacks: bool,
    since: float | None,
    until: float | None,
    limit: int,
    after: str | None,
    as_json: bool,
    as_csv: bool,
) -> int:
    if as_json and as_csv:
        raise CliError("choose one of --json and --csv")
    if callid is not None:
        return show_timeline(runtime, callid, as_json=as_json, as_csv=as_csv)
    filters = calls.Filters(
        number=number,
        caller=caller,
        destination=destination,
        outcome=outcome,
        rule=rule,
        plugin=plugin,
        duplicates=duplicates,
        fallbacks=fallbacks,
        since=since,
        until=until,
    )
    page = calls.recent_calls(
        runtime.store, filters, limit=limit, after=after, plugins=runtime.plugins
    )
    if as_json:
        listed = {"calls": [row_dict(r) for r in page.rows], "next": page.next}
        print(json.dumps({**listed, "scanned_to": page.scanned_to}, indent=2))
    elif as_csv:
        write_csv(page.rows)
        if page.next:
            print(f"next page: --after {page.next}", file=sys.stderr)
    else:
        print_table(page)
    return 0


# ---------------------------------------------------------------------------- a page


def row_dict(row: calls.CallRow) -> dict[str, Any]:
    return {
        "callid": row.callid,
        "started_at": row.started_at,
        "started": _ms_iso(row.started_at),
        "caller": row.caller,
        "destination": row.destination,
        "answer": row.answer,
        "rule": row.rule,
        "decided_by": list(row.decided_by),
        "capped_at": row.capped_at,
        "capped_by": row.capped_by,
        "duration": row.duration,
        "result": row.result,
        "fallback": row.fallback,
        "duplicates": row.duplicates,
        "elapsed_ms": row.elapsed_ms,
        "details": dict(row.details),
    }


CSV_COLUMNS = (
    "started",
    "callid",
    "caller",
    "destination",
    "answer",
    "rule",
    "decided_by",
    "capped_at",
    "capped_by",
    "duration",
    "result",
    "fallback",
    "duplicates",
    "elapsed_ms",
)


def write_csv(rows: Sequence[calls.CallRow]) -> None:
    """One row per call; each detail label a column of its own (``charge``, ``crm``).
    Written by ``csv_writer``: a caller id such as ``=HYPERLINK(...)`` is no formula in
    the spreadsheet that opens the file."""
    labels = list(dict.fromkeys(label for r in rows for label in r.details))
    out = csv_writer(sys.stdout)
    out.writerow([*CSV_COLUMNS, *labels])
    for r in rows:
        d = row_dict(r)
        d["decided_by"] = " ".join(r.decided_by)
        d["fallback"] = "yes" if r.fallback else ""
        out.writerow(
            [*("" if d[c] is None else d[c] for c in CSV_COLUMNS)]
            + [r.details.get(label, "") for label in labels]
        )


def _cells(row: calls.CallRow) -> list[str]:
    answer = row.answer or "(deciding)"
    if row.capped_at is not None:
        answer += f" {row.capped_at}s"
    notes = []
    if row.fallback:
        notes.append("fallback")
    if row.duplicates:
        notes.append(f"redelivered x{row.duplicates}")
    details = dict(row.details)
    charge = details.pop("charge", "")
    notes += [f"{label}: {text}" for label, text in details.items()]
    return [
        iso(row.started_at),
        row.callid,
        row.caller or "-",
        row.destination or "-",
        answer,
        row.rule or "-",
        ",".join(row.decided_by) or "-",
        "-" if row.duration is None else f"{row.duration}s",
        charge or "-",
        "; ".join(notes),
    ]


HEADER = [
    "TIME",
    "CALLID",
    "CALLER",
    "DESTINATION",
    "ANSWER",
    "RULE",
    "BY",
    "DURATION",
    "CHARGE",
    "NOTES",
]


def print_table(page: calls.Page) -> None:
    if not page.rows:
        print("no calls" + ("" if page.scanned_to is None else f" among {_scanned(page)}"))
        return
    table = [HEADER, *(_cells(r) for r in page.rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    for line in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
            + "  "
            + line[-1]
        )
    more = f"; older: --after {page.next}" if page.next else ""
    if page.scanned_to is not None:
        more = f" among {_scanned(page)}"
    print(f"{len(page.rows)} call{'s' if len(page.rows) != 1 else ''}{more}")


def _scanned(page: calls.Page) -> str:
    """Where a page that stopped early stopped, and how to go on."""
    return (
        f"the calls back to {iso(page.scanned_to)} (the look stopped there); "
        f"further back: --after {page.next}"
    )


# ---------------------------------------------------------------------------- one call


def show_timeline(runtime: Runtime, callid: str, *, as_json: bool, as_csv: bool) -> int:
    if as_csv:
        raise CliError("--csv lists calls; a call's timeline is text or --json")
    found = calls.timeline(runtime.store, callid, runtime.plugins)
    if found is None:
        print(f"error: no callbacks recorded for call {callid!r}")
        return 1
    if as_json:
        print(json.dumps(timeline_dict(found), indent=2, default=_plain))
        return 0
    print_timeline(found)
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def timeline_dict(found: calls.Timeline) -> dict[str, Any]:
    return {
        "callid": found.callid,
        "call": row_dict(found.row) if found.row else None,
        "details": dict(found.details),
        "callbacks": [
            {
                "event": cb.event,
                "sub": cb.sub,
                "state": cb.state,
                "received_at": cb.received_at,
                "received": _ms_iso(cb.received_at),
                "outcome": cb.outcome,
                "answer": json.loads(json.dumps(cb.answer, default=_plain)) if cb.answer else None,
                "trace": json.loads(cb.trace.to_json()) if cb.trace else None,
                "duplicate": cb.duplicate,
                "redeliveries": cb.redeliveries,
                "attempts": cb.attempts,
                "last_error": cb.last_error,
            }
            for cb in found.callbacks
        ],
    }


def print_timeline(found: calls.Timeline) -> None:
    row = found.row
    print(f"call {found.callid}")
    if row is not None:
        print(
            f"  from {row.caller or '?'} to {row.destination or '?'}, ICE at {_ms_iso(row.started_at)}"
        )
        why = f"rule {row.rule or '-'}"
        if row.decided_by:
            why += f" by {', '.join(row.decided_by)}"
        print(
            f"  answered {row.answer or '(not yet)'} ({why}{', the fallback' if row.fallback else ''})"
        )
        if row.capped_at is not None:
            by = f" by {row.capped_by}" if row.capped_by else " (the action's own)"
            print(f"  capped at {row.capped_at} s{by}")
        if row.duration is not None or row.result is not None:
            print(
                f"  ended: {row.result or '?'}, {row.duration if row.duration is not None else '?'} s"
            )
    else:
        print("  no ICE recorded for this call")
    for label, text in found.details.items():
        print(f"  {label}: {text}")
    for cb in found.callbacks:
        print()
        marks = []
        if cb.redeliveries:
            marks.append(f"DUPLICATE: delivered {cb.redeliveries + 1} times")
        if cb.attempts > 1:
            marks.append(f"{cb.attempts} attempts")
        if cb.last_error:
            marks.append(f"last error: {cb.last_error}")
        head = f"{_ms_iso(cb.received_at)} {cb.event.upper()} {cb.state}"
        print(head + (f" [{'; '.join(marks)}]" if marks else ""))
        if cb.answer is not None:
            print(f"  answer: {json.dumps(cb.answer, default=_plain)}")
        elif cb.event in ("dice", "notify"):
            print("  answer: 200 (empty body)")
        if cb.trace is not None:
            print_trace(cb.event, json.loads(cb.trace.to_json()), indent="  ")
