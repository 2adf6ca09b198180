"""Logging set-up: one handler on stderr, in text or JSON lines, with the call id bound.

``setup(level, fmt)`` installs the handler (``logging.format`` / ``$SWITCHBOARD_LOG_FORMAT``:
``"text"`` or ``"json"``) and returns a function that removes it again. ``CALLID`` is a
context variable holding the call id being processed; ``CallidFilter`` copies it onto
every record as ``record.callid``, so a plugin's ``ctx.log.info(...)`` lines carry the
call they are about without the plugin saying so. ``Sparse`` thins a logger that would
write one line per request under load.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

CALLID: ContextVar[str | None] = ContextVar("switchboard_callid", default=None)
"""The call id of the callback this thread (or task) is working on; ``None`` outside one."""

# what every LogRecord has; anything else on a record came from ``extra=`` (or a filter)
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "callid",
    "taskName",
}


class CallidFilter(logging.Filter):
    """Sets ``record.callid`` from ``CALLID`` (unless the record was given one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "callid", None) is None:
            record.callid = CALLID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``callid`` when set, every field given with ``extra=``, and
    ``exception`` with the traceback.

    A message that is itself a JSON object (the per-callback line of
    ``switchboard.callback``) is not quoted as a string: its fields become top-level
    keys and ``message`` is the last part of the logger's name (``"callback"``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        callid = getattr(record, "callid", None)
        if callid is not None:
            out["callid"] = callid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out.setdefault(key, value)
        fields = _json_object(message)
        if fields is not None:
            out["message"] = record.name.rsplit(".", 1)[-1]
            for key, value in fields.items():
                if key not in ("time", "level", "logger", "message"):
                    out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def _json_object(message: str) -> dict[str, Any] | None:
    if not (message.startswith("{") and message.endswith("}")):
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup(level: str = "INFO", fmt: str = "text") -> Callable[[], None]:
    """Send log records of ``level`` and above to stderr in ``fmt`` (``"text"`` or
    ``"json"``), replacing the root logger's handlers. Returns a function that puts the
    previous handlers and level back."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(CallidFilter())
    for old in before[1]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

    def undo() -> None:
        root.removeHandler(handler)
        for old in before[1]:
            root.addHandler(old)
        root.setLevel(before[0])

    return undo


class Sparse(logging.Filter):
    """Lets one record through per ``interval`` seconds and counts the rest into it.

    waitress warns "Task queue depth is N" for every request that has to queue: under
    load that is a line per request, which floods the log and costs each request the
    formatting and writing of it. One line every few seconds says the same."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.next_at = 0.0
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.msg} ({self.held} more in the last {self.interval:g} s)"
            self.held = 0
        self.next_at = now + self.interval
        return True
