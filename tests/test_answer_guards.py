"""Answers the core must refuse or shape, whatever a plugin proposes (issue 10):

* ``suppressCallbacks: true`` while a plugin relies on the DiCE: refused, the fallback sent;
* ``playFiles`` with ``#tts[...]``/``#ssml[...]`` ids and no ``locale``, a
  ``startRecording`` without usable options: illegal, the fallback sent;
* deny prompts of the built-in plugins: ``answer`` before ``say`` (Sinch's advice);
* ``to.type = "did"``: never connected to the dialled (own) number;
* the allowlist's ``max_duration``: a cap on every call it allows.

Each in process (WebTest) and on the real server (``python serve.py`` subprocesses).
"""

from __future__ import annotations

import json

import pytest

from core.config import ConfigError
from core.decisions import Decision, RefusedAnswer, merge
from core.plugins import PluginError
from core.svaml import (
    ConnectConf,
    ConnectPstn,
    ConnectSip,
    Endpoint,
    Hangup,
    PlayFiles,
    RecordingOptions,
    Say,
    StartRecording,
    Svaml,
    SvamlError,
)
from plugins.allowlist import Allowlist
from plugins.credit import Credit
from plugins.crm import Crm
from tests.conftest import run_cli
from tests.helpers import KEY, SECRET, Fixed, Recorder, ice, pie, post
from tests.test_plugins import make_dist

pytestmark = pytest.mark.usefixtures("backend")

NUMBER = "+15612600684"
SUPPRESSED = ConnectPstn(number=NUMBER, suppress_callbacks=True)
CONF = ConnectConf(conference_id="room")
# a fallback no merge produces, so that a test can tell it was sent
FALLBACK = {
    "instructions": [{"name": "say", "text": "Service unavailable.", "locale": "en-US"}],
    "action": {"name": "hangup"},
}


def trace_of(rt, callid, event="ice"):
    rows = [r for r in rt.store.traces(callid) if r["event"] == event]
    return json.loads(rows[0]["trace"])


def fallbacks(app, rule):
    line = f'switchboard_fallbacks_total{{event="ice",reason="{rule}"}}'
    for text in app.get("/metrics").text.splitlines():
        if text.startswith(line):
            return float(text.split()[-1])
    return 0.0


# ------------------------------------------------------------------ suppressCallbacks


def test_merge_refuses_suppressed_callbacks_while_a_plugin_needs_the_dice():
    decisions = [("router", Decision.propose(SUPPRESSED)), ("credit", Decision.cap(600))]
    with pytest.raises(RefusedAnswer) as err:
        merge("ice", decisions, needs_callbacks=["credit", "crm"])
    assert err.value.rule == "callbacks-suppressed"
    assert err.value.field == "action.suppressCallbacks"
    assert "router" in str(err.value) and "credit, crm" in str(err.value)
    # nobody relies on the DiCE (or the setting allows it): sent as proposed
    out = merge("ice", decisions)
    assert out.svaml.action.suppress_callbacks is True and out.svaml.action.max_duration == 600
    # false or absent is no suppression
    plain = ConnectPstn(number=NUMBER, suppress_callbacks=False)
    out = merge("ice", [("r", Decision.propose(plain))], needs_callbacks=["crm"])
    assert out.rule == "proposal"
    # an allow's default action is checked the same way
    with pytest.raises(RefusedAnswer):
        merge("ice", [("a", Decision.allowed(action=SUPPRESSED))], needs_callbacks=["crm"])


@pytest.mark.parametrize(
    "action",
    [
        SUPPRESSED,
        ConnectSip(
            destination=Endpoint(type="sip", endpoint="a@b.example"), suppress_callbacks=True
        ),
    ],
    ids=["connectPstn", "connectSip"],
)
def test_suppressed_callbacks_get_the_fallback_while_a_plugin_observes_dice(make, action):
    rt, app = make(
        {"router": Fixed(Decision.propose(action)), "rec": Recorder()},
        policy={"fallback": {"ice": FALLBACK}},
    )
    assert post(app, ice("sup-1")).json == FALLBACK
    trace = trace_of(rt, "sup-1")
    assert trace["rule"] == "callbacks-suppressed"
    assert trace["answer"] == FALLBACK
    note = trace["notes"][-1]
    assert "suppressCallbacks" in note and "router" in note and "rec rely on" in note
    assert fallbacks(app, "callbacks-suppressed") == 1.0


