"""The plugin authors' test kit (core.testing), used as a third-party package would."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from core.decisions import Decision
from core.events import Dice, Ice, Money, parse_event
from core.svaml import ConnectPstn, Say
from core.testing import Result, ace, dice, encode, ice, notify, pie, signed
from tests.helpers import Fixed, Recorder

REPO = Path(__file__).resolve().parent.parent


def test_the_fixture_builds_exactly_the_given_plugins(switchboard):
    recorder = Recorder()
    sb = switchboard(
        {
            "router": Fixed(Decision.propose(ConnectPstn(), "mine", instructions=[Say(text="hi")])),
            "rec": recorder,
        },
        policy={"budget": 1.0},
    )
    assert sb.runtime.plugins.order == ("router", "rec")
    result = sb.send(ice("kit-1", cli="12015550000"))
    assert (result.status, result.action, result.rule, result.decided_by) == (
        200,
        "connectPstn",
        "proposal",
        ["router"],
    )
    assert result.instructions == [{"name": "say", "text": "hi"}]
    assert result.plugin("router")["decision"]["reason"] == "mine"
    assert result.plugin("rec")["status"] == "abstained"
    with pytest.raises(AssertionError, match="not in the trace"):
        result.plugin("nobody")
    for event in (
        ace("kit-1"),
        pie("kit-1", value="42"),
        dice("kit-1", duration=7),
        notify("kit-1"),
    ):
        assert sb.send(event).status == 200
    assert [hook for hook, _ in recorder.seen if not hook.startswith("after")] == [
        "ice",
        "ace",
        "pie",
        "dice",
        "notify",
    ]


def test_builders_and_errors(switchboard):
    sb = switchboard()
    body = json.dumps(ice()).encode()
    bad = sb.send(body, headers={**signed(body), "Authorization": "application nope:nope"})
    assert (bad.status, bad.answer, bad.error) == (401, None, "unknown application key")
    assert sb.send(dice(result="NOANSWER", duration=0)).answer is None
    assert (
        pie(value="9")["menuResult"]["value"] == "9"
        and ice(to="+4420")["to"]["endpoint"] == "+4420"
    )


def test_builders_take_the_shapes_sinch_sends_as_well_as_plain_numbers():
    plain = ice("k-1", to="+46701234567", cli="46709876543")
    assert plain["to"] == {"type": "number", "endpoint": "+46701234567"}
    assert plain["cli"] == "46709876543"
    shaped = ice(
        "k-1",
        to={"type": "did", "endpoint": "+46701234567"},
        cli={"type": "number", "endpoint": "46709876543"},
    )
    assert shaped["to"] == {"type": "did", "endpoint": "+46701234567"}
    assert shaped["cli"] == "46709876543"  # Sinch sends cli as a string
    assert ice(user_rate="0.02", currency="EUR")["userRate"] == {
        "currencyId": "EUR",
        "amount": 0.02,
    }
    assert ice(user_rate={"currencyId": None, "amount": 0})["userRate"] == {
        "currencyId": None,
        "amount": 0,
    }
    assert ice(call_headers={"x-crm": "42"})["callHeaders"] == [{"key": "x-crm", "value": "42"}]
    assert ice(call_headers=[{"key": "a", "value": "b"}])["callHeaders"] == [
        {"key": "a", "value": "b"}
    ]
    assert "callHeaders" not in ice()
    assert ice(rdnis="+1555")["rdnis"] == "+1555"  # any field by Sinch's name, last
    assert ice("k-2")["callResourceUrl"].endswith("/calls/id/k-2")

    ended = dice(
        "k-1",
        to={"type": "did", "endpoint": "+46701234567"},
        from_={"type": "number", "endpoint": "46709876543"},
        debit=Decimal("0.0123"),
        user_rate={"currencyId": "EUR", "amount": 0.01},
    )
    assert ended["to"] == {"type": "did", "endpoint": "+46701234567"}
    assert ended["from"] == "46709876543"
    assert ended["debit"] == {"currencyId": "USD", "amount": 0.0123}
    assert ended["userRate"] == {"currencyId": "EUR", "amount": 0.01}
    assert dice(to="+4420")["to"] == {"type": "number", "endpoint": "+4420"}
    assert dice(**{"from": "private"})["from"] == "private"

    menu = pie("k-1", "2", menu="confirm", kind="return", method="voice")
    assert menu["menuResult"] == {
        "type": "return",
        "value": "2",
        "menuId": "confirm",
        "inputMethod": "voice",
    }
    assert pie(menuResult={"type": "timeout"})["menuResult"] == {"type": "timeout"}


def test_built_bodies_parse_as_the_core_reads_them(switchboard):
    event = parse_event(
        encode(ice(to={"type": "did", "endpoint": "+46701234567"}, cli="46709876543"))
    )
    assert isinstance(event, Ice)
    assert (event.to.type, event.to.e164, event.cli_e164) == (
        "did",
        "+46701234567",
        "+46709876543",
    )
    ended = parse_event(encode(dice(debit="0.0123", currency="EUR")))
    assert isinstance(ended, Dice)
    assert ended.debit == Money("EUR", Decimal("0.0123"))
    sb = switchboard()
    for body in (ice("k-9", to={"type": "did", "endpoint": "+46701234567"}), dice("k-9")):
        assert sb.send(body).status == 200


def test_the_result_object():
    sent = Result(
        200,
        '{"action":{"name":"hangup"},"instructions":[{"name":"say","text":"no"}]}',
        {"rule": "deny", "decided_by": ["a"], "plugins": [{"plugin": "a", "status": "decided"}]},
    )
    assert sent.answer == {
        "action": {"name": "hangup"},
        "instructions": [{"name": "say", "text": "no"}],
    }
    assert (sent.action, sent.rule, sent.decided_by, sent.error) == ("hangup", "deny", ["a"], None)
    assert sent.instructions == [{"name": "say", "text": "no"}]
    assert sent.plugin("a") == {"plugin": "a", "status": "decided"}
    refused = Result(401, '{"error":"bad signature"}')
    assert (refused.answer, refused.action, refused.error) == (None, None, "bad signature")
    assert (refused.rule, refused.decided_by, refused.instructions) == (None, [], [])
    assert Result(200, "").answer is None  # DiCE and Notify: an empty answer


def test_signed_headers_take_a_timestamp():
    body = encode(ice("k-1"))
    headers = signed(body, timestamp="2024-06-06T17:20:14.1234567Z")
    assert headers["x-timestamp"] == "2024-06-06T17:20:14.1234567Z"
    assert signed(body)["x-timestamp"] != headers["x-timestamp"]
    assert encode(body) is body


def _guide_block(starting: str) -> str:
    """The ```python block of docs/plugins.md that starts with ``starting``."""
    text = (REPO / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if b.lstrip().startswith(starting)]
    return block


def test_the_guides_plugin_and_result_example_run_as_written(switchboard):
    namespace: dict = {}
    exec(_guide_block("# switchboard_vip.py"), namespace)  # noqa: S102
    example = "from core.testing import ice\n" + _guide_block("def test_only_vips")
    exec(example, namespace)  # noqa: S102
    namespace["test_only_vips_get_through"](switchboard)


def test_an_empty_header_set_is_sent_as_it_is(switchboard):
    refused = switchboard().send(ice(), headers={})
    assert refused.status != 200 and refused.error
