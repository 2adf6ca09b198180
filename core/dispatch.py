"""Running one callback's plugin hooks against a deadline: the hook scheduler.

What it does, in three sentences:

1. A callback's hooks are handed to one worker, which runs them one after another in
   precedence order; if they have not all finished ``FAN_OUT_AFTER`` (20 ms, or the
   shortest hook timeout if less) later, or as soon as one is given up on, every hook
   not yet started is handed a worker of its own too, and whichever worker reaches a
   hook first runs it, so a slow or hung hook delays the others by 20 ms at most.
2. The caller waits for each hook, in order, until its own timeout has passed since it
   started (or since the dispatch, while it has not started), or until the cutoff,
   whichever is sooner; a hook not started when the caller gives up on it is never run,
   and one still running is abandoned: its result is ignored and its worker flushes its
   store commits itself.
3. A plugin never runs on more than ``limit`` workers at once (``Running``): a hook that
   would exceed it is not run and reports ``saturated``.

The pipeline (``core.pipeline``) turns each ``Call``'s outcome into the trace, the
breaker and the merge; this module knows nothing of decisions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from core.context import CallContext
from core.events import Event
from core.logs import CALLID
from core.store import Store

FAN_OUT_AFTER = 0.02  # seconds before the hooks not yet started get a worker each


class Running:
    """Per plugin, how many of its hooks are running now, each holding a worker."""

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


# a Call's states; the first of ``run`` (a worker) and ``give_up`` (the caller) to move
# it out of WAITING decides whether it runs
WAITING, RUNNING, DONE, DROPPED = "waiting", "running", "done", "dropped"


class Call:
    """One hook invocation. Its outcome, once ``done`` is set, is one of:

    * ``status == "done"``: the hook returned ``value`` (or raised ``error``) after
      ``elapsed`` seconds;
    * ``status == "saturated"``: not run, the plugin had ``limit`` hooks running;
    * after ``give_up``: ``"timeout"`` (it had started) or ``"not-started"``.
    """

    def __init__(
        self,
        hook: Callable[..., Any],
        plugin: str,
        event: Event,
        ctx: CallContext,
        timeout: float,
        running: Running,
    ) -> None:
        self.hook, self.plugin, self.event, self.ctx = hook, plugin, event, ctx
        self.timeout, self.running = timeout, running
        self.state = WAITING
        self.status = ""
        self.started = 0.0  # time.monotonic() when it started running
        self.elapsed = 0.0
        self.value: Any = None
        self.error: BaseException | None = None
        self.seq = 0  # the store commits it deferred (``Store.deferred_flush``)
        self.abandoned = False
        self.done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Run the hook, unless another worker took it, the caller gave up on it, or
        the plugin is saturated."""
        with self._lock:
            if self.state != WAITING:
                return
            if not self.running.enter(self.plugin):
                self.state, self.status = DONE, "saturated"
                self.done.set()
                return
            self.state, self.started = RUNNING, time.monotonic()
        store: Store = self.ctx.store
        pending = None
        bound = CALLID.set(self.ctx.callid or None)  # the plugin's log lines name the call
        try:  # the plugin's store waits end at the callback's deadline too
            with store.deferred_flush() as pending, store.until(self.ctx.deadline):
                self.value = self.hook(event=self.event, ctx=self.ctx)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit: a failure, not a success
            self.error = exc
        finally:
            CALLID.reset(bound)
            self.elapsed = time.monotonic() - self.started
            self.running.leave(self.plugin)
            with self._lock:
                self.seq = pending.seq if pending is not None else 0
                self.state = DONE
                if not self.abandoned:
                    self.status = "done"
            self.done.set()
            if self.abandoned:  # nobody will flush what it committed: flush it here
                store.flush(self.seq)

    def give_up(self) -> None:
        """The caller stops waiting: a hook not started never runs, a running one is
        abandoned."""
        with self._lock:
            if self.state == WAITING:
                self.state, self.status = DROPPED, "not-started"
            elif self.state == RUNNING:
                self.abandoned, self.status = True, "timeout"
            else:
                return
        self.done.set()

    def wait_until(self, dispatched: float, cutoff: float) -> float:
        """When the caller stops waiting for this hook."""
        return min((self.started or dispatched) + self.timeout, cutoff)


def dispatch(executor: Executor, calls: Sequence[Call], cutoff: float) -> float:
    """Run ``calls`` as the module docstring says and wait for each; on return every
    call has its outcome (``Call.status``). Returns the time of the dispatch."""
    if not calls:
        return time.monotonic()
    dispatched = time.monotonic()
    executor.submit(_in_order, calls)
    fan_out_at: float | None = dispatched + min(FAN_OUT_AFTER, *(c.timeout for c in calls))
    for call in calls:
        while not call.done.is_set():
            now = time.monotonic()
            until = call.wait_until(dispatched, cutoff)
            if now >= until:
                call.give_up()
                if fan_out_at is not None:  # the in-order worker may be stuck in it
                    fan_out_at = now
            if fan_out_at is not None and now >= fan_out_at:
                fan_out_at = None
                for other in calls:
                    if other.state == WAITING:
                        executor.submit(other.run)
                continue
            call.done.wait((until if fan_out_at is None else min(until, fan_out_at)) - now)
    return dispatched


def _in_order(calls: Sequence[Call]) -> None:
    for call in calls:
        call.run()