def test_suppressed_callbacks_refused_at_pie_too(make):
    rt, app = make(
        {"router": Fixed(Decision.propose(SUPPRESSED), events=("pie",)), "rec": Recorder()}
    )
    assert post(app, pie("sup-pie")).json == {"action": {"name": "hangup"}}  # PIE fallback
    assert trace_of(rt, "sup-pie", "pie")["rule"] == "callbacks-suppressed"


def test_suppressed_callbacks_sent_when_nobody_needs_the_dice_or_it_is_allowed(make):
    _, app = make({"router": Fixed(Decision.propose(SUPPRESSED))})
    assert post(app, ice("sup-2")).json["action"]["suppressCallbacks"] is True
    rt, app = make(
        {"router": Fixed(Decision.propose(SUPPRESSED)), "rec": Recorder()},
        policy={"allow_suppress_callbacks": True},
    )
    assert post(app, ice("sup-3")).json["action"]["suppressCallbacks"] is True
    assert trace_of(rt, "sup-3")["rule"] == "proposal"


def test_suppressed_callbacks_never_give_a_free_prepaid_call(make):
    """credit reserves, a higher-precedence plugin suppresses the DiCE: refused, and the
    reservation is released at once (the call is answered hangup), not left to the sweeper."""
    credit = Credit()
    rt, app = make(
        {"router": Fixed(Decision.propose(SUPPRESSED)), "credit": credit, "crm": Crm()},
        plugins={
            "credit": {"account_from": "fixed", "account": "acme", "rates": {"+1": "0.10"}},
        },
    )
    credit.topup(rt.store, "acme", "10.00")
    assert post(app, ice("sup-4")).json == {"action": {"name": "hangup"}}
    rt.pipeline.wait_idle()
    assert rt.store.query("SELECT status FROM credit_reservations WHERE callid = 'sup-4'") == [
        ("released",)
    ]
    note = trace_of(rt, "sup-4")["notes"][-1]
    assert "credit, crm rely on" in note


# ------------------------------------------------------------------ playFiles, startRecording


@pytest.mark.parametrize(
    ("instruction", "field"),
    [
        (PlayFiles(ids=("#tts[Welcome]",)), "instructions[0].locale"),
        (
            PlayFiles(ids=("https://example.com/a.wav", "#SSML[<speak>Hi</speak>]")),
            "instructions[0].locale",
        ),
        (StartRecording(), "instructions[0].options"),
        (
            StartRecording(options=RecordingOptions(format="mp3")),
            "instructions[0].options.destinationUrl",
        ),
        (
            StartRecording(options=RecordingOptions(destination_url="https://example.com/rec")),
            "instructions[0].options.destinationUrl",
        ),
        (
            StartRecording(options=RecordingOptions(destination_url="s3://")),
            "instructions[0].options.destinationUrl",
        ),
    ],
)
def test_instructions_sinch_cannot_act_on_are_illegal(instruction, field):
    for event in ("ice", "ace", "pie"):
        with pytest.raises(SvamlError) as err:
            Svaml(Hangup(), (instruction,)).validate_for(event)
        assert err.value.field == field


@pytest.mark.parametrize(
    "instruction",
    [
        PlayFiles(ids=("#tts[Welcome]",), locale="en-GB"),
        PlayFiles(ids=("https://example.com/a.wav",)),  # a file needs no locale
        StartRecording(
            options=RecordingOptions(destination_url="s3://bucket/x.mp3", credentials="k:s")
        ),
        StartRecording(options=RecordingOptions(destination_url="azure://acct/rec/")),
        StartRecording(options=RecordingOptions(destination_url="gs://bucket/")),
    ],
)
def test_instructions_sinch_can_act_on_are_legal(instruction):
    Svaml(Hangup(), (instruction,)).validate_for("ice")


@pytest.mark.parametrize(
    ("instruction", "field"),
    [
        (PlayFiles(ids=("#tts[Welcome]",)), "instructions[1].locale"),
        (StartRecording(), "instructions[1].options"),
    ],
)
def test_a_plugins_illegal_instruction_gets_the_fallback(make, instruction, field):
    rt, app = make(
        {
            "router": Fixed(
                Decision.propose(ConnectPstn(number=NUMBER), instructions=[Say(text="Hi")])
            ),
            "extras": Fixed(Decision.add(instruction)),
        },
        policy={"fallback": {"ice": FALLBACK}},
    )
    assert post(app, ice("bad-ins")).json == FALLBACK
    trace = trace_of(rt, "bad-ins")
    assert trace["rule"] == "invalid-answer"
    assert f"merged answer rejected: {field}:" in trace["notes"][-1]


