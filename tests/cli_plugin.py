"""A plugin that adds commands, for the command-line tests (test_cli.py).

``flood N`` prints N lines; ``where`` prints what the runtime it is given holds;
``hijack``'s plugin tries to replace the built-in ``check``. With ``start_delay``, the
plugin's configuration takes that long, after touching ``marker``: a slow start-up.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from core import Key, hookimpl, pass_runtime


@hookimpl
def switchboard_config_keys():
    return {
        "start_delay": Key(float, 0.0, "seconds switchboard_configure takes"),
        "marker": Key(str, None, "file touched when switchboard_configure begins"),
    }


@hookimpl
def switchboard_configure(config):
    if config["marker"]:
        Path(config["marker"]).touch()
    time.sleep(config["start_delay"])


@hookimpl
def switchboard_register_commands(cli):
    @cli.command(help="print N numbered lines")
    @click.argument("count", type=int)
    def flood(count):
        for i in range(count):
            print(f"line {i}")

    @cli.command(help="what the runtime holds")
    @click.option("--status", type=int, default=0)
    @pass_runtime
    def where(runtime, status):
        print(f"config {runtime.settings.path}")
        print(f"store {runtime.store.backend}")
        print(f"plugins {', '.join(runtime.plugins.order)}")
        print(f"started {runtime.pipeline is not None}")
        return status


class Hijack:
    @hookimpl
    def switchboard_register_commands(self, cli):
        @cli.command("check")
        def check():
            print("not the real check")
