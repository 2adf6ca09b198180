"""credit's hooks: the Credit plugin, wiring settings, rating, ledger, sweeper and CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from core import (
    Answer,
    CallContext,
    ConsolePage,
    Decision,
    Dice,
    Event,
    Ice,
    Key,
    Migration,
    Say,
    Store,
    StoreGauges,
    Trace,
    hookimpl,
)
from plugins.credit import console, ledger
from plugins.credit.cli import register
from plugins.credit.rating import Tariffs, account_of, fmt, rate_for
from plugins.credit.settings import KEYS, CreditSettings, parse
from plugins.credit.sweeper import Sweeper, sweep

REMEMBERED_MAX = 100_000  # reservations remembered between ICE and its answer


class Credit:
    """One instance per server."""

    def __init__(self) -> None:
        self._settings: CreditSettings | None = None
        self._tariffs = Tariffs()
        self.store: Store | None = None
        self._sweeper: Sweeper | None = None
        # seconds reserved at ICE, by call id, until switchboard_after_answer has fitted
        # the reservation to the answer sent: saves it a read when nothing changes
        self._reserved: dict[str, int] = {}
        self._overruns: Any = None  # the overrun counter, once metrics are registered

    @property
    def settings(self) -> CreditSettings:
        """The settings ``switchboard_configure`` parsed."""
        if self._settings is None:
            raise RuntimeError("the credit plugin is not configured yet")
        return self._settings

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return KEYS

    @hookimpl
    def switchboard_store_migrations(self) -> list[Migration]:
        return ledger.MIGRATIONS

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        self._settings = parse(config)
        self._tariffs = Tariffs()  # of the increments and minimum charge just parsed

    @hookimpl
    def switchboard_startup(self, store: Store, serving: bool) -> None:
        self.store = store
        ledger.open_initial_accounts(store, self.settings)
        if serving:
            self._sweeper = Sweeper(store, self.settings.decimals, self.settings.sweep_interval)
            self._sweeper.start()

    @hookimpl
    def switchboard_replay_rewind(self, store: Store, since: float) -> None:
        ledger.rewind(store, since)

    @hookimpl
    def switchboard_metrics(self, registry: Any) -> None:
        from prometheus_client import Counter

        if self.store is not None:
            registry.register(
                StoreGauges(
                    self.store,
                    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM credit_reservations "
                    "WHERE status = 'open'",
                    ("switchboard_credit_reservations_open", "Calls holding a credit reservation"),
                    (
                        "switchboard_credit_reserved_minor_units",
                        "Credit held by open reservations (minor units)",
                    ),
                )
            )
        self._overruns = Counter(
            "switchboard_credit_overruns_total",
            "Calls whose DiCE reported more than they were granted (or a debit above the "
            "reservation): charged the grant, the rest recorded on the ledger entry",
            registry=registry,
        )

    @hookimpl
    def switchboard_shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    @hookimpl
    def switchboard_register_commands(self, cli: click.Group) -> None:
        register(cli, self)

    @hookimpl
    def switchboard_console_pages(self) -> list[ConsolePage]:
        return console.pages(self)

    # ------------------------------------------------------------------ ICE: reserve

    @hookimpl
    def switchboard_ice(self, event: Ice, ctx: CallContext) -> Decision:
        s = self.settings
        account = account_of(s, event)
        if account is None:
            return s.refusal.deny("the call names no account")
        found = rate_for(s, event)
        if found is None:
            return s.refusal.deny("no rate for this destination")
        rate, rate_from = found
        got = ledger.reserve(
            ctx.store, s, event.callid, account, self._tariffs(rate, s), now=ctx.now()
        )
        if isinstance(got, str):
            return s.refusal.deny(got)
        self._remember(event.callid, got.seconds)
        if got.amount is None:
            return Decision.cap(got.seconds, f"reserved earlier for {account}")
        seconds = got.seconds
        reason = (
            f"{account}: reserved {fmt(got.amount, s.decimals)} {got.currency} for {seconds} s "
            f"at {rate}/min ({rate_from})"
        )
        if s.announce:
            minutes = seconds // 60
            text = f"You have {minutes} minute{'s' if minutes != 1 else ''} of credit."
            return Decision(
                max_duration=seconds,
                reason=reason,
                instructions=(Answer(), Say(text=text, locale=s.prompt_locale)),
            )
        return Decision.cap(seconds, reason)

    def _remember(self, callid: str, seconds: int) -> None:
        if len(self._reserved) >= REMEMBERED_MAX:  # answers never observed: start afresh
            self._reserved.clear()
        self._reserved[callid] = seconds

    @hookimpl
    def switchboard_after_answer(
        self, event: Event, answer: Mapping[str, Any] | None, trace: Trace
    ) -> None:
        """Fit the reservation to the answer that was sent.

        A call answered with hangup will not run: its reservation is released. A call
        capped lower than what was reserved (another plugin's cap, the action's own
        maxDuration) keeps only what that shorter call can cost.
        """
        if event.name != "ice" or answer is None or self.store is None or trace.duplicate:
            return  # a repeated delivery's answer says nothing new about the call
        reserved = self._reserved.pop(event.callid, None)
        action = answer["action"]
        if action["name"] == "hangup":
            ledger.release(self.store, event.callid)
            return
        cap = action.get("maxDuration")
        if cap is None or (reserved is not None and cap >= reserved):
            return  # the call may run as long as it was reserved for
        ledger.lower(self.store, self.settings, event.callid, cap)

    # ------------------------------------------------------------------ DiCE: settle

    @hookimpl
    def switchboard_dice(self, event: Dice, ctx: CallContext) -> None:
        ledger.settle(ctx.store, self.settings, event, ctx.log, self._overrun, now=ctx.now())

    def _overrun(self) -> None:
        if self._overruns is not None:
            self._overruns.inc()

    # ------------------------------------------------------------------ operator tools

    @hookimpl
    def switchboard_call_details(
        self, store: Store, callids: Sequence[str]
    ) -> Mapping[str, Mapping[str, str]]:
        return ledger.call_details(store, self.settings, callids)

    def sweep(self, now: float | None = None) -> list[str]:
        """Expire open reservations past maxDuration + grace; return their call ids."""
        if self.store is None:
            return []
        return sweep(self.store, self.settings.decimals, now)

    def topup(self, store: Store, account: str, amount: str) -> int:
        """Add ``amount`` (major units) to the account, created if new; return the balance."""
        return ledger.topup(store, self.settings, account, amount)

    def show(self, store: Store, account: str) -> dict[str, Any] | None:
        """Balance, reserved and available credit of an account; None if there is none."""
        return ledger.show(store, account)