def test_a_fallback_sinch_cannot_act_on_is_a_startup_error(make):
    bad = {
        "instructions": [{"name": "playFiles", "ids": ["#tts[Sorry]"]}],
        "action": {"name": "hangup"},
    }
    with pytest.raises(ConfigError, match=r"policy.fallback.ice: instructions\[0\].locale"):
        make({}, policy={"fallback": {"ice": bad}})


# ------------------------------------------------------------------ answer before a deny prompt


def test_merge_answers_once_for_several_prompting_deniers():
    out = merge(
        "ice",
        [
            ("allowlist", Decision.denied("no", prompt="Not this number.", answer=True)),
            ("credit", Decision.denied("poor", prompt="Please top up.", answer=True)),
        ],
    )
    assert out.svaml.to_dict()["instructions"] == [
        {"name": "answer"},
        {"name": "say", "text": "Not this number."},
        {"name": "say", "text": "Please top up."},
    ]
    assert Decision.denied("no", answer=True).instructions == ()  # nothing to hear


def test_builtin_deny_prompts_answer_first_by_default(make):
    credit = Credit()
    rt, app = make(
        {"allowlist": Allowlist(), "credit": credit},
        plugins={
            "allowlist": {"allow": ["+1*"], "deny_prompt": "Not this number."},
            "credit": {
                "account_from": "cli",
                "rates": {"+1": "0.10", "+44": "0.10"},
                "deny_prompt": "Please top up.",
            },
        },
    )
    credit.topup(rt.store, "+12015550001", "0.01")  # buys less than minimum_seconds
    # credit alone denies: its low-balance prompt is answered first
    assert post(app, ice("low-1", to=NUMBER, cli="12015550001")).json == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "Please top up.", "locale": "en-US"},
        ],
        "action": {"name": "hangup"},
    }
    # both deny: one answer, then both prompts in precedence order
    assert post(app, ice("low-2", to="+442071234567", cli="12015550001")).json["instructions"] == [
        {"name": "answer"},
        {"name": "say", "text": "Not this number.", "locale": "en-US"},
        {"name": "say", "text": "Please top up.", "locale": "en-US"},
    ]


def test_deny_answer_false_sends_the_prompt_alone(make):
    credit = Credit()
    rt, app = make(
        {"credit": credit},
        plugins={
            "credit": {"rates": {"+1": "0.10"}, "deny_prompt": "Top up.", "deny_answer": False}
        },
    )
    assert post(app, ice("low-3")).json == {
        "instructions": [{"name": "say", "text": "Top up.", "locale": "en-US"}],
        "action": {"name": "hangup"},
    }


# ------------------------------------------------------------------ to.type = "did"


def did_call(callid, did, cli="12015555555", kind="did"):
    event = ice(callid, cli=cli)
    event["to"] = {"type": kind, "endpoint": did}
    return event


def test_did_without_a_forward_target_is_denied_with_the_reason(make):
    rt, app = make({"allowlist": Allowlist()}, plugins={"allowlist": {"default": "allow"}})
    assert post(app, did_call("did-1", "+15550001111")).json == {"action": {"name": "hangup"}}
    reason = trace_of(rt, "did-1")["plugins"][0]["decision"]["reason"]
    assert "+15550001111 is one of the application's own numbers" in reason
    assert "did_forward" in reason
    # a PSTN call to the same number (to.type number) follows the destination rules
    assert post(app, ice("did-2", to="+15550001111")).json["action"]["number"] == "+15550001111"


def test_did_is_forwarded_per_did_else_to_the_default(make):
    rt, app = make(
        {"allowlist": Allowlist()},
        plugins={
            "allowlist": {
                "did_forward": {"+15550001111": "+14440002222"},
                "did_default": "+14440009999",
                "max_duration": 900,
            }
        },
    )
    # default deny and no allow rule: the configured target is not subject to them
    assert post(app, did_call("did-3", "15550001111")).json == {
        "action": {"name": "connectPstn", "number": "+14440002222", "maxDuration": 900}
    }
    assert "DID +15550001111 forwarded by did_forward" in (
        trace_of(rt, "did-3")["plugins"][0]["decision"]["reason"]
    )
    assert post(app, did_call("did-4", "+15550003333", kind="Did")).json["action"]["number"] == (
        "+14440009999"
    )
    # an ordinary destination still needs an allow rule
    assert post(app, ice("did-5", to="+14440002222")).json == {"action": {"name": "hangup"}}


