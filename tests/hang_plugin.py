"""A plugin that hangs on some ICEs, like one stuck on a dead network call
(test_faults.py: the budget holds as the client sees it, at saturation).

Which calls hang is decided by the call id, so a run is reproducible: a call hangs when
``sha256(callid) % 1000 < share * 1000``. Every other call gets no opinion at once.
"""

from __future__ import annotations

import hashlib
import time

from core.config import Key
from core.hookspecs import hookimpl


def hangs(callid: str, share: float) -> bool:
    digest = int.from_bytes(hashlib.sha256(callid.encode()).digest()[:4], "big")
    return digest % 1000 < share * 1000


@hookimpl
def switchboard_config_keys():
    return {
        "hang": Key(float, 4.0, "seconds to hang on a hanging call"),
        "share": Key(float, 0.06, "share of calls that hang (0..1)"),
    }


@hookimpl
def switchboard_ice(event, ctx):
    if hangs(event.callid, ctx.config["share"]):
        time.sleep(ctx.config["hang"])
    return None
