"""Parsing every callback event type from raw bodies."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from core.events import (
    Ace,
    Dice,
    EventError,
    Ice,
    Notify,
    Pie,
    freeze,
    normalize_number,
    parse_event,
)
from tests.helpers import VECTORS, ace, dice, ice, notify, pie

FIXTURES = VECTORS["event_fixtures"]["items"]
TYPES = {"ice": Ice, "ace": Ace, "dice": Dice, "pie": Pie, "notify": Notify}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_sdk_fixtures_parse(name):
    data = FIXTURES[name]["json"]
    event = parse_event(json.dumps(data).encode())
    assert isinstance(event, TYPES[data["event"]])
    assert event.callid == data["callid"]
    assert event.custom == data.get("custom")
    assert dict(event.extra) == {}


def test_ice_fields():
    body = VECTORS["vectors"][-1]["body"].encode()  # derived ICE from the docs' example
    event = parse_event(body)
    assert isinstance(event, Ice)
    assert event.to.endpoint == "+12017777777" and event.to.e164 == "+12017777777"
    assert event.cli == "12015555555" and event.cli_e164 == "+12015555555"
    assert event.user_rate.amount == Decimal("0.0") and event.user_rate.currency_id == "USD"
    assert event.domain == "pstn" and event.origination_type == "PSTN"
    assert event.call_resource_url.endswith(event.callid)


def test_ace_with_amd():
    event = parse_event(
        json.dumps(
            ace("c1", amd={"status": "human", "reason": "longgreeting", "duration": 15})
        ).encode()
    )
    assert isinstance(event, Ace)
    assert (event.amd.status, event.amd.reason, event.amd.duration) == ("human", "longgreeting", 15)


def test_dice_money_is_decimal_never_float():
    event = parse_event(json.dumps(dice("c1")).encode())
    assert isinstance(event, Dice)
    assert event.debit.amount == Decimal("0.0095") and isinstance(event.debit.amount, Decimal)
    assert (
        event.duration == 42 and event.from_ == "12015555555" and event.from_e164 == "+12015555555"
    )
    assert event.to.e164 == "+15612600684"
    assert (event.reason, event.result) == ("CALLERHANGUP", "ANSWERED")


def test_pie_menu_result():
    event = parse_event(json.dumps(pie("c1", "1234")).encode())
    assert isinstance(event, Pie)
    assert (event.menu_result.menu_id, event.menu_result.type, event.menu_result.value) == (
        "main",
        "sequence",
        "1234",
    )


def test_notify_error_form():
    event = parse_event(
        json.dumps(
            notify("c1", type="callingerror", errorCode=40001, errorMsg="Illegal SVAML")
        ).encode()
    )
    assert isinstance(event, Notify)
    assert (event.type, event.error_code, event.error_msg) == (
        "callingerror",
        40001,
        "Illegal SVAML",
    )


def test_unknown_fields_are_kept_read_only():
    event = parse_event(json.dumps(ice("c1", futureField={"a": [1, 2]})).encode())
    assert event.extra["futureField"]["a"] == (1, 2)
    with pytest.raises(TypeError):
        event.extra["futureField"]["b"] = 1  # type: ignore[index]


def test_events_are_immutable():
    # frozen msgspec structs raise AttributeError (as frozen dataclasses did: their
    # FrozenInstanceError is one), and so do their parts
    event = parse_event(json.dumps(ice("c1")).encode())
    with pytest.raises(AttributeError):
        event.callid = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.to.endpoint = "+15550000000"  # type: ignore[union-attr,misc]
    with pytest.raises(AttributeError):
        event.extra = {}  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"not json", "body", "not valid JSON"),
        (b"\xff\xfe", "body", "UTF-8"),
        (b"[1, 2]", "body", "JSON object"),
        (b'"ice"', "body", "JSON object"),
        (b'{"callid": "x"}', "event", "missing field 'event'"),
        (b'{"event": 5, "callid": "x"}', "event", "must be a string"),
        (b'{"event": "hangup", "callid": "x"}', "event", "unknown event"),
        (b'{"event": "ice"}', "callid", "missing field 'callid'"),
        (b'{"event": "ice", "callid": 12}', "callid", "must be a string"),
        (b'{"event": "ice", "callid": "x", "to": "+15612600684"}', "to", "must be an object"),
        (
            b'{"event": "ice", "callid": "x", "to": {"endpoint": 1}}',
            "to.endpoint",
            "must be a string",
        ),
        (
            b'{"event": "ice", "callid": "x", "userRate": {"amount": "1"}}',
            "userRate.amount",
            "must be a number",
        ),
        (b'{"event": "ice", "callid": "x", "version": true}', "version", "must be an integer"),
        (b'{"event": "dice", "callid": "x", "duration": 1.5}', "duration", "must be an integer"),
        (
            b'{"event": "ice", "callid": "x", "callHeaders": [1]}',
            "callHeaders[0]",
            "must be an object",
        ),
        (b'{"event": "pie", "callid": "x", "menuResult": []}', "menuResult", "must be an object"),
        (
            b'{"event": "ace", "callid": "x", "amd": {"duration": "long"}}',
            "amd.duration",
            "must be an integer",
        ),
        (
            b'{"event": "dice", "callid": "x", "callHeaders": [{"key": "k"}]}',
            "callHeaders[0].value",
            "missing field 'callHeaders[0].value'",
        ),
        (
            b'{"event": "dice", "callid": "x", "callHeaders": [{"key": 1, "value": "v"}]}',
            "callHeaders[0].key",
            "must be a string",
        ),
        (b'{"event": "dice", "callid": "x", "callHeaders": {}}', "callHeaders", "an array"),
        (b'{"event": "notify", "errorCode": 1e7}', "errorCode", "outside its range"),
        (b'{"event": "dice", "callid": "x", "duration": -2}', "duration", "is -2, outside"),
    ],
)
def test_bad_bodies_name_the_field(body, field, words):
    with pytest.raises(EventError) as err:
        parse_event(body)
    assert err.value.field == field
    assert words in str(err.value)


def test_nulls_are_absent_fields_and_numbers_take_their_types():
    event = parse_event(
        b'{"event": "DICE", "callid": "x", "version": 1.0, "duration": 6E1, "to": null,'
        b' "callHeaders": null, "debit": {"amount": null}, "userRate": {"amount": 2}}'
    )
    assert isinstance(event, Dice) and event.name == event.event == "dice"
    assert (event.version, event.duration, event.to, event.call_headers) == (1, 60, None, ())
    assert type(event.duration) is int and type(event.version) is int
    assert event.debit.amount == 0 and isinstance(event.debit.amount, Decimal)
    assert event.user_rate.amount == 2 and isinstance(event.user_rate.amount, Decimal)
    notify = parse_event(b'{"event": "notify", "callid": null, "type": "amd"}')
    assert notify.callid == "" and notify.type == "amd"


def test_unknown_fields_named_like_attributes_are_extra():
    event = parse_event(
        # "from_" is the attribute's name, not Sinch's: in a body it is an unknown field
        json.dumps({**dice("c1", extra={"x": 1}, name="y", zz=[1.5]), "from_": "z"}).encode()
    )
    assert event.name == "dice" and event.from_ == "12015555555"
    assert dict(event.extra) == {
        "extra": {"x": 1},
        "name": "y",
        "from_": "z",
        "zz": (Decimal("1.5"),),
    }


@pytest.mark.parametrize(
    ("zz", "field"),
    [
        ("9" * 40, None),  # 40 characters: a number, on the exact decoder's path
        ("-" + "9" * 39, None),
        ("-" + "9" * 40, "zz"),
        ('"' + "9" * 60 + '"', None),  # digits in a string are no number
        (r'"\\u0000"', None),  # an escaped backslash, then u0000: no NUL
        (r'"\\\u0000"', "zz"),  # an escaped backslash, then a NUL
        ("[" * 31 + "]" * 31, None),  # 32 levels with the body's own
        ("[" * 32 + "]" * 32, "body"),
        ("[" + ",".join(["{}"] * 40) + "]", None),  # many brackets, not deep
        ("1.5e400", None),
        ("1.5e401", "zz"),
    ],
)
def test_the_limits_hold_on_both_decoders(zz, field):
    """msgspec decodes what needs no closer look; the standard library's decoder with
    its hooks decides the rest. Either way the same bodies pass and fail."""
    body = b'{"event": "ace", "callid": "x", "zz": ' + zz.encode() + b"}"
    if field is None:
        assert parse_event(body).extra["zz"] == freeze(json.loads(zz, parse_float=Decimal))
    else:
        with pytest.raises(EventError) as err:
            parse_event(body)
        assert err.value.field == field


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("12015555555", "+12015555555"),
        ("+12015555555", "+12015555555"),
        ("0046701234567", "+46701234567"),
        ("private", None),
        ("", None),
        (None, None),
        ("+1 201-555-5555", "+12015555555"),
    ],
)
def test_numbers_arrive_with_or_without_plus(raw, e164):
    assert normalize_number(raw) == e164
