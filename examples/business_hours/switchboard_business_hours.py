"""business_hours: outside opening hours, callers hear a prompt and the call ends.

A third-party Switchboard plugin, packaged on its own: install it next to Switchboard
and enable it by name in config.toml::

    [plugins]
    enabled = ["business_hours", "allowlist", "credit", "crm"]

    [plugins.business_hours]
    timezone = "Europe/Stockholm"
    open = "08:00"
    close = "17:30"
    days = ["mon", "tue", "wed", "thu", "fri"]
    closed_prompt = "We are closed. Please call again between eight and half past five."
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core import Answer, Decision, Key, hookimpl

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _clock(value: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day like 08:30") from None


class BusinessHours:
    """One instance per server; ``clock`` can be replaced in tests."""

    def __init__(self) -> None:
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.zone = ZoneInfo("UTC")
        self.open = time(9)
        self.close = time(17)
        self.days: set[int] = set(range(5))

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return {
            "timezone": Key(str, "UTC", "IANA time zone of the opening hours"),
            "open": Key(str, "09:00", "opening time, HH:MM"),
            "close": Key(str, "17:00", "closing time, HH:MM"),
            "days": Key(list[str], ["mon", "tue", "wed", "thu", "fri"], "open days"),
            "closed_prompt": Key(
                str, "We are closed. Please call again during opening hours.", "said when closed"
            ),
            "locale": Key(str, "en-US", "locale of the prompt"),
        }

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        try:
            self.zone = ZoneInfo(config["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {config['timezone']!r} is not an IANA time zone") from None
        self.open, self.close = _clock(config["open"]), _clock(config["close"])
        if self.close <= self.open:
            raise ValueError("close must be later than open")
        unknown = [d for d in config["days"] if d not in DAYS]
        if unknown:
            raise ValueError(f"days: {unknown[0]!r} is not one of {', '.join(DAYS)}")
        self.days = {DAYS.index(d) for d in config["days"]}

    def is_open(self) -> bool:
        now = self.clock().astimezone(self.zone)
        return now.weekday() in self.days and self.open <= now.time() < self.close

    @hookimpl
    def switchboard_ice(self, event: Any, ctx: Any) -> Decision | None:
        if self.is_open():
            return None  # no opinion: the other plugins decide
        # Sinch plays a prompt on an unanswered inbound leg only after an answer
        return Decision.denied(
            "outside business hours",
            prompt=ctx.config["closed_prompt"],
            locale=ctx.config["locale"],
            instructions=[Answer()],
        )
