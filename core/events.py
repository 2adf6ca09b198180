"""Typed, immutable Sinch callback events (SINCH.md section 2).

``parse_event(raw_bytes)`` turns a raw request body into an ``Ice``, ``Ace``, ``Pie``,
``Dice`` or ``Notify``. Unknown fields are kept (read-only, in ``extra``) and otherwise
ignored; a known field of the wrong type, a missing ``event`` or ``callid``, an unknown
event name, or a body that is not a JSON object raises ``EventError`` naming the field.

Money amounts are parsed as ``Decimal``, never float.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar

EVENT_NAMES = ("ice", "ace", "pie", "dice", "notify")
DECISION_EVENTS = ("ice", "ace", "pie")

_DIGITS = re.compile(r"^\+?[0-9]{2,15}$")


class EventError(ValueError):
    """The body is not a valid callback event. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def normalize_number(value: str | None) -> str | None:
    """E.164 with ``+`` for a phone number that arrived with or without it; else None."""
    if value is None:
        return None
    text = value.strip().replace(" ", "").replace("-", "")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not _DIGITS.match(text):
        return None
    return text if text.startswith("+") else "+" + text


def freeze(value: Any) -> Any:
    """A deep read-only copy of parsed JSON (dicts become mappingproxies, lists tuples)."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


# --------------------------------------------------------------------------- field readers


class _Reader:
    """Reads typed fields out of one JSON object, naming the field path on error."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()

    def _get(self, name: str, kinds: tuple[type, ...], label: str) -> Any:
        self.seen.add(name)
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in kinds:
            value = object()  # a bool is not a number here
        if not isinstance(value, kinds):
            raise EventError(self.prefix + name, f"field '{self.prefix}{name}' must be {label}")
        return value

    def text(self, name: str) -> str | None:
        return self._get(name, (str,), "a string")

    def integer(self, name: str) -> int | None:
        value = self._get(name, (int, Decimal), "an integer")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise EventError(
                    self.prefix + name, f"field '{self.prefix}{name}' must be an integer"
                )
            value = int(value)
        return value

    def number(self, name: str) -> Decimal | None:
        value = self._get(name, (int, Decimal), "a number")
        return None if value is None else Decimal(value)

    def obj(self, name: str) -> _Reader | None:
        value = self._get(name, (dict,), "an object")
        return None if value is None else _Reader(value, f"{self.prefix}{name}.")

    def array(self, name: str) -> list[Any] | None:
        return self._get(name, (list,), "an array")

    def extra(self) -> Mapping[str, Any]:
        return freeze({k: v for k, v in self.data.items() if k not in self.seen})


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class Money:
    currency_id: str | None
    amount: Decimal

    @classmethod
    def read(cls, r: _Reader | None) -> Money | None:
        if r is None:
            return None
        amount = r.number("amount")
        return cls(
            currency_id=r.text("currencyId"), amount=amount if amount is not None else Decimal(0)
        )


@dataclass(frozen=True, slots=True)
class Destination:
    type: str | None
    endpoint: str | None

    @property
    def e164(self) -> str | None:
        """The endpoint as an E.164 number, when it is a phone number."""
        if (self.type or "").lower() in ("number", "did", ""):
            return normalize_number(self.endpoint)
        return None

    @classmethod
    def read(cls, r: _Reader | None) -> Destination | None:
        if r is None:
            return None
        return cls(type=r.text("type"), endpoint=r.text("endpoint"))


@dataclass(frozen=True, slots=True)
class CallHeader:
    key: str
    value: str


def _read_headers(r: _Reader, name: str) -> tuple[CallHeader, ...]:
    items = r.array(name)
    if items is None:
        return ()
    out = []
    for i, item in enumerate(items):
        where = f"{r.prefix}{name}[{i}]"
        if not isinstance(item, dict):
            raise EventError(where, f"field '{where}' must be an object")
        key, value = item.get("key"), item.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise EventError(where, f"field '{where}' must have string 'key' and 'value'")
        out.append(CallHeader(key, value))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Amd:
    status: str | None
    reason: str | None
    duration: int | None

    @classmethod
    def read(cls, r: _Reader | None) -> Amd | None:
        if r is None:
            return None
        return cls(status=r.text("status"), reason=r.text("reason"), duration=r.integer("duration"))


