"""A DiCE/Notify observer whose work fails while a flag file exists (its store is
"down"), or hangs while another does: for the retry tests (test_durability.py)."""

from __future__ import annotations

import os
import time

from core.config import Key
from core.hookspecs import hookimpl
from core.store import Migration


@hookimpl
def switchboard_config_keys():
    return {
        "fail_flag": Key(str, "", "fail while this file exists"),
        "hang_flag": Key(str, "", "hang while this file exists"),
    }


@hookimpl
def switchboard_store_migrations():
    return [
        Migration(
            1,
            ("CREATE TABLE flaky_seen (callid TEXT PRIMARY KEY, attempt INTEGER NOT NULL)",),
        )
    ]


@hookimpl
def switchboard_dice(event, ctx):
    hang, fail = ctx.config["hang_flag"], ctx.config["fail_flag"]
    while hang and os.path.exists(hang):
        time.sleep(0.05)
    if fail and os.path.exists(fail):
        raise RuntimeError("flaky store is down")
    with ctx.store.transaction() as tx:  # idempotent: a repeat changes nothing
        tx.lock(f"flaky:{event.callid}")
        if tx.one("SELECT 1 FROM flaky_seen WHERE callid = ?", (event.callid,)) is None:
            tx.execute(
                "INSERT INTO flaky_seen (callid, attempt) VALUES (?, ?)",
                (event.callid, ctx.attempt),
            )
