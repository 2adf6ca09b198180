"""credit's commands: ``switchboard credit topup | show | ledger``.

``show`` and ``ledger`` read as an operator does (``ledger.show`` and ``ledger.entries``
use ``store.inspect``); ``topup`` books in a transaction, as the console's form does."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from core import pass_runtime
from plugins.credit import ledger
from plugins.credit.rating import fmt, parse_amount

if TYPE_CHECKING:
    from plugins.credit.plugin import Credit


def register(cli: click.Group, plugin: Credit) -> None:
    """Add the ``credit`` group to ``cli``. This may run before ``switchboard_configure``:
    the commands read the plugin's settings when they run."""

    @cli.group(help="prepaid accounts: topup, show, ledger")
    def credit() -> None:
        pass

    @credit.command(
        help="add credit to an account (created if new); AMOUNT in major units, e.g. 10.00"
    )
    @click.argument("account")
    @click.argument("amount")
    @pass_runtime
    def topup(runtime: Any, account: str, amount: str) -> int:
        s = plugin.settings
        try:
            balance = ledger.topup(runtime.store, s, account, amount)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        d = s.decimals
        print(
            f"{account}: +{fmt(parse_amount(amount, d), d)}, balance {fmt(balance, d)} {s.currency}"
        )
        return 0

    @credit.command(help="balance, reserved and available credit")
    @click.argument("account")
    @pass_runtime
    def show(runtime: Any, account: str) -> int:
        info = ledger.show(runtime.store, account)
        if info is None:
            print(f"error: no account {account!r}")
            return 1
        d = plugin.settings.decimals
        print(f"account   {info['account']} ({info['currency']})")
        print(f"balance   {fmt(info['balance'], d)}")
        print(f"reserved  {fmt(info['reserved'], d)} for {info['open_calls']} call(s)")
        print(f"available {fmt(info['available'], d)}")
        return 0

    @credit.command(name="ledger", help="every booking of an account, oldest first")
    @click.argument("account")
    @pass_runtime
    def ledger_(runtime: Any, account: str) -> int:
        rows = ledger.entries(runtime.store, account)
        if not rows and ledger.show(runtime.store, account) is None:
            print(f"error: no account {account!r}")
            return 1
        d = plugin.settings.decimals
        for seq, at, kind, amount, after, callid in rows:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            print(
                f"{seq:>5} {when} {kind:<8} {fmt(amount, d):>12} {fmt(after, d):>12} {callid or ''}"
            )
        print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
        return 0
