"""Printing what a callback got: its answer and its recorded decision traces.

Shared by ``simulate`` (the answer it just got) and ``trace`` (a call's history).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from core.store import Store


def print_answer(status: int, text: str) -> None:
    print(f"< HTTP {status}")
    if text:
        try:
            print("< " + json.dumps(json.loads(text), indent=2).replace("\n", "\n< "))
        except ValueError:
            print("< " + text)
    else:
        print("< (empty body)")


def print_traces(store: Store, callid: str) -> bool:
    """Print the recorded traces of a call; False when there are none."""
    try:
        rows = store.traces(callid)
    except Exception:  # no schema yet: the server has not used this store
        return False
    for row in rows:
        trace = json.loads(row["trace"]) if row["trace"] else {}
        print_trace(row["event"], trace)
    return bool(rows)


def print_trace(event: str, trace: Mapping[str, Any], indent: str = "") -> None:
    """Print one decision trace (its JSON form): the rule, each plugin's result and
    time, the conflicts and the notes."""
    revision = f", revision {trace['revision']}" if trace.get("revision") else ""
    print(
        f"{indent}trace {event}: rule {trace.get('rule')}, {trace.get('elapsed_ms', '?')} ms"
        + revision
    )
    for p in trace.get("plugins", []):
        detail = p.get("decision") or p.get("error") or ""
        print(
            f"{indent}  {p['plugin']}{_shadow(p)}: {p['status']} in {p.get('ms')} ms "
            f"{json.dumps(detail) if detail else ''}".rstrip()
        )
    for c in trace.get("conflicts", []):
        print(
            f"{indent}  conflict: {c['plugin']} proposed {json.dumps(c['proposed'])}, "
            f"lost to {c['lost_to']}"
        )
    for n in trace.get("notes", []):
        print(f"{indent}  note: {n}")


def _shadow(entry: Mapping[str, Any]) -> str:
    """`` (shadow)`` after a shadow plugin's name, with what its decision would have done."""
    if not entry.get("shadow"):
        return ""
    if not entry.get("would_change"):
        return " (shadow)"
    would = entry.get("would_answer") or {}
    cap = f", maxDuration {would['maxDuration']}" if "maxDuration" in would else ""
    return f" (shadow, would have changed the answer to {would.get('action')}{cap})"
