"""The business_hours plugin, tested with Switchboard's test kit (the `switchboard`
fixture comes from the installed sinch-switchboard package)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core import ConnectPstn, Decision, PluginError, hookimpl
from core.testing import ice
from switchboard_business_hours import BusinessHours

CONFIG = {
    "timezone": "Europe/Stockholm",
    "open": "08:00",
    "close": "17:30",
    "closed_prompt": "We are closed.",
}


class Router:
    @hookimpl
    def switchboard_ice(self, event):
        return Decision.propose(ConnectPstn(number="+15612600684"))


def at(plugin: BusinessHours, moment: datetime) -> BusinessHours:
    plugin.clock = lambda: moment
    return plugin


def test_open_hours_leave_the_decision_to_others(switchboard):
    hours = at(
        BusinessHours(), datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    )  # Wednesday, 10:00 in Stockholm
    sb = switchboard(
        {"business_hours": hours, "router": Router()}, plugins={"business_hours": CONFIG}
    )
    result = sb.send(ice())
    assert result.action == "connectPstn"
    assert result.plugin("business_hours")["status"] == "abstained"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 25, 6, 59, tzinfo=UTC),  # 07:59 local
        datetime(2026, 11, 25, 16, 30, tzinfo=UTC),  # 17:30 local: closed
        datetime(2026, 11, 28, 12, 0, tzinfo=UTC),  # Saturday
    ],
)
def test_closed_hours_get_the_prompt_then_hangup(switchboard, moment):
    sb = switchboard(
        {"business_hours": at(BusinessHours(), moment), "router": Router()},
        plugins={"business_hours": CONFIG},
    )
    result = sb.send(ice())
    assert result.answer == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "We are closed.", "locale": "en-US"},
        ],
        "action": {"name": "hangup"},
    }
    assert result.rule == "deny" and result.decided_by == ["business_hours"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"open": "9am"}, "'9am' is not a time of day"),
        ({"open": "18:00", "close": "09:00"}, "close must be later than open"),
        ({"days": ["monday"]}, "'monday' is not one of"),
    ],
)
def test_bad_configuration_is_refused(switchboard, config, message):
    with pytest.raises(PluginError, match=message):
        switchboard({"business_hours": BusinessHours()}, plugins={"business_hours": config})
