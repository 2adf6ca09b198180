"""A plugin whose DiCE work fails while a flag file exists (test_faults.py).

Its DiCE hook records the call in its own table, ``flaky_seen`` (idempotently, so it
may run more than once for a call), and raises instead while the file named by
``fail_flag`` exists: like a plugin whose database or network is down for a while.
"""

from __future__ import annotations

import os

from core.config import Key
from core.hookspecs import hookimpl
from core.store import Migration


@hookimpl
def switchboard_config_keys():
    return {"fail_flag": Key(str, "", "while this file exists, the DiCE hook raises")}


@hookimpl
def switchboard_store_migrations():
    return [Migration(1, ("CREATE TABLE flaky_seen (callid TEXT PRIMARY KEY)",), "seen calls")]


@hookimpl
def switchboard_dice(event, ctx):
    flag = ctx.config["fail_flag"]
    if flag and os.path.exists(flag):
        raise RuntimeError("flaky: my store is down")
    with ctx.store.transaction() as tx:
        tx.lock(f"flaky:{event.callid}")
        if tx.one("SELECT 1 FROM flaky_seen WHERE callid = ?", (event.callid,)) is None:
            tx.execute("INSERT INTO flaky_seen (callid) VALUES (?)", (event.callid,))