@dataclass(frozen=True, slots=True)
class MenuResult:
    menu_id: str | None
    type: str | None
    value: str | None
    input_method: str | None

    @classmethod
    def read(cls, r: _Reader | None) -> MenuResult | None:
        if r is None:
            return None
        return cls(
            menu_id=r.text("menuId"),
            type=r.text("type"),
            value=r.text("value"),
            input_method=r.text("inputMethod"),
        )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    """Fields common to every callback (SINCH.md 2.1)."""

    name: ClassVar[str] = ""
    callid: str
    version: int | None = None
    timestamp: str | None = None
    custom: str | None = None
    application_key: str | None = None
    conference_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def event(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Ice(Event):
    name: ClassVar[str] = "ice"
    cli: str | None = None
    to: Destination | None = None
    domain: str | None = None
    origination_type: str | None = None
    user_rate: Money | None = None
    duration: int | None = None
    rdnis: str | None = None
    call_resource_url: str | None = None
    call_headers: tuple[CallHeader, ...] = ()

    @property
    def cli_e164(self) -> str | None:
        return normalize_number(self.cli)


@dataclass(frozen=True, slots=True)
class Ace(Event):
    name: ClassVar[str] = "ace"
    amd: Amd | None = None


@dataclass(frozen=True, slots=True)
class Pie(Event):
    name: ClassVar[str] = "pie"
    menu_result: MenuResult | None = None


@dataclass(frozen=True, slots=True)
class Dice(Event):
    name: ClassVar[str] = "dice"
    reason: str | None = None
    result: str | None = None
    debit: Money | None = None
    user_rate: Money | None = None
    to: Destination | None = None
    duration: int | None = None
    from_: str | None = None
    call_headers: tuple[CallHeader, ...] = ()

    @property
    def from_e164(self) -> str | None:
        return normalize_number(self.from_)


@dataclass(frozen=True, slots=True)
class Notify(Event):
    name: ClassVar[str] = "notify"
    type: str | None = None
    destination: str | None = None
    amd: Amd | None = None
    error_code: int | None = None
    error_msg: str | None = None
    user: str | None = None


def _common(r: _Reader) -> dict[str, Any]:
    callid = r.text("callid")
    if not callid:
        raise EventError("callid", "missing field 'callid'")
    return dict(
        callid=callid,
        version=r.integer("version"),
        timestamp=r.text("timestamp"),
        custom=r.text("custom"),
        application_key=r.text("applicationKey"),
        conference_id=r.text("conferenceId"),
    )


def _ice(r: _Reader) -> Ice:
    return Ice(
        **_common(r),
        cli=r.text("cli"),
        to=Destination.read(r.obj("to")),
        domain=r.text("domain"),
        origination_type=r.text("originationType"),
        user_rate=Money.read(r.obj("userRate")),
        duration=r.integer("duration"),
        rdnis=r.text("rdnis"),
        call_resource_url=r.text("callResourceUrl"),
        call_headers=_read_headers(r, "callHeaders"),
        extra=r.extra(),
    )


def _ace(r: _Reader) -> Ace:
    return Ace(**_common(r), amd=Amd.read(r.obj("amd")), extra=r.extra())


def _pie(r: _Reader) -> Pie:
    return Pie(**_common(r), menu_result=MenuResult.read(r.obj("menuResult")), extra=r.extra())


def _dice(r: _Reader) -> Dice:
    return Dice(
        **_common(r),
        reason=r.text("reason"),
        result=r.text("result"),
        debit=Money.read(r.obj("debit")),
        user_rate=Money.read(r.obj("userRate")),
        to=Destination.read(r.obj("to")),
        duration=r.integer("duration"),
        from_=r.text("from"),
        call_headers=_read_headers(r, "callHeaders"),
        extra=r.extra(),
    )


def _notify(r: _Reader) -> Notify:
    return Notify(
        **_common(r),
        type=r.text("type"),
        destination=r.text("destination"),
        amd=Amd.read(r.obj("amd")),
        error_code=r.integer("errorCode"),
        error_msg=r.text("errorMsg"),
        user=r.text("user"),
        extra=r.extra(),
    )


_PARSERS = {"ice": _ice, "ace": _ace, "pie": _pie, "dice": _dice, "notify": _notify}


_DECODER = json.JSONDecoder(parse_float=Decimal)  # built once: json.loads(**kw) builds one a call


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("body", "body is not UTF-8") from None
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        raise EventError("body", f"body is not valid JSON ({exc.args[0].split(':')[0]})") from None


def parse_event(body: bytes | Mapping[str, Any]) -> Event:
    """Parse a raw callback body (or an already decoded object) into a typed event."""
    data = parse_json(body) if isinstance(body, bytes | bytearray) else body
    if not isinstance(data, dict):
        raise EventError("body", "body must be a JSON object")
    name = data.get("event")
    if name is None:
        raise EventError("event", "missing field 'event'")
    if not isinstance(name, str):
        raise EventError("event", "field 'event' must be a string")
    parser = _PARSERS.get(name.lower())
    if parser is None:
        raise EventError(
            "event", f"unknown event {name!r} (expected one of {', '.join(EVENT_NAMES)})"
        )
    r = _Reader(data)
    r.seen.add("event")
    return parser(r)