def test_did_forward_keeps_the_caller_rules(make):
    _, app = make(
        {"allowlist": Allowlist()},
        plugins={"allowlist": {"did_default": "+14440009999", "deny_callers": ["+1201555*"]}},
    )
    assert post(app, did_call("did-6", "+15550001111")).json["action"]["name"] == "hangup"
    assert post(app, did_call("did-7", "+15550001111", cli="447700900000")).json["action"][
        "number"
    ] == "+14440009999"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"did_forward": {"15550001111": "+14440002222"}}, "did_forward: DID: '15550001111'"),
        ({"did_forward": {"+15550001111": "office"}}, "target of +15550001111"),
        (
            {"did_forward": {"+15550001111": "+15550002222", "+15550002222": "+14440002222"}},
            "itself one of the DIDs",
        ),
        ({"did_default": "+1"}, "did_default"),
        (
            {"did_forward": {"+15550001111": "+14440002222"}, "did_default": "+15550001111"},
            "itself one of the DIDs",
        ),
    ],
)
def test_bad_did_configuration_is_named(make, config, message):
    with pytest.raises((PluginError, ConfigError)) as err:
        make({"allowlist": Allowlist()}, plugins={"allowlist": config})
    assert message in str(err.value)


# ------------------------------------------------------------------ max_duration is a cap


def test_allowlist_max_duration_caps_a_longer_proposal(make):
    rt, app = make(
        {
            "router": Fixed(
                Decision.propose(ConnectPstn(number="+14155550000", max_duration=3600))
            ),
            "allowlist": Allowlist(),
        },
        plugins={"allowlist": {"allow": ["+1*"], "max_duration": 600}},
    )
    assert post(app, ice("cap-1")).json == {
        "action": {"name": "connectPstn", "number": "+14155550000", "maxDuration": 600}
    }
    trace = trace_of(rt, "cap-1")
    assert trace["rule"] == "proposal" and trace["capped_by"] == "allowlist"


def test_allowlist_max_duration_hangs_up_an_action_it_cannot_cap(make):
    _, app = make(
        {"router": Fixed(Decision.propose(CONF)), "allowlist": Allowlist()},
        plugins={"allowlist": {"allow": ["+1*"], "max_duration": 600}},
    )
    assert post(app, ice("cap-2")).json == {"action": {"name": "hangup"}}
    _, app = make(  # no max_duration: no cap, the conference goes ahead
        {"router": Fixed(Decision.propose(CONF)), "allowlist": Allowlist()},
        plugins={"allowlist": {"allow": ["+1*"]}},
    )
    assert post(app, ice("cap-3")).json["action"]["name"] == "connectConf"


# ------------------------------------------------------------------ the real server


def server_config(url, *, extra_policy="", answers=""):
    return f"""
[server]
port = 0
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[policy]
{extra_policy}
[policy.fallback.ice]
instructions = [{{ name = "say", text = "Service unavailable.", locale = "en-US" }}]
action = {{ name = "hangup" }}
[store]
url = "{url}"
[plugins]
enabled = ["proposer", "allowlist", "credit", "crm"]
[plugins.proposer]
answers = {{ {answers} }}
[plugins.allowlist]
allow = ["+1555*"]
max_duration = 600
deny_prompt = "Not this number."
did_forward = {{ "+15550009999" = "+15550002222" }}
[plugins.credit]
account_from = "cli"
rates = {{ "+1" = "0.10" }}
deny_prompt = "Please top up."
initial_accounts = {{ "+12015555555" = "50.00", "+12015550001" = "0.01" }}
"""


ANSWERS = ", ".join(
    [
        '"+15550000001" = { action = { name = "connectPstn", number = "+15550000001", '
        "suppressCallbacks = true } }",
        '"+15550000002" = { instructions = [{ name = "playFiles", ids = ["#tts[Hello]"] }], '
        'action = { name = "connectPstn", number = "+15550000002" } }',
        '"+15550000003" = { instructions = [{ name = "startRecording" }], '
        'action = { name = "connectPstn", number = "+15550000003" } }',
        '"+15550000004" = { action = { name = "connectPstn", number = "+15550000004", '
        "maxDuration = 3600 } }",
    ]
)


