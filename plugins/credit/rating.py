"""credit's rating: who pays for a call, its price per minute, and what it costs.

Balances are integers in minor units (cents); rates and prices are ``Decimal``; a
charge is rounded up to the next minor unit. The call's account is named by
``account_from``; its price per minute is the longest destination prefix of ``rates``,
or Sinch's ``userRate`` plus ``markup_percent``. A call is billed in ``increments``
(e.g. ``60/60``, ``1/1``) with a ``minimum_charge``.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from plugins.numbers import longest_prefix

if TYPE_CHECKING:
    from plugins.credit.settings import CreditSettings

TARIFF_MEMO = 1024  # tariffs kept by rate, and costs kept by duration in each


class Tariff:
    """Billing of one call: rate per minute, increments, minimum charge, in minor units."""

    def __init__(self, rate: Decimal, first: int, nxt: int, minimum: int, scale: int) -> None:
        self.rate, self.first, self.nxt, self.minimum, self.scale = rate, first, nxt, minimum, scale
        self._costs: dict[int, int] = {}  # seconds -> cost, for tariffs kept between calls

    def billed_seconds(self, seconds: int) -> int:
        if seconds <= 0:
            return 0
        if seconds <= self.first:
            return self.first
        return self.first + math.ceil((seconds - self.first) / self.nxt) * self.nxt

    def cost(self, seconds: int) -> int:
        """Minor units charged for a call of ``seconds``."""
        known = self._costs.get(seconds)
        if known is not None:
            return known
        billed = self.billed_seconds(seconds)
        if billed == 0:
            return 0
        raw = (self.rate * billed * self.scale / 60).to_integral_value(rounding=ROUND_CEILING)
        cost = max(int(raw), self.minimum)
        if len(self._costs) < TARIFF_MEMO:
            self._costs[seconds] = cost
        return cost

    def affordable(self, available: int, limit: int) -> int:
        """The longest call (at most ``limit`` s) whose cost fits in ``available``."""
        if self.cost(1) > available:
            return 0
        if self.cost(limit) <= available:
            return limit
        lo, hi = 1, limit  # cost(lo) fits, cost(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cost(mid) <= available:
                lo = mid
            else:
                hi = mid
        return lo


class Tariffs:
    """The tariff of each rate, kept between calls (with what each has computed)."""

    def __init__(self) -> None:
        self._by_rate: dict[Decimal, Tariff] = {}

    def __call__(self, rate: Decimal, settings: CreditSettings) -> Tariff:
        """The tariff of ``rate`` at the increments and minimum charge of ``settings``
        (always the same ones: a new configuration gets a new ``Tariffs``)."""
        tariff = self._by_rate.get(rate)
        if tariff is None:
            if len(self._by_rate) >= TARIFF_MEMO:  # many userRate prices: start afresh
                self._by_rate.clear()
            s = settings
            tariff = self._by_rate[rate] = Tariff(rate, s.first, s.nxt, s.minimum, s.scale)
        return tariff


def account_of(settings: CreditSettings, event: Any) -> str | None:
    """The account the call names, by ``account_from``; None when it names none."""
    source = settings.account_from
    if source == "fixed":
        return settings.account
    if source == "cli":
        return event.cli_e164 or event.cli or None
    if source == "custom":
        return event.custom or None
    name = source.split(":", 1)[1]
    for header in getattr(event, "call_headers", ()):
        if header.key == name:
            return header.value or None
    return None


def rate_for(settings: CreditSettings, event: Any) -> tuple[Decimal, str] | None:
    """The call's price per minute and where it came from, or None without one."""
    if settings.rate_source == "user_rate" and event.user_rate is not None:
        if (event.user_rate.currency_id or settings.currency) == settings.currency:
            markup = 1 + settings.markup_percent / 100
            return event.user_rate.amount * markup, "userRate"
    dest = event.to.e164 if event.to is not None else None
    if dest is None:
        return None
    prefix = longest_prefix(dest, list(settings.rates))
    return None if prefix is None else (settings.rates[prefix], f"rate {prefix}")


def parse_amount(text: Any, decimals: int, what: str = "amount") -> int:
    """A major-unit amount (``'12.50'``) as minor units; refuses fractions of a minor unit."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"{what} must be a number, got {text!r}")
    minor = value.scaleb(decimals)
    if minor != minor.to_integral_value():
        raise ValueError(f"{what} has more than {decimals} decimals: {text!r}")
    return int(minor)


def fmt(minor: int, decimals: int) -> str:
    return f"{Decimal(minor).scaleb(-decimals):.{decimals}f}"
