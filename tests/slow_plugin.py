"""A plugin that takes its time deciding, to have callbacks in flight (test_server.py)."""

from __future__ import annotations

import time

from core.config import Key
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.svaml import ConnectPstn


@hookimpl
def switchboard_config_keys():
    return {"delay": Key(float, 0.5, "seconds to think before answering")}


@hookimpl
def switchboard_ice(event, ctx):
    time.sleep(ctx.config["delay"])
    return Decision.propose(ConnectPstn(number="+15612600684", max_duration=60), "slow but sure")
