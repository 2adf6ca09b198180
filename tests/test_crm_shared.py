"""crm on a shared store: two healthy servers deliver every outbox record exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from core.config import Key
from core.store import CORE_MIGRATIONS, Store, open_store
from plugins.crm import KEYS, MIGRATIONS, Crm, Outbox
from tests.fake_crm import FakeCrm
from tests.helpers import KEY, SECRET, wait_for

pytestmark = pytest.mark.usefixtures("backend")

CRM_SECRET = "crm-shared-secret"
BACKLOG = 120


def _defaults(keys: dict[str, Key]) -> dict[str, object]:
    return {name: key.default for name, key in keys.items()}


def _backlog(store: Store, count: int) -> list[str]:
    """``count`` records in the outbox, all due now."""
    store.migrate("core", CORE_MIGRATIONS)
    store.migrate("crm", MIGRATIONS)
    now = time.time()
    callids = [f"backlog-{i:03d}" for i in range(count)]
    with store.transaction() as tx:
        for i, callid in enumerate(callids):
            tx.execute(
                "INSERT INTO crm_outbox (callid, payload, attempts, next_attempt_at, created_at) "
                "VALUES (?, ?, 0, ?, ?)",
                (callid, json.dumps({"callid": callid}), now + i * 1e-6, now),
            )
    return callids


def _drainer(url: str, crm_url: str, **config: object) -> Crm:
    plugin = Crm()
    plugin.switchboard_configure(
        config={
            **_defaults(KEYS),
            "webhook_url": crm_url,
            "webhook_secret": CRM_SECRET,
            **config,
        }
    )
    plugin.switchboard_startup(store=open_store(url, pool_size=2), serving=False)
    return plugin


def test_two_drainers_on_one_store_deliver_each_record_once(tmp_path, backend):
    """Two drainers, as two servers would run them, on one store and a backlog of 120
    with a slow CRM. With the whole batch leased at once for 2 x timeout + 5 s, the
    second drainer took over records the first had not reached yet."""
    url = backend.url(tmp_path, "outbox")
    setup = open_store(url, tmp_path, pool_size=1)
    callids = _backlog(setup, BACKLOG)
    with FakeCrm(CRM_SECRET, delay=0.06) as crm:
        # one pass covers the whole backlog: its last records wait ~7 s for their turn,
        # past a lease of 2 x 0.2 + 5 s had it been taken with the first
        drainers = [_drainer(url, crm.url, delivery_timeout=0.2, batch=BACKLOG) for _ in range(2)]
        done = [0, 0]

        def work(i: int) -> None:
            while n := drainers[i].drain():
                done[i] += n

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        try:
            counts = Counter(crm.received)
            assert [c for c, n in counts.items() if n > 1] == []
            assert sorted(counts) == callids
            assert done[0] > 0 and done[1] > 0 and sum(done) == BACKLOG
            assert setup.query("SELECT COUNT(*) FROM crm_outbox") == [(0,)]
        finally:
            for d in drainers:
                assert d.store is not None
                d.store.close()
            setup.close()


def test_bookkeeping_needs_the_claim(tmp_path, monkeypatch, backend):
    """A drainer whose lease ran out (it stalled) books nothing for a failed attempt;
    the record belongs to whoever claimed it since. A success still settles it."""
    url = backend.url(tmp_path, "claims")
    setup = open_store(url, tmp_path, pool_size=1)
    _backlog(setup, 2)
    a = _drainer(url, "http://127.0.0.1:9/x", max_attempts=2)
    b = _drainer(url, "http://127.0.0.1:9/x", max_attempts=2)
    try:
        monkeypatch.setattr(Outbox, "post", lambda self, callid, body: "HTTP 503")
        first = a.outbox.claim(None, "backlog-000")
        assert first is not None
        assert b.outbox.claim(None, "backlog-000") is None  # held: nobody else gets it
        setup.write("UPDATE crm_outbox SET next_attempt_at = 0 WHERE callid = 'backlog-000'")
        second = b.outbox.claim(None, "backlog-000")  # a's lease ran out: b takes over
        assert second is not None and second[3] != first[3]
        a.outbox.attempt(*first)  # a's late failure changes nothing
        row = setup.query("SELECT attempts, claim FROM crm_outbox WHERE callid = 'backlog-000'")
        assert row == [(0, second[3])]
        b.outbox.attempt(*second)
        row = setup.query("SELECT attempts, claim FROM crm_outbox WHERE callid = 'backlog-000'")
        assert row == [(1, None)]
        # a late last attempt does not move the record to the dead letters either
        third = a.outbox.claim(time.time() + 10**6, "backlog-000")
        assert third is not None
        setup.write("UPDATE crm_outbox SET claim = 'someone-else' WHERE callid = 'backlog-000'")
        a.outbox.attempt(*third)
        assert setup.query("SELECT COUNT(*) FROM crm_dead") == [(0,)]
        # a late success settles the record all the same: it reached the CRM
        monkeypatch.setattr(Outbox, "post", lambda self, callid, body: None)
        late = a.outbox.claim(None, "backlog-001")
        assert late is not None
        setup.write("UPDATE crm_outbox SET claim = 'someone-else' WHERE callid = 'backlog-001'")
        a.outbox.attempt(*late)
        assert setup.query("SELECT COUNT(*) FROM crm_outbox WHERE callid = 'backlog-001'") == [
            (0,)
        ]
    finally:
        for d in (a, b):
            assert d.store is not None
            d.store.close()
        setup.close()


def test_two_servers_deliver_a_backlog_exactly_once(serve, tmp_path, backend):
    """Two real servers start on one store holding 120 undelivered records, with a slow
    CRM: each record reaches the CRM once, and both servers did part of the work."""
    url = backend.url(tmp_path, "shared-outbox")
    setup = open_store(url, tmp_path, pool_size=1)
    try:
        callids = _backlog(setup, BACKLOG)
    finally:
        setup.close()
    with FakeCrm(CRM_SECRET, delay=0.06) as crm:
        config = f"""
[server]
port = 0
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[store]
url = "{url}"
[plugins]
enabled = ["crm"]
[plugins.crm]
webhook_url = "{crm.url}"
delivery_timeout = 0.5
batch = {BACKLOG}
poll_interval = 0.05
"""
        env = {"SWITCHBOARD_CRM_SECRET": CRM_SECRET}
        a = serve(config, name="outbox-a", env=env)
        b = serve(config, name="outbox-b", env=env)
        assert wait_for(lambda: len(crm.received) >= BACKLOG, timeout=30)
        time.sleep(0.5)  # nothing more arrives
        a.stop()
        b.stop()
        counts = Counter(crm.received)
        assert [c for c, n in counts.items() if n > 1] == []
        assert sorted(counts) == callids and crm.bad_signatures == 0
        assert "delivered to the CRM" in a.log and "delivered to the CRM" in b.log
    store = open_store(url, Path(tmp_path), pool_size=1)
    try:
        assert store.query("SELECT COUNT(*) FROM crm_outbox") == [(0,)]
    finally:
        store.close()
