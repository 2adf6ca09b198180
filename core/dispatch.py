"""Running a callback's plugin hooks: each timed and isolated, against a deadline.

The hooks of one callback run one after another in a single worker while each is quick
(one thread hand-off per callback); as soon as one takes longer than ``FAN_OUT_AFTER``
(or its own timeout), the ones after it start at once in workers of their own, so a
slow or hung plugin delays the others by that much at most. A plugin never runs on more
than ``Running.limit`` workers at once, and a hook the pipeline stopped waiting for
before it started is not run. ``core.pipeline`` reads the results and merges them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from core.context import CallContext
from core.events import Event
from core.plugins import Impl
from core.store import Deferred, Store

FAN_OUT_AFTER = 0.02  # seconds a hook may run before the ones after it start in parallel


class Saturated(Exception):
    """A plugin had ``Running.limit`` hooks running already: this one was not started."""


class Running:
    """Per plugin, how many of its hooks are running now, each holding a hook worker. At
    ``limit`` another is not started (its ``on_error`` applies at once), so a plugin
    that hangs, even on a burst of calls, cannot take every worker from the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}

    def enter(self, plugin: str) -> bool:
        with self._lock:
            n = self._count.get(plugin, 0)
            if n >= self.limit:
                return False
            self._count[plugin] = n + 1
            return True

    def leave(self, plugin: str) -> None:
        with self._lock:
            self._count[plugin] -= 1

    def count(self, plugin: str) -> int:
        return self._count.get(plugin, 0)

    def full(self, plugin: str) -> bool:
        return self._count.get(plugin, 0) >= self.limit


class Handoff:
    """What a hook's worker hands the pipeline besides its result: the store commits the
    hook made without waiting for the disk (``Store.deferred_flush``). The pipeline
    flushes those of every hook it collected, once, before it answers; for a hook it
    stopped waiting for (timeout, budget), the worker flushes them itself. A hook the
    pipeline stopped waiting for before it started is not run at all."""

    def __init__(self, plugin: str, running: Running) -> None:
        self.plugin, self.running = plugin, running
        self.lock = threading.Lock()
        self.seq = 0
        self.started = False
        self.finished = False
        self.abandoned = False

    def begin(self) -> bool:
        """The worker, before calling the hook: False when it is no longer wanted;
        ``Saturated`` when the plugin has as many hooks running as it may."""
        with self.lock:
            if self.abandoned:
                return False
            if not self.running.enter(self.plugin):
                raise Saturated(
                    f"{self.running.limit} of its calls were running already: not started"
                )
            self.started = True
            return True

    def hook_done(self, store: Store, seq: int) -> None:
        """The worker, after the hook returned or raised."""
        self.running.leave(self.plugin)
        with self.lock:
            self.seq, self.finished = seq, True
            abandoned = self.abandoned
        if abandoned:
            store.flush(seq)

    def abandon(self) -> bool:
        """The pipeline stops waiting for this hook; returns whether it had started."""
        with self.lock:
            if not self.finished:
                self.abandoned = True
            return self.started

    def collect(self) -> int:
        """The pipeline, done waiting: what to flush before answering (0: nothing)."""
        with self.lock:
            if self.finished:
                return self.seq
            self.abandoned = True
            return 0


class Sequence:
    """Runs hooks one after another in one worker. ``watch`` waits for them all, or
    stops the sequence after the hook running once that one is slow."""

    def __init__(self, event: Event, calls: list[tuple[Impl, CallContext, Handoff]]) -> None:
        self.event = event
        self.calls = calls
        self.cond = threading.Condition()
        self.started: dict[int, float] = {}
        self.outcomes: dict[int, tuple[bool, Any]] = {}  # index -> (ok, (value, elapsed) | exc)
        self.limit = len(calls) - 1
        self.finished = threading.Lock()  # held until every hook of the sequence is done
        self.finished.acquire()

    def run(self) -> None:
        for i, (impl, ctx, handoff) in enumerate(self.calls):
            with self.cond:
                if i > self.limit:
                    return
                self.started[i] = time.monotonic()
            try:
                outcome: tuple[bool, Any] = (True, timed(impl, self.event, ctx, handoff))
            except Exception as exc:  # noqa: BLE001 - reported to the waiter
                outcome = (False, exc)
            with self.cond:
                self.outcomes[i] = outcome
                if i == self.limit:
                    self.cond.notify_all()
                    if i == len(self.calls) - 1:
                        self.finished.release()

    def started_at(self, i: int) -> float | None:
        with self.cond:
            return self.started.get(i)

    def wait(self, i: int, until: float) -> bool:
        """Wait (at most until ``until``) for hook ``i``; True when it is done."""
        with self.cond:
            while i not in self.outcomes:
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def watch(self, submitted: float, timeouts: list[float], cutoff: float) -> int:
        """Wait for the whole sequence, or until the hook running has taken longer than
        ``FAN_OUT_AFTER`` (or its timeout), or the cutoff; then stop the sequence after
        the hook running. Returns the last index the sequence runs."""
        # the common case, quick hooks: one wait in C, no polling of the condition
        quick = min(FAN_OUT_AFTER, *timeouts)
        if self.finished.acquire(
            timeout=max(0.0, min(submitted + quick, cutoff) - time.monotonic())
        ):
            return self.limit
        with self.cond:
            while len(self.outcomes) < len(self.calls):
                running = max(self.started, default=0)
                began = self.started.get(running, submitted)
                if running in self.outcomes:  # between two hooks: look again shortly
                    began = time.monotonic()
                give_up = min(began + min(FAN_OUT_AFTER, timeouts[running]), cutoff)
                left = give_up - time.monotonic()
                if left <= 0:
                    self.limit = running
                    return running
                self.cond.wait(left)
            return self.limit


class SeqResult:
    """A hook of a ``Sequence`` seen as a future: ``result(timeout)``."""

    def __init__(self, seq: Sequence, i: int) -> None:
        self.seq, self.i = seq, i

    def result(self, timeout: float | None = None) -> Any:
        done = self.seq.outcomes.get(self.i)  # set once, read without the lock
        if done is None and not self.seq.wait(self.i, time.monotonic() + (timeout or 0.0)):
            raise FutureTimeout()
        ok, value = done or self.seq.outcomes[self.i]
        if not ok:
            raise value
        return value


@dataclass
class PluginRun:
    impl: Impl
    future: Future[Any] | SeqResult
    timeout: float
    on_error: str
    started: float
    handoff: Handoff


def timed(impl: Impl, event: Event, ctx: CallContext, handoff: Handoff) -> tuple[Any, float]:
    start = time.monotonic()
    if not handoff.begin():  # the pipeline gave up on it before a worker was free
        return None, 0.0
    pending = Deferred()
    try:  # the plugin's store waits end at the callback's deadline too
        with ctx.store.deferred_flush() as pending, ctx.store.until(ctx.deadline):
            value = impl(event=event, ctx=ctx)
    finally:
        handoff.hook_done(ctx.store, pending.seq)
    return value, time.monotonic() - start
