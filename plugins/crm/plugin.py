"""crm's hooks: the Crm plugin, wiring the call record, the outbox and the CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from core import CallContext, ConsolePage, Dice, Key, Migration, Store, StoreGauges, hookimpl
from plugins.crm import console, record
from plugins.crm.cli import register
from plugins.crm.outbox import Outbox
from plugins.crm.schema import MIGRATIONS
from plugins.crm.settings import KEYS, check


class Crm:
    """One instance per server."""

    def __init__(self) -> None:
        self.config: Mapping[str, Any] = {}
        self.store: Store | None = None
        self.outbox: Outbox | None = None  # from switchboard_startup on

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return KEYS

    @hookimpl
    def switchboard_store_migrations(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        check(config)
        self.config = config

    @hookimpl
    def switchboard_startup(self, store: Store, serving: bool) -> None:
        self.store = store
        self.outbox = Outbox(store, self.config)
        if serving and self.config["webhook_url"]:
            self.outbox.start()

    @hookimpl
    def switchboard_metrics(self, registry: Any) -> None:
        if self.store is not None:
            registry.register(
                StoreGauges(
                    self.store,
                    "SELECT (SELECT COUNT(*) FROM crm_outbox), (SELECT COUNT(*) FROM crm_dead)",
                    ("switchboard_crm_outbox_depth", "Call records waiting for CRM delivery"),
                    ("switchboard_crm_dead_letters", "Call records that exhausted their attempts"),
                )
            )

    @hookimpl
    def switchboard_shutdown(self) -> None:
        if self.outbox is not None:
            self.outbox.stop()

    @hookimpl
    def switchboard_register_commands(self, cli: click.Group) -> None:
        register(cli, self)

    @hookimpl
    def switchboard_console_pages(self) -> list[ConsolePage]:
        return console.pages(self)

    @hookimpl
    def switchboard_dice(self, event: Dice, ctx: CallContext) -> None:
        deliver = bool(self.config["webhook_url"])
        if record.save(ctx.store, record.build(event, ctx.store), deliver) and self.outbox:
            self.outbox.wake()

    # ------------------------------------------------------------------ operator tools

    @hookimpl
    def switchboard_call_details(
        self, store: Store, callids: Sequence[str]
    ) -> Mapping[str, Mapping[str, str]]:
        return record.delivery(store, callids)

    def drain(self, now: float | None = None, only: str | None = None) -> int:
        """Attempt up to ``batch`` due records now; return how many were attempted."""
        return self._started().drain(now, only)

    def replay(self, callid: str | None = None) -> list[str]:
        """Move dead letters (one, or all) back to the outbox, due now."""
        return self._started().replay(callid)

    def _started(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("the crm plugin is not started yet")
        return self.outbox
