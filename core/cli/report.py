"""Printing what a callback got: its answer and its recorded decision traces.

Shared by ``simulate`` (the answer it just got) and ``trace`` (a call's history).
"""

from __future__ import annotations

import json

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
        print(f"trace {row['event']}: rule {trace.get('rule')}, {trace.get('elapsed_ms', '?')} ms")
        for p in trace.get("plugins", []):
            detail = p.get("decision") or p.get("error") or ""
            print(
                f"  {p['plugin']}: {p['status']} in {p.get('ms')} ms {json.dumps(detail) if detail else ''}"
            )
        for c in trace.get("conflicts", []):
            print(
                f"  conflict: {c['plugin']} proposed {json.dumps(c['proposed'])}, lost to {c['lost_to']}"
            )
        for n in trace.get("notes", []):
            print(f"  note: {n}")
    return bool(rows)
