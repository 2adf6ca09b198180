"""A circuit breaker per plugin, so that a plugin that keeps timing out cannot hold the
server's threads.

A hook that times out still runs on its worker thread until it returns; a plugin stuck
on a dead network call would, call after call, tie up the hook workers and keep every
callback waiting for its timeout. So: after ``threshold`` timeouts within ``window``
seconds the breaker *opens* and the plugin is not called for ``cooldown`` seconds (the
pipeline applies its ``on_error`` at once and the trace says so). After the cooldown it
is *half open*: one trial call goes through (another one a cooldown later, if that one
never comes back); its success closes the breaker, its timeout opens it again at once.
``threshold = 0`` turns the breaker off.
"""

from __future__ import annotations

import threading
from collections import deque


class Breaker:
    """The breakers of every plugin of one pipeline. Times are ``time.monotonic()``."""

    def __init__(self, threshold: int, window: float, cooldown: float) -> None:
        self.threshold, self.window, self.cooldown = threshold, window, cooldown
        self._lock = threading.Lock()
        self._timeouts: dict[str, deque[float]] = {}
        self._open_until: dict[str, float] = {}
        self._half_open: dict[str, float] = {}  # plugin -> when its trial call began

    def allows(self, plugin: str, now: float) -> bool:
        """Whether ``plugin`` may be called now."""
        until = self._open_until.get(plugin)  # read without the lock: the common case
        if until is None and plugin not in self._half_open:
            return True
        with self._lock:
            until = self._open_until.get(plugin)
            if until is not None:
                if now < until:
                    return False
                del self._open_until[plugin]
                self._half_open[plugin] = now  # this call is the trial
                return True
            trial = self._half_open.get(plugin)
            if trial is None:
                return True
            if now >= trial + self.cooldown:  # the trial never came back: another one
                self._half_open[plugin] = now
                return True
            return False

    def left(self, plugin: str, now: float) -> float:
        """Seconds until the breaker lets a call through again."""
        until = self._open_until.get(plugin)
        if until is None:
            trial = self._half_open.get(plugin)
            until = now if trial is None else trial + self.cooldown
        return max(0.0, until - now)

    def is_open(self, plugin: str, now: float) -> bool:
        return self._open_until.get(plugin, now) > now

    def timed_out(self, plugin: str, now: float) -> bool:
        """Count a timeout of ``plugin``; True when this one opened its breaker."""
        if self.threshold <= 0:
            return False
        with self._lock:
            if plugin in self._open_until:
                return False  # open already (a call from before it opened)
            recent = self._timeouts.setdefault(plugin, deque())
            recent.append(now)
            while recent and recent[0] < now - self.window:
                recent.popleft()
            if plugin in self._half_open or len(recent) >= self.threshold:
                self._half_open.pop(plugin, None)
                recent.clear()
                self._open_until[plugin] = now + self.cooldown
                return True
            return False

    def untried(self, plugin: str) -> None:
        """A call of ``plugin`` that never ran (no free worker, too many running): if it
        was the half-open trial, the next call is."""
        if plugin in self._half_open:
            with self._lock:
                if plugin in self._half_open:
                    self._half_open[plugin] = float("-inf")

    def succeeded(self, plugin: str) -> None:
        """A call of ``plugin`` came back in time (with an answer or an error: it does
        not hang): a half-open breaker closes."""
        if plugin in self._half_open:
            with self._lock:
                self._half_open.pop(plugin, None)
