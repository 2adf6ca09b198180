"""allowlist alone: rules, specificity, built-in high-risk ranges, velocity limits."""

from __future__ import annotations

import json

import pytest

from core.config import ConfigError
from core.plugins import PluginError
from plugins.allowlist import HIGH_RISK, Allowlist

from tests.helpers import ice, post, webapp

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def app_with(backend):
    made = []

    def _make(**config):
        rt = backend.runtime({"allowlist": Allowlist()}, plugins={"allowlist": config})
        made.append(rt)
        return rt, webapp(rt)

    yield _make
    for rt in made:
        rt.close()


def _answer(app, to, cli="12015555555", **kw):
    return post(app, ice(to=to, cli=cli), **kw).json


def _trace_reason(rt, callid):
    trace = json.loads(rt.store.traces(callid)[0]["trace"])
    return trace["plugins"][0]["decision"]["reason"]


def test_tutorial_intent_only_one_number(app_with):
    _, app = app_with(allow=["+15612600684"], max_duration=600)
    assert _answer(app, "+15612600684") == {
        "action": {"name": "connectPstn", "number": "+15612600684", "maxDuration": 600}
    }
    assert _answer(app, "15612600684")["action"]["name"] == "connectPstn"  # without '+'
    assert _answer(app, "+15612600685") == {"action": {"name": "hangup"}}


def test_most_specific_rule_wins_and_deny_wins_a_tie(app_with):
    rt, app = app_with(allow=["+44*", "+4420*"], deny=["+442079*", "+4420", "+4420*"])
    assert _answer(app, "+441234567890")["action"]["name"] == "connectPstn"  # +44* allow
    assert _answer(app, "+442012345678")["action"]["name"] == "hangup"  # +4420* tie: deny
    assert _answer(app, "+442079460000")["action"]["name"] == "hangup"  # +442079* deny
    _, app = app_with(allow=["+442079460000"], deny=["+442079*"])
    assert _answer(app, "+442079460000")["action"]["name"] == "connectPstn"  # exact beats prefix


def test_default_allow_and_default_deny(app_with):
    _, app = app_with(default="allow", deny=["+1555*"])
    assert _answer(app, "+14155550000")["action"]["name"] == "connectPstn"
    assert _answer(app, "+15551234567")["action"]["name"] == "hangup"
    _, app = app_with()
    assert _answer(app, "+14155550000")["action"]["name"] == "hangup"


def test_builtin_high_risk_ranges_denied_even_with_default_allow(app_with):
    rt, app = app_with(default="allow")
    for prefix, _ in HIGH_RISK:
        number = (prefix + "5550100000")[:16]
        r = post(app, ice(f"risk{prefix}", to=number))
        assert r.json["action"]["name"] == "hangup", prefix
    assert "high-risk range +1900" in _trace_reason(rt, "risk+1900")


def test_operator_can_override_builtin_with_a_more_specific_allow(app_with):
    _, app = app_with(default="allow", allow=["+4490123*"])
    assert _answer(app, "+449012345678")["action"]["name"] == "connectPstn"
    assert _answer(app, "+449099999999")["action"]["name"] == "hangup"
    _, app = app_with(default="allow", builtin_deny=False)
    assert _answer(app, "+449099999999")["action"]["name"] == "connectPstn"


def test_caller_rules(app_with):
    _, app = app_with(allow=["+1*"], deny_callers=["+1900*", "+12015550000"])
    assert _answer(app, "+14155550000", cli="12015550000")["action"]["name"] == "hangup"
    assert _answer(app, "+14155550000", cli="12015550001")["action"]["name"] == "connectPstn"
    _, app = app_with(allow=["+1*"], callers_default="deny", allow_callers=["+4420*"])
    assert _answer(app, "+14155550000", cli="442071234567")["action"]["name"] == "connectPstn"
    assert _answer(app, "+14155550000", cli="12015550001")["action"]["name"] == "hangup"
    assert _answer(app, "+14155550000", cli="private")["action"]["name"] == "hangup"


def test_denied_call_gets_answer_prompt_then_hangup(app_with):
    """Sinch: "use the answer instruction before say" at ICE; deny_answer = false opts out."""
    _, app = app_with(deny_prompt="This number cannot be called.", prompt_locale="en-GB")
    assert _answer(app, "+14155550000") == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "This number cannot be called.", "locale": "en-GB"},
        ],
        "action": {"name": "hangup"},
    }
    _, app = app_with(deny_prompt="No.", deny_answer=False)
    assert _answer(app, "+14155550000") == {
        "instructions": [{"name": "say", "text": "No.", "locale": "en-US"}],
        "action": {"name": "hangup"},
    }
    _, app = app_with()  # no prompt: nothing to hear, so no answer either
    assert _answer(app, "+14155550000") == {"action": {"name": "hangup"}}


