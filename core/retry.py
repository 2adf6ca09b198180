"""The retry worker: runs the plugins' work on received DiCE and Notify callbacks again
when it failed, or when the worker processing it died.

Every DiCE and Notify is recorded with its body before it is answered (see
``Pipeline._observe``). Work that failed is given a time for its next attempt, with a
backoff that doubles up to ``policy.retry_max_backoff``; a claim whose server process
died (a crash, ``kill -9``) is found by ``Store.due`` as soon as the store can tell
(``Store.alive``), or once its lease runs out. This worker finds
both, claims each exclusively (several server processes may share the store) and runs
the plugins that have not succeeded yet, until they do or the work is parked after
``policy.retry_attempts`` for an operator (``serve.py inbox``).

It also records the fallback answers sent while the store could not record them
(``Pipeline.record_fallbacks``), and once an hour purges the recorded callbacks older
than ``store.retention_days`` (``Store.purge``).
"""

from __future__ import annotations

import logging
import threading
import time

from core.metrics import StoreGauges
from core.pipeline import Pipeline
from core.store import Store

log = logging.getLogger("switchboard.retry")

INTERVAL = 0.5  # seconds between looks at the store when there was nothing to do
BATCH = 20
PURGE_EVERY = 3600.0  # seconds between purges of callbacks past their retention
FIRST_PURGE = 300.0  # seconds after the start
DAY = 86400.0


class Retrier:
    def __init__(self, pipeline: Pipeline, interval: float = INTERVAL) -> None:
        self.pipeline = pipeline
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # time.monotonic() of the next purge: the first a while after the start, so that
        # a start (or a reload) does no more than it must
        self._next_purge = time.monotonic() + FIRST_PURGE

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="switchboard-retry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> int:
        """Retry every piece of work that is due now; returns how many were tried."""
        tried = 0
        for item in self.pipeline.store.due(limit=BATCH):
            if self._stop.is_set():
                break
            try:
                if self.pipeline.retry(item) != "taken":
                    tried += 1
            except Exception as exc:  # noqa: BLE001 - recorded for a retry by _work; go on
                log.warning(
                    "retry of %s for call %s failed: %s: %s",
                    item.event,
                    item.callid,
                    type(exc).__name__,
                    exc,
                )
        return tried

    def purge_once(self) -> int:
        """Delete the recorded callbacks older than ``store.retention_days``."""
        days = self.pipeline.settings.store["retention_days"]
        deleted = self.pipeline.store.purge(time.time() - days * DAY)
        if deleted:
            log.info("purged %d recorded callbacks older than %g days", deleted, days)
        return deleted

    def _loop(self) -> None:
        said = ""
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_purge:
                    self._next_purge = time.monotonic() + PURGE_EVERY
                    self.purge_once()
                self.pipeline.record_fallbacks()
                busy = self.run_once()
                said = ""
            except Exception as exc:  # noqa: BLE001 - a failing store: look again later
                problem = f"{type(exc).__name__}: {exc}"
                if problem != said:  # once per distinct problem, not twice a second
                    log.warning("retry worker: %s", problem)
                    said = problem
                busy = 0
            if not busy:
                self._stop.wait(self.interval)


def waiting_gauges(store: Store) -> StoreGauges:
    """``switchboard_callbacks_retrying`` and ``switchboard_callbacks_parked``."""
    return StoreGauges(
        store,
        "SELECT COALESCE(SUM(CASE WHEN state = 'retry' THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN state = 'parked' THEN 1 ELSE 0 END), 0) "
        "FROM callbacks WHERE state IN ('retry', 'parked')",
        (
            "switchboard_callbacks_retrying",
            "Received DiCE/Notify callbacks whose plugin work failed and waits for a retry",
        ),
        (
            "switchboard_callbacks_parked",
            "Received DiCE/Notify callbacks whose plugin work was given up on after "
            "policy.retry_attempts (serve.py inbox)",
        ),
    )
