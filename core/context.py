"""The per-call context a plugin's event hook gets besides the event: part of the plugin
contract (``core.hookspecs``), public as ``core.CallContext``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.config import PluginConfig
from core.store import Store


@dataclass(frozen=True)
class CallContext:
    """What a plugin gets with every event besides the event itself."""

    callid: str
    event: str
    plugin: str
    config: PluginConfig
    store: Store
    deadline: float
    log: logging.Logger
    attempt: int = 1  # DiCE/Notify: 2 and up when an earlier attempt failed (retries)
    now: Callable[[], float] = time.time
    """The time of the call's events, as ``time.time()``: use it for whatever a plugin
    stamps or counts in time (velocity windows, reservations). It is the wall clock on
    live traffic; ``serve.py replay`` sets it to when each recorded callback arrived."""

    def remaining(self) -> float:
        """Seconds left before the answer must be ready."""
        return max(0.0, self.deadline - time.monotonic())

    def __repr__(self) -> str:  # never the config: it may hold secrets
        return f"CallContext(callid={self.callid!r}, event={self.event!r}, plugin={self.plugin!r})"