def test_allowed_call_uses_configured_cli(app_with):
    _, app = app_with(default="allow", cli="+12015550123")
    assert _answer(app, "+14155550000")["action"]["cli"] == "+12015550123"


def test_non_number_destination_is_denied(app_with):
    _, app = app_with(default="allow")
    event = ice()
    event["to"] = {"type": "username", "endpoint": "alice"}
    assert post(app, event).json["action"]["name"] == "hangup"


def test_caller_velocity_limit(app_with, caplog):
    rt, app = app_with(default="allow", caller_limit=3, caller_window=60)
    answers = [_answer(app, "+14155550000", cli="12015550009")["action"]["name"] for _ in range(5)]
    assert answers == ["connectPstn"] * 3 + ["hangup"] * 2
    assert _answer(app, "+14155550000", cli="12015550010")["action"]["name"] == "connectPstn"
    assert any("velocity limit" in r.getMessage() for r in caplog.records)


def test_prefix_velocity_limit_counts_across_callers(app_with):
    rt, app = app_with(default="allow", prefix_limit=2, prefix_digits=4)
    got = [
        _answer(app, f"+1415555{i:04d}", cli=f"1201555{i:04d}")["action"]["name"] for i in range(3)
    ]
    assert got == ["connectPstn", "connectPstn", "hangup"]
    assert _answer(app, "+14165550000")["action"]["name"] == "connectPstn"  # another prefix


def test_velocity_window_slides(app_with):
    rt, app = app_with(default="allow", caller_limit=1, caller_window=60)
    assert _answer(app, "+14155550000", cli="12015550011")["action"]["name"] == "connectPstn"
    assert _answer(app, "+14155550000", cli="12015550011")["action"]["name"] == "hangup"
    with rt.store.transaction() as tx:  # the earlier call is now two minutes old
        tx.execute("UPDATE allowlist_hits SET at = at - 120")
    assert _answer(app, "+14155550000", cli="12015550011")["action"]["name"] == "connectPstn"


def test_velocity_counters_are_shared_through_the_store(app_with):
    rt, app = app_with(default="allow", caller_limit=2, caller_window=60)
    from core.runtime import Runtime

    other = Runtime.build(
        rt.settings, given={"allowlist": Allowlist()}, load_entrypoints=False, store=rt.store
    )
    other_app = webapp(other)
    assert _answer(app, "+14155550000", cli="12015550012")["action"]["name"] == "connectPstn"
    assert _answer(other_app, "+14155550000", cli="12015550012")["action"]["name"] == "connectPstn"
    assert _answer(app, "+14155550000", cli="12015550012")["action"]["name"] == "hangup"
    other.pipeline.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"allow": ["15612600684x"]}, "allow: '15612600684x' is not a number pattern"),
        ({"deny": [5]}, "plugins.allowlist.deny[0]: expected a string, got 5"),
        ({"cli": "anonymous"}, "cli"),
        ({"max_duration": 20000}, "plugins.allowlist.max_duration: must be between 1 and 14400"),
        ({"default": "maybe"}, "plugins.allowlist.default: must be one of"),
    ],
)
def test_bad_configuration_is_named(config, message, backend):
    with pytest.raises((PluginError, ConfigError)) as err:
        backend.runtime({"allowlist": Allowlist()}, plugins={"allowlist": config})
    assert message in str(err.value)


def test_compiled_rules_agree_with_checking_every_rule():
    """Rules looks a number up by its own prefixes; it must pick what ranking every
    matching rule would: exact over prefix, longer prefix over shorter, deny on a tie."""
    import random

    from plugins.numbers import Rules, parse_pattern

    def by_ranking(number, allow, deny):
        best = None
        for verdict, patterns in (("allow", allow), ("deny", deny)):
            for p in patterns:
                if p.matches(number):
                    rank = (*p.specificity, verdict == "deny")
                    if best is None or rank > best[0]:
                        best = (rank, verdict, p)
        return None if best is None else (best[1], best[2])

    rng = random.Random(7)

    def pattern():
        digits = "".join(rng.choice("1234") for _ in range(rng.randint(1, 5)))
        return parse_pattern(rng.choice(["*", f"+{digits}*", f"+{digits}"]))

    for _ in range(300):
        allow = [pattern() for _ in range(rng.randint(0, 6))]
        deny = [pattern() for _ in range(rng.randint(0, 6))]
        rules = Rules(allow, deny)
        for _ in range(20):
            number = "+" + "".join(rng.choice("1234") for _ in range(rng.randint(1, 6)))
            assert rules.verdict(number) == by_ranking(number, allow, deny), (number, allow, deny)
