"""The six merge rules of DESIGN.md."""

from __future__ import annotations

import pytest

from core.decisions import Decision, DecisionError, merge
from core.svaml import (
    Answer,
    ConnectConf,
    ConnectPstn,
    Continue,
    Hangup,
    Park,
    PlayFiles,
    RunMenu,
    Say,
    SetCookie,
)
from tests.test_svaml import MAIN_MENU

PSTN = ConnectPstn(number="+15612600684", max_duration=3600)
CONF = ConnectConf(conference_id="room")


def test_rule1_any_deny_wins_with_only_the_deniers_instructions():
    out = merge(
        "ice",
        [
            ("a", Decision.propose(PSTN, instructions=[Say(text="connecting")])),
            ("b", Decision.denied("blocked number", prompt="Sorry")),
            ("c", Decision.add(SetCookie(key="k", value="v"))),
            ("d", Decision.denied("no credit", instructions=[PlayFiles(ids=("#tts[Top up]",))])),
        ],
    )
    assert out.rule == "deny" and out.decided_by == ["b", "d"]
    assert out.svaml.to_dict() == {
        "instructions": [
            {"name": "say", "text": "Sorry"},
            {"name": "playFiles", "ids": ["#tts[Top up]"]},
        ],
        "action": {"name": "hangup"},
    }


def test_rule1_is_order_independent():
    deny, allow = Decision.denied("x"), Decision.propose(PSTN)
    assert (
        merge("ice", [("a", deny), ("b", allow)]).svaml
        == merge("ice", [("b", allow), ("a", deny)]).svaml
    )


def test_rule2_highest_precedence_proposal_wins_and_conflict_is_recorded():
    out = merge(
        "ice",
        [
            ("first", Decision.propose(CONF)),
            ("second", Decision.propose(PSTN)),
            ("third", Decision.propose(CONF)),
        ],
    )
    assert out.rule == "proposal" and out.decided_by == ["first"]
    assert out.svaml.action == CONF
    assert out.conflicts == [{"plugin": "second", "proposed": PSTN.to_dict(), "lost_to": "first"}]


def test_rule2_precedence_is_the_given_order_not_anything_else():
    a, b = Decision.propose(CONF), Decision.propose(PSTN)
    assert merge("ice", [("z", a), ("a", b)]).svaml.action == CONF
    assert merge("ice", [("a", b), ("z", a)]).svaml.action == PSTN


def test_rule3_allow_default_then_event_default():
    allow = Decision.allowed("listed", action=ConnectPstn(max_duration=600))
    out = merge("ice", [("x", None), ("allowlist", allow)])
    assert (out.rule, out.svaml.action) == ("allow-default", ConnectPstn(max_duration=600))
    # a real proposal beats an allow's default, with no conflict
    out = merge("ice", [("allowlist", allow), ("router", Decision.propose(CONF))])
    assert (out.rule, out.svaml.action, out.conflicts) == ("proposal", CONF, [])


@pytest.mark.parametrize(
    ("event", "ice_default", "action"),
    [
        ("ice", "deny", Hangup()),
        ("ice", "connect", ConnectPstn()),
        ("ace", "deny", Continue()),
        ("pie", "deny", Continue()),
    ],
)
def test_rule3_event_defaults(event, ice_default, action):
    out = merge(event, [("a", None), ("b", Decision.allowed("fine"))], ice_default=ice_default)
    assert (out.rule, out.svaml.action) == ("event-default", action)


def test_rule4_smallest_cap_wins_clamped():
    out = merge(
        "ice",
        [("a", Decision.propose(PSTN)), ("credit", Decision.cap(90)), ("b", Decision.cap(300))],
    )
    assert out.svaml.action.max_duration == 90
    assert "maxDuration 90 s set by credit" in out.notes
    # the action's own value wins when it is the smallest
    out = merge(
        "ice", [("a", Decision.propose(ConnectPstn(max_duration=30))), ("b", Decision.cap(90))]
    )
    assert out.svaml.action.max_duration == 30
    # a default connect with a cap
    out = merge("ice", [("credit", Decision.cap(14400))], ice_default="connect")
    assert out.svaml.action.max_duration == 14400
    # park is limited to 600 s
    out = merge("ice", [("a", Decision.propose(Park())), ("b", Decision.cap(5000))])
    assert out.svaml.action.max_duration == 600


def test_rule4_cap_on_uncappable_action_fails_closed():
    out = merge("ice", [("a", Decision.propose(CONF)), ("credit", Decision.cap(60))])
    assert out.rule == "cap-unenforceable" and out.svaml.action == Hangup()
    assert out.decided_by == ["credit"]


def test_rule5_instructions_concatenate_in_precedence_order():
    out = merge(
        "ice",
        [
            ("a", Decision.add(Answer())),
            ("b", Decision.propose(PSTN, instructions=[Say(text="two")])),
            ("c", Decision.allowed(instructions=[Say(text="three")])),
        ],
    )
    assert [i.to_dict() for i in out.svaml.instructions] == [
        {"name": "answer"},
        {"name": "say", "text": "two"},
        {"name": "say", "text": "three"},
    ]


def test_merge_result_is_validated_separately():
    # merge builds what plugins asked for; legality per event is the pipeline's rule 6
    out = merge("ace", [("a", Decision.propose(PSTN))])
    with pytest.raises(ValueError, match="not allowed in an ACE"):
        out.svaml.validate_for("ace")
    assert merge("ace", [("a", Decision.propose(RunMenu(menus=MAIN_MENU)))]).svaml.validate_for(
        "ace"
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: Decision(deny=True, action=Hangup()),
        lambda: Decision(max_duration=0),
        lambda: Decision(max_duration=1.5),
        lambda: Decision(action={"name": "hangup"}),
        lambda: Decision(instructions=[{"name": "say"}]),
        lambda: Decision(reason=5),
    ],
)
def test_bad_decisions_are_refused(build):
    with pytest.raises(DecisionError):
        build()


def test_describe_for_the_trace():
    d = Decision.propose(PSTN, "vip", max_duration=60, instructions=[Say(text="hi")])
    assert d.describe() == {
        "kind": "propose",
        "reason": "vip",
        "action": PSTN.to_dict(),
        "max_duration": 60,
        "instructions": [{"name": "say", "text": "hi"}],
    }
    assert Decision.cap(5).kind == "cap" and Decision.add(Answer()).kind == "instructions"
