"""The plugin authors' test kit (core.testing), used as a third-party package would."""

from __future__ import annotations

import json

import pytest

from core.decisions import Decision
from core.svaml import ConnectPstn, Say
from core.testing import ace, dice, ice, notify, pie, signed
from tests.helpers import Fixed, Recorder


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
