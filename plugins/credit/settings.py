"""credit's settings: the keys it declares, parsed once into one frozen object.

``switchboard_configure`` hands the validated ``[plugins.credit]`` table to ``parse``,
which checks what the key types cannot (account_from, rates, increments, amounts) and
turns prices and amounts into what the arithmetic uses: ``Decimal`` rates by prefix,
increments in seconds, the minimum charge and initial balances in minor units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from core import MAX_DURATION, Key, between, non_negative, positive
from plugins.credit.rating import parse_amount
from plugins.numbers import parse_pattern
from plugins.refusal import DENY_ANSWER, Refusal

KEYS = {
    "currency": Key(str, "USD", "currency of accounts and rates (ISO 4217)"),
    "decimals": Key(int, 2, "digits of the minor unit (2: cents)", check=non_negative),
    "account_from": Key(
        str, "cli", "how a call names its account: cli, custom, header:NAME or fixed"
    ),
    "account": Key(str, None, "the account when account_from = 'fixed'"),
    "rates": Key(
        dict, {}, "price per minute by destination prefix, e.g. { '+1' = 0.02, '+44' = '0.05' }"
    ),
    "rate_source": Key(
        str,
        "table",
        "table, or user_rate (Sinch's userRate, then the table)",
        choices=("table", "user_rate"),
    ),
    "markup_percent": Key(Decimal, Decimal(0), "added to Sinch's userRate", check=non_negative),
    "increments": Key(str, "60/60", "billing increments: first/next in seconds, e.g. 60/60 or 1/1"),
    "minimum_charge": Key(
        Decimal, Decimal(0), "smallest charge for an answered call", check=non_negative
    ),
    "minimum_seconds": Key(
        int,
        60,
        "deny calls the balance buys fewer seconds of",
        check=between(1, MAX_DURATION, "seconds"),
    ),
    "max_duration": Key(
        int, MAX_DURATION, "cap for any call", check=between(1, MAX_DURATION, "seconds")
    ),
    "deny_prompt": Key(str, None, "said before a call without credit is hung up"),
    "deny_answer": DENY_ANSWER,
    "announce": Key(bool, False, "answer and say the minutes left before connecting"),
    "prompt_locale": Key(str, "en-US", "locale of the prompts"),
    "settle_with": Key(
        str,
        "rate",
        "rate (duration x reserved rate) or debit (Sinch's debit)",
        choices=("rate", "debit"),
    ),
    "grace": Key(
        float,
        300.0,
        "seconds after maxDuration before an unsettled reservation expires",
        check=positive,
    ),
    "sweep_interval": Key(
        float, 30.0, "seconds between sweeps for expired reservations", check=positive
    ),
    "initial_accounts": Key(
        dict, {}, "accounts created with this balance when absent, e.g. { demo = '5.00' }"
    ),
}


@dataclass(frozen=True, slots=True)
class CreditSettings:
    """``[plugins.credit]`` as the plugin uses it; see ``KEYS`` for each setting."""

    currency: str
    decimals: int
    account_from: str  # cli, custom, fixed or header:NAME
    account: str | None
    rates: Mapping[str, Decimal]  # price per minute by prefix ('+' for every number)
    rate_source: str
    markup_percent: Decimal
    first: int  # the first billing increment, in seconds
    nxt: int  # every next one
    minimum: int  # minimum_charge, in minor units
    minimum_seconds: int
    max_duration: int
    refusal: Refusal  # deny_prompt, prompt_locale, deny_answer
    announce: bool
    prompt_locale: str
    settle_with: str
    grace: float
    sweep_interval: float
    initial_accounts: Mapping[str, int]  # in minor units

    @property
    def scale(self) -> int:
        """Minor units in one major unit (100 for cents)."""
        return 10**self.decimals


def parse(config: Mapping[str, Any]) -> CreditSettings:
    """The settings of the validated ``config``; a ValueError names what is wrong."""
    decimals = config["decimals"]
    source = config["account_from"]
    if source not in ("cli", "custom", "fixed") and not (
        source.startswith("header:") and len(source) > 7
    ):
        raise ValueError(f"account_from must be cli, custom, header:NAME or fixed, got {source!r}")
    if source == "fixed" and not config["account"]:
        raise ValueError("account_from = 'fixed' needs account")
    rates = {}
    for prefix, price in config["rates"].items():
        pattern = parse_pattern(prefix.rstrip("*") + "*")
        try:
            rate = Decimal(str(price))
        except InvalidOperation:
            raise ValueError(
                f"rates[{prefix!r}] must be a price per minute, got {price!r}"
            ) from None
        if not rate.is_finite() or rate < 0:
            raise ValueError(f"rates[{prefix!r}] must be a price of 0 or more, got {price!r}")
        rates[pattern.digits or "+"] = rate
    if not rates and config["rate_source"] == "table":
        raise ValueError(
            "rates is empty: give prices per minute by prefix, e.g. rates = { '+1' = 0.02 }"
        )
    first, sep, nxt = config["increments"].partition("/")
    if not (sep and first.isdigit() and nxt.isdigit() and int(first) > 0 and int(nxt) > 0):
        raise ValueError(f"increments must look like 60/60 or 1/1, got {config['increments']!r}")
    minimum = parse_amount(config["minimum_charge"], decimals, "minimum_charge")
    initial = {}
    for account, amount in config["initial_accounts"].items():
        initial[account] = parse_amount(amount, decimals, f"initial_accounts.{account}")
        if initial[account] < 0:
            raise ValueError(f"initial_accounts.{account} must not be negative")
    return CreditSettings(
        currency=config["currency"],
        decimals=decimals,
        account_from=source,
        account=config["account"],
        rates=MappingProxyType(rates),
        rate_source=config["rate_source"],
        markup_percent=config["markup_percent"],
        first=int(first),
        nxt=int(nxt),
        minimum=minimum,
        minimum_seconds=config["minimum_seconds"],
        max_duration=config["max_duration"],
        refusal=Refusal.of(config),
        announce=config["announce"],
        prompt_locale=config["prompt_locale"],
        settle_with=config["settle_with"],
        grace=config["grace"],
        sweep_interval=config["sweep_interval"],
        initial_accounts=MappingProxyType(initial),
    )
