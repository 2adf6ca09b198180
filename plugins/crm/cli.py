"""crm's commands: ``switchboard crm outbox | dead | replay | export``.

Their reads are an operator's: ``store.inspect``, with its time limit, never the
callbacks' own read path."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from core import csv_writer, pass_runtime

if TYPE_CHECKING:
    from plugins.crm.plugin import Crm

COLUMNS = [  # of an exported call record
    "callid",
    "caller",
    "destination",
    "started_at",
    "answered_at",
    "ended_at",
    "duration",
    "result",
    "reason",
    "debit_amount",
    "debit_currency",
    "ice_answer",
    "recorded_at",
    "delivered_at",
]


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def register(cli: click.Group, plugin: Crm) -> None:
    """Add the ``crm`` group to ``cli``. This may run before ``switchboard_configure``:
    the commands read the plugin's settings when they run."""

    @cli.group(help="call records and CRM delivery: outbox, dead, replay, export")
    def crm() -> None:
        pass

    @crm.command(help="records waiting for delivery")
    @pass_runtime
    def outbox(runtime: Any) -> int:
        rows = runtime.store.inspect(
            "SELECT callid, attempts, next_attempt_at, last_error FROM crm_outbox ORDER BY created_at"
        )
        for callid, attempts, due, error in rows:
            print(f"{callid} attempts={attempts} next={_iso(due)} last_error={error or '-'}")
        print(f"{len(rows)} record(s) waiting")
        return 0

    @crm.command(help="records that exhausted their attempts")
    @pass_runtime
    def dead(runtime: Any) -> int:
        rows = runtime.store.inspect(
            "SELECT callid, attempts, failed_at, last_error FROM crm_dead ORDER BY failed_at"
        )
        for callid, attempts, failed, error in rows:
            print(f"{callid} attempts={attempts} failed={_iso(failed)} last_error={error}")
        print(f"{len(rows)} dead letter(s)")
        return 0

    @crm.command(help="deliver dead letters again (all, or one call)")
    @click.argument("callid", required=False)
    @pass_runtime
    def replay(runtime: Any, callid: str | None) -> int:
        if not plugin.config["webhook_url"]:
            print("error: no webhook_url configured for the crm plugin")
            return 2
        moved = plugin.replay(callid)
        if callid and not moved:
            print(f"error: no dead letter for call {callid!r}")
            return 1
        failed = 0
        for moved_id in moved:
            plugin.drain(only=moved_id)
            left = runtime.store.inspect(
                "SELECT last_error FROM crm_outbox WHERE callid = ?", (moved_id,)
            )
            if left:
                failed += 1
                print(
                    f"{moved_id}: delivery failed ({left[0][0]}); it stays in the outbox and is retried"
                )
            else:
                print(f"{moved_id}: delivered")
        print(f"{len(moved) - failed} of {len(moved)} delivered")
        return 1 if failed else 0

    @crm.command(help="call records as CSV or JSON lines")
    @click.option(
        "--format",
        "format_",
        type=click.Choice(["csv", "jsonl"]),
        default="jsonl",
        show_default=True,
    )
    @click.option("--since", help="only calls recorded at or after this ISO-8601 time")
    @pass_runtime
    def export(runtime: Any, format_: str, since: str | None) -> int:
        sql = f"SELECT {', '.join(COLUMNS)} FROM crm_calls"  # noqa: S608 - fixed column names
        params: list[Any] = []
        if since:
            try:
                start = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                print(f"error: --since must be an ISO-8601 time, got {since!r}")
                return 2
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            sql += " WHERE recorded_at >= ?"
            params.append(start.timestamp())
        rows = runtime.store.inspect(sql + " ORDER BY recorded_at", params)
        records = []
        for row in rows:
            record = dict(zip(COLUMNS, row, strict=True))
            record["recorded_at"] = _iso(record["recorded_at"])
            record["delivered_at"] = _iso(record["delivered_at"])
            records.append(record)
        if format_ == "jsonl":
            for record in records:
                record["ice_answer"] = (
                    json.loads(record["ice_answer"]) if record["ice_answer"] else None
                )
                print(json.dumps(record, separators=(",", ":")))
        else:
            out = io.StringIO()
            writer = csv_writer(out)  # a caller id "=HYPERLINK(...)" is no formula there
            writer.writerow(COLUMNS)
            writer.writerows([r[c] for c in COLUMNS] for r in records)
            print(out.getvalue(), end="")
        return 0
