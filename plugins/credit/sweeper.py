"""credit's sweeper: expires the reservations whose DiCE never came.

A call whose DiCE is lost (or whose answer suppressed callbacks) would hold its
reservation forever. ``grace`` seconds after its ``maxDuration`` the reservation
expires: its credit is available again. A DiCE that comes later still settles the call
at the reserved rate.
"""

from __future__ import annotations

import logging
import threading
import time

from core import Store
from plugins.credit.rating import fmt

log = logging.getLogger("switchboard.plugin.credit")


def sweep(store: Store, decimals: int, now: float | None = None) -> list[str]:
    """Expire open reservations past maxDuration + grace; return their call ids."""
    now = time.time() if now is None else now
    with store.transaction() as tx:
        rows = tx.all(
            "SELECT callid, account, amount FROM credit_reservations WHERE status = 'open' AND expires_at < ?",
            (now,),
        )
        for callid, _, _ in rows:
            tx.execute(
                "UPDATE credit_reservations SET status = 'expired' WHERE callid = ?", (callid,)
            )
    for callid, account, amount in rows:
        log.warning(
            "reservation of call %s expired (no DiCE): released %s from account %s",
            callid,
            fmt(amount, decimals),
            account,
        )
    return [r[0] for r in rows]


class Sweeper:
    """A daemon thread that sweeps every ``interval`` seconds until stopped."""

    def __init__(self, store: Store, decimals: int, interval: float) -> None:
        self.store, self.decimals, self.interval = store, decimals, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="credit-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep(self.store, self.decimals)
            except Exception:
                log.exception("reservation sweep failed")