def server_trace(server, callid, site):
    done = run_cli(server.config, "trace", callid, "--json", pythonpath=str(site))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["callbacks"][0]["trace"]


def test_real_server_refuses_shapes_and_forwards(serve, tmp_path, backend):
    site = make_dist(tmp_path / "site", "switchboard-proposer", "proposer = tests.proposer_plugin")
    url = backend.url(tmp_path, "guards")
    server = serve(server_config(url, answers=ANSWERS), name="guards", pythonpath=str(site))

    def answer(event):
        status, ctype, body = server.post(event)
        assert status == 200 and ctype.startswith("application/json"), (status, body)
        return json.loads(body)

    # 1. suppressCallbacks while credit and crm need the DiCE: the fallback, and why
    assert answer(ice("r-sup", to="+15550000001")) == FALLBACK
    trace = server_trace(server, "r-sup", site)
    assert trace["rule"] == "callbacks-suppressed"
    assert "credit, crm rely on" in trace["notes"][-1]
    # 2. a spoken prompt without locale, a recording without options: the fallback
    assert answer(ice("r-tts", to="+15550000002")) == FALLBACK
    trace = server_trace(server, "r-tts", site)
    assert trace["rule"] == "invalid-answer" and "instructions[0].locale" in trace["notes"][-1]
    assert answer(ice("r-rec", to="+15550000003")) == FALLBACK
    assert "instructions[0].options" in server_trace(server, "r-rec", site)["notes"][-1]
    # 5. the allowlist's max_duration caps a longer proposal (credit's cap is higher)
    assert answer(ice("r-cap", to="+15550000004")) == {
        "action": {"name": "connectPstn", "number": "+15550000004", "maxDuration": 600}
    }
    assert server_trace(server, "r-cap", site)["capped_by"] == "allowlist"
    # 3. deny prompts: answer first, once, for one denier or two
    assert answer(ice("r-low", to="+15550000005", cli="12015550001")) == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "Please top up.", "locale": "en-US"},
        ],
        "action": {"name": "hangup"},
    }
    assert answer(ice("r-both", to="+14155550000", cli="12015550001"))["instructions"] == [
        {"name": "answer"},
        {"name": "say", "text": "Not this number.", "locale": "en-US"},
        {"name": "say", "text": "Please top up.", "locale": "en-US"},
    ]
    # 4. calls to our own numbers: forwarded when configured, denied with the reason if not
    assert answer(did_call("r-did", "+15550009999")) == {
        "action": {"name": "connectPstn", "number": "+15550002222", "maxDuration": 600}
    }
    assert answer(did_call("r-did-none", "+15550001111"))["action"] == {"name": "hangup"}
    plugins = server_trace(server, "r-did-none", site)["plugins"]
    reasons = [p["decision"]["reason"] for p in plugins if p["plugin"] == "allowlist"]
    assert "own numbers" in reasons[0]
    assert server.stop() == 0


def test_real_server_sends_suppressed_callbacks_when_allowed(serve, tmp_path, backend):
    site = make_dist(tmp_path / "site", "switchboard-proposer", "proposer = tests.proposer_plugin")
    url = backend.url(tmp_path, "allowed")
    text = server_config(url, extra_policy="allow_suppress_callbacks = true", answers=ANSWERS)
    server = serve(text, name="allowed", pythonpath=str(site))
    status, _, body = server.post(ice("r-sup-ok", to="+15550000001"))
    assert status == 200
    assert json.loads(body)["action"] == {
        "name": "connectPstn",
        "number": "+15550000001",
        "maxDuration": 600,
        "suppressCallbacks": True,
    }
    assert server.stop() == 0


def test_a_fallback_that_suppresses_callbacks_is_refused_at_start(backend):
    """The fallback is sent without the merge's checks: a configured one that suppresses
    callbacks while credit or crm rely on the DiCE stops the start, naming the key."""
    from core.config import ConfigError
    from plugins.crm import Crm

    fallback = {
        "ice": {
            "action": {"name": "connectPstn", "number": "+15612600684", "suppressCallbacks": True}
        }
    }
    with pytest.raises(ConfigError) as err:
        backend.runtime({"crm": Crm()}, policy={"fallback": fallback})
    assert "policy.fallback.ice: suppressCallbacks" in str(err.value) and "crm" in str(err.value)
    allowed = backend.runtime(
        {"crm": Crm()}, policy={"fallback": fallback, "allow_suppress_callbacks": True}
    )
    allowed.close()
