"""crm's call record: what is kept of a finished call, and the payload the CRM gets.

On DiCE a call record (caller, destination, start/answer/end as known, duration,
result, reason, debit, the ICE answer and its trace) is committed to the store before
the DiCE is answered; with delivery on, it goes into the outbox in the same transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from core import Dice, Store
from plugins.crm.outbox import enqueue


def build(event: Dice, store: Store) -> dict[str, Any]:
    """The record of the call ``event`` ends, with what its traces in ``store`` tell."""
    started = answered = None
    ice_answer = ice_trace = None
    for row in store.traces(event.callid):
        trace = json.loads(row["trace"]) if row["trace"] else {}
        if row["event"] == "ice":
            started, ice_answer, ice_trace = (
                trace.get("received_at"),
                row["answer"],
                row["trace"],
            )
        elif row["event"] == "ace":
            answered = trace.get("received_at")
    return {
        "callid": event.callid,
        "caller": event.from_e164 or event.from_,
        "destination": event.to.e164
        if event.to and event.to.e164
        else (event.to.endpoint if event.to else None),
        "started_at": started,
        "answered_at": answered,
        "ended_at": event.timestamp,
        "duration": event.duration,
        "result": event.result,
        "reason": event.reason,
        "debit_amount": str(event.debit.amount) if event.debit else None,
        "debit_currency": event.debit.currency_id if event.debit else None,
        "ice_answer": ice_answer,
        "ice_trace": ice_trace,
    }


def payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the CRM receives: the record, with the ICE answer as JSON and, of the ICE
    trace, only its decision (rule, deciding plugin, each plugin's result)."""
    out = {k: v for k, v in record.items() if k not in ("ice_answer", "ice_trace")}
    out["ice_answer"] = json.loads(record["ice_answer"]) if record.get("ice_answer") else None
    trace = json.loads(record["ice_trace"]) if record.get("ice_trace") else None
    out["ice_decision"] = (
        None
        if trace is None
        else {
            "rule": trace.get("rule"),
            "decided_by": trace.get("decided_by"),
            "plugins": trace.get("plugins"),
        }
    )
    return out


def save(store: Store, record: Mapping[str, Any], deliver: bool) -> bool:
    """Commit ``record``, and with ``deliver`` its payload into the outbox, in one
    transaction; False if the call was recorded already (a repeated DiCE)."""
    callid = record["callid"]
    now = time.time()
    with store.transaction() as tx:
        tx.lock(f"crm:call:{callid}")
        if tx.one("SELECT 1 FROM crm_calls WHERE callid = ?", (callid,)) is not None:
            return False
        columns = list(record)
        tx.execute(
            f"INSERT INTO crm_calls ({', '.join(columns)}, recorded_at) "  # noqa: S608 - fixed column names
            f"VALUES ({', '.join('?' for _ in columns)}, ?)",
            [*record.values(), now],
        )
        if deliver:
            enqueue(tx, callid, json.dumps(payload(record), separators=(",", ":")), now)
    return True


def delivery(store: Store, callids: Sequence[str]) -> dict[str, dict[str, str]]:
    """The delivery state of these calls' records, for the calls view: ``delivered``,
    ``pending`` (in the outbox: attempts so far, last error), ``dead`` (in the dead
    letters: ``crm replay`` sends it again) or ``recorded`` (delivery off). One query
    for the whole page, by primary key."""
    if not callids:
        return {}
    marks = ", ".join("?" for _ in callids)
    rows = store.inspect(
        "SELECT c.callid, c.delivered_at, o.attempts, o.last_error, d.attempts, d.last_error "
        "FROM crm_calls c LEFT JOIN crm_outbox o ON o.callid = c.callid "
        f"LEFT JOIN crm_dead d ON d.callid = c.callid WHERE c.callid IN ({marks})",
        list(callids),
    )
    out = {}
    for callid, delivered, tried, error, died, cause in rows:
        if delivered is not None:
            state = "delivered " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(delivered))
        elif died is not None:
            state = f"dead after {died} attempts: {cause or 'unknown error'}"
        elif tried is not None:
            state = "pending" + (
                f" after {tried} failed attempt(s), last error: {error}" if tried else ""
            )
        else:
            state = "recorded (delivery off)"
        out[callid] = {"crm": state}
    return out
