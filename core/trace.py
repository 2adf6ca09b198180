"""The decision trace: why a callback was answered as it was (a public, typed schema).

One ``Trace`` per callback answered, built once by the pipeline when the answer is
decided, stored once as JSON with the callback (``Store.traces``), and read by the trace
view (``GET /admin/trace/<callid>``), ``serve.py trace``, the CRM record, the
``switchboard_after_answer`` observers and the test kit. Its JSON form is::

    {"callid": "...", "event": "ice",            # the callback
     "received_at": "2026-11-29T08:00:00.123+00:00",
     "rule": "proposal",                          # the merge rule that decided, or why not
     "duplicate": false,                          # a redelivery answered from the store
     "plugins": [                                 # one entry per plugin asked, in order
        {"plugin": "allowlist", "status": "decided", "ms": 0.4,
         "decision": {"kind": "propose", ...}},
        {"plugin": "crm", "status": "timeout", "ms": 1500.0,
         "error": "still running after 1.500 s", "on_error": "abstain"},
        {"plugin": "strict", "status": "decided", "ms": 0.3,  # a shadow plugin
         "decision": {"kind": "deny", ...}, "shadow": true,
         "would_change": true, "would_answer": {"action": "hangup"}}],
     "decided_by": ["allowlist"], "capped_by": "credit",
     "conflicts": [...], "notes": ["..."],
     "answer": {"action": {"name": "connectPstn", ...}},   # the SVAML sent (null for DiCE)
     "elapsed_ms": 3.2,
     "attempt": 2,                                # only on a DiCE/Notify retried
     "revision": "3f2a9c0b51de"}                  # the configuration that decided it

A plugin entry's ``status`` is one of ``PLUGIN_STATUSES``; ``error`` and ``on_error`` are
present when the plugin failed (and ``on_error`` says what it counted as), ``decision``
when it decided.

A shadow plugin's entry (``plugins.shadow``: run, traced, never merged) comes after
every enabled plugin's and has ``"shadow": true``; it never has ``on_error`` (its
failure counted for nothing). Unless it failed, it has ``would_change``: whether its
decision, merged as if ranked after every enabled plugin, would have changed the
answer; and when it would have, ``would_answer``: that answer's action name and
``maxDuration`` (when it has one). The other entries have none of these keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec

from core.events import freeze as frozen
from typing import Any

PLUGIN_STATUSES = (
    "decided",  # returned a Decision (decision hooks)
    "abstained",  # returned None (decision hooks)
    "ok",  # finished (DiCE/Notify hooks)
    "error",  # raised, or returned something that is not a Decision
    "timeout",  # still running at its timeout or the budget: abandoned
    "not-started",  # no hook worker was free before it was given up on
    "saturated",  # the plugin had as many hooks running as it may: not run
    "breaker-open",  # its circuit breaker was open: not run
)


def _plain(value: Any) -> Any:
    """For the encoder: a frozen object is written as the object it froze, anything
    else JSON has no type for as its text."""
    if type(value) is MappingProxyType:
        return dict(value)
    return str(value)


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)  # Decimal as a string, as before


def dumps(value: Any) -> str:
    """Compact JSON (UTF-8, not escaped) of a value that may hold ``frozen`` parts."""
    return _ENCODER.encode(value).decode()


@dataclass(frozen=True, slots=True)
class PluginResult:
    """What one plugin did for the callback."""

    plugin: str
    status: str
    ms: float = 0.0
    decision: Mapping[str, Any] | None = None
    error: str | None = None
    on_error: str | None = None
    shadow: bool = False  # a shadow plugin's: not merged
    would_change: bool | None = None  # a shadow plugin's decision would have changed the answer
    would_answer: Mapping[str, Any] | None = None  # to this: {"action": ..., "maxDuration": ...}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PluginResult:
        return cls(
            plugin=d["plugin"],
            status=d["status"],
            ms=d.get("ms", 0.0),
            decision=frozen(d["decision"]) if d.get("decision") is not None else None,
            error=d.get("error"),
            on_error=d.get("on_error"),
            shadow=bool(d.get("shadow")),
            would_change=d.get("would_change"),
            would_answer=frozen(d["would_answer"]) if d.get("would_answer") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plugin": self.plugin, "status": self.status, "ms": self.ms}
        if self.decision is not None:
            out["decision"] = self.decision
        if self.error is not None:
            out["error"] = self.error
        if self.on_error is not None:
            out["on_error"] = self.on_error
        if self.shadow:
            out["shadow"] = True
            if self.would_change is not None:
                out["would_change"] = self.would_change
            if self.would_answer is not None:
                out["would_answer"] = self.would_answer
        return out


@dataclass(frozen=True, slots=True)
class Trace:
    """Why one callback was answered as it was (see the module docstring)."""

    callid: str
    event: str
    received_at: str
    rule: str | None = None
    duplicate: bool = False
    plugins: tuple[PluginResult, ...] = ()
    decided_by: tuple[str, ...] = ()
    capped_by: str | None = None
    conflicts: tuple[Mapping[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    answer: Mapping[str, Any] | None = None
    elapsed_ms: float = 0.0
    attempt: int | None = None
    revision: str | None = None  # the configuration revision (``core.revisions``)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trace:
        return cls(
            callid=d.get("callid") or "",
            event=d.get("event") or "",
            received_at=d.get("received_at") or "",
            rule=d.get("rule"),
            duplicate=bool(d.get("duplicate")),
            plugins=tuple(PluginResult.from_dict(p) for p in d.get("plugins") or ()),
            decided_by=tuple(d.get("decided_by") or ()),
            capped_by=d.get("capped_by"),
            conflicts=frozen(list(d.get("conflicts") or ())),
            notes=tuple(d.get("notes") or ()),
            answer=frozen(d["answer"]) if d.get("answer") is not None else None,
            elapsed_ms=d.get("elapsed_ms", 0.0),
            attempt=d.get("attempt"),
            revision=d.get("revision"),
        )

    @classmethod
    def from_json(cls, text: str) -> Trace:
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (its parts may be frozen: write it with ``core.trace.dumps``, or
        ``json.loads(trace.to_json())`` for plain objects)."""
        out: dict[str, Any] = {
            "callid": self.callid,
            "event": self.event,
            "received_at": self.received_at,
            "rule": self.rule,
            "duplicate": self.duplicate,
            "plugins": [p.to_dict() for p in self.plugins],
            "decided_by": self.decided_by,
            "capped_by": self.capped_by,
            "conflicts": self.conflicts,
            "notes": self.notes,
            "answer": self.answer,
            "elapsed_ms": self.elapsed_ms,
        }
        if self.attempt is not None:
            out["attempt"] = self.attempt
        if self.revision is not None:
            out["revision"] = self.revision
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def plugin(self, name: str) -> PluginResult:
        """The entry of plugin ``name`` (``KeyError`` when it was not asked)."""
        for entry in self.plugins:
            if entry.plugin == name:
                return entry
        raise KeyError(name)
