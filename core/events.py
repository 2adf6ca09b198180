"""Typed, immutable Sinch callback events (SINCH.md section 2).

``parse_event(raw_bytes)`` turns a raw request body into an ``Ice``, ``Ace``, ``Pie``,
``Dice`` or ``Notify``. Unknown fields are kept (read-only, in ``extra``) and otherwise
ignored; a known field of the wrong type, a missing ``event`` or ``callid`` (optional
for a Notify only: then ``callid`` is ``""``), an unknown event name, or a body that is
not a JSON object raises ``EventError`` naming the field.

Money amounts are parsed as ``Decimal``, never float.

Parsing is bounded (``parse_json``): a body nesting deeper than ``MAX_DEPTH``, a
number literal longer than ``MAX_NUMBER_CHARS`` or with a decimal exponent beyond
``MAX_EXPONENT``, ``NaN``/``Infinity``, and a string (key or value, anywhere) holding a
NUL character or a lone surrogate are refused, so no input costs more than linear time
or reaches the store in a form it cannot encode. Every numeric field of an event has a
range (``RANGES``, ``MONEY_MAX``, ``MONEY_PLACES``); a value outside it is refused
naming the field. Messages quote at most ``EXCERPT`` characters of any input.
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

MAX_DEPTH = 32  # levels of nested objects/arrays; Sinch's events use 3
MAX_NUMBER_CHARS = 40  # characters of one number literal, sign and exponent included
MAX_EXPONENT = 400  # |decimal exponent| of a number anywhere (every finite double fits)
EXCERPT = 40  # characters of input quoted in an error message

# (low, high) of the integer fields, inclusive. Durations: a day (Sinch cuts a call at
# its maxDuration, at most 14400 s; a DiCE may report a little more than a cap).
DURATION = (0, 86_400)
RANGES: dict[str, tuple[int, int]] = {
    "version": (1, 100),
    "duration": DURATION,
    "amd.duration": DURATION,
    "errorCode": (0, 999_999),
}
# Money (debit, userRate): 0 <= amount < MONEY_MAX, at most MONEY_PLACES decimals
# (trailing zeros aside). Sinch prices and charges are never negative.
MONEY_MAX = Decimal(10) ** 9
MONEY_PLACES = 12
_PLACES = Decimal(1).scaleb(-MONEY_PLACES)
DECISION_EVENTS = ("ice", "ace", "pie")

_DIGITS = re.compile(r"^\+?[0-9]{2,15}$")


class EventError(ValueError):
    """The body is not a valid callback event. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis), for messages; a
    NUL or a lone surrogate is shown as its escape, so the excerpt is always encodable."""
    cut = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    if cut.isascii() and "\x00" not in cut:
        return cut
    return cut.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


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

    def _out_of_range(self, name: str, value: Any, allowed: str) -> EventError:
        where = self.prefix + name
        return EventError(
            where, f"field '{where}' is {excerpt(str(value))}, outside its range {allowed}"
        )

    def integer(self, name: str) -> int | None:
        """An integer field, within its ``RANGES`` entry (by dotted name)."""
        value = self._get(name, (int, Decimal), "an integer")
        if value is None:
            return None
        low, high = RANGES[self.prefix + name]
        if not low <= value <= high:  # before int(): a Decimal may be 1E+400
            raise self._out_of_range(name, value, f"{low}..{high}")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise EventError(
                    self.prefix + name, f"field '{self.prefix}{name}' must be an integer"
                )
            value = int(value)
        return value

    def money(self, name: str) -> Decimal | None:
        """A money amount: 0 <= amount < MONEY_MAX, at most MONEY_PLACES decimals."""
        value = self._get(name, (int, Decimal), "a number")
        if value is None:
            return None
        amount = Decimal(value)
        if not 0 <= amount < MONEY_MAX or amount != amount.quantize(_PLACES):
            raise self._out_of_range(
                name, value, f"0 <= amount < {MONEY_MAX:.0f} with at most {MONEY_PLACES} decimals"
            )
        return amount

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
        amount = r.money("amount")
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


def _common(r: _Reader, *, callid_required: bool = True) -> dict[str, Any]:
    callid = r.text("callid")
    if not callid and callid_required:
        raise EventError("callid", "missing field 'callid'")
    return dict(
        callid=callid or "",
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
    # callid is optional: a conference notification may carry conferenceId instead
    # (SINCH.md 2.6); then callid is "", and the body digest tells deliveries apart
    return Notify(
        **_common(r, callid_required=False),
        type=r.text("type"),
        destination=r.text("destination"),
        amd=Amd.read(r.obj("amd")),
        error_code=r.integer("errorCode"),
        error_msg=r.text("errorMsg"),
        user=r.text("user"),
        extra=r.extra(),
    )


_PARSERS = {"ice": _ice, "ace": _ace, "pie": _pie, "dice": _dice, "notify": _notify}


class _Refused(ValueError):
    """A number literal or constant refused while decoding (``parse_json``)."""

    def __init__(self, literal: str, why: str) -> None:
        super().__init__(literal)
        self.literal, self.why = literal, why


def _check_number(literal: str) -> str | None:
    """Why a number literal is refused, or None."""
    if len(literal) > MAX_NUMBER_CHARS:
        return f"has more than {MAX_NUMBER_CHARS} characters"
    if "e" in literal or "E" in literal:
        try:
            exponent: int | None = Decimal(literal).adjusted()
        except ArithmeticError:  # beyond even Decimal's exponent range
            exponent = None
        if exponent is None or not -MAX_EXPONENT <= exponent <= MAX_EXPONENT:
            return f"is out of range (exponent beyond \u00b1{MAX_EXPONENT})"
    return None


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:  # int() of a long digit string is quadratic
        raise _Refused(literal, f"has more than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _parse_float(literal: str) -> Decimal:
    # a 40-character literal still says 1e99999999999999999999999999999999999: Decimal
    # keeps it in linear time, but int() or arithmetic on it later would not be bounded
    why = _check_number(literal)
    if why is not None:
        raise _Refused(literal, why)
    return Decimal(literal)


def _parse_constant(literal: str) -> Any:
    raise _Refused(literal, "is not JSON (NaN and Infinity are not numbers in JSON)")


class _Literal(str):
    """A number or constant kept as written (to locate a refused one)."""


# built once: json.loads(**kw) builds one a call
_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)
_LENIENT = json.JSONDecoder(parse_float=_Literal, parse_int=_Literal, parse_constant=_Literal)

_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # NUL, or half a surrogate pair


def _too_deep(text: str) -> bool:
    """Whether the JSON ``text`` nests objects/arrays deeper than ``MAX_DEPTH`` (cheap
    when it has few brackets; otherwise linear, strings skipped)."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        bracket = match.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
    return False


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    key = excerpt(key)
    return f"{parent}.{key}" if parent else key


def _find(value: Any, bad: Any, where: str = "") -> tuple[str, Any] | None:
    """The first (path, leaf) of decoded JSON for which ``bad(leaf)`` is true; object
    keys are leaves too (a bad key is reported at its own path)."""
    if isinstance(value, dict):
        for k, v in value.items():
            here = _path(where, k)
            if bad(k):
                return here, k
            found = _find(v, bad, here)
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find(v, bad, _path(where, i))
            if found is not None:
                return found
        return None
    return (where, value) if bad(value) else None


def _bad_text(value: Any) -> bool:
    if not isinstance(value, str) or value.isascii() and "\x00" not in value:
        return False
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json(body: bytes) -> Any:
    """Decode a request body, within the limits of this module's docstring."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("body", "body is not UTF-8") from None
    if _too_deep(text):
        raise EventError("body", f"body nests objects/arrays deeper than {MAX_DEPTH} levels")
    try:
        data = _DECODER.decode(text)
    except _Refused as exc:
        where = _locate(text, exc.literal)
        shown = excerpt(exc.literal)
        label = f"field '{where}'" if where else "body"
        raise EventError(where or "body", f"{label}: {shown} {exc.why}") from None
    except (ValueError, ArithmeticError) as exc:
        reason = excerpt(str(exc.args[0] if exc.args else exc).split(":")[0], 80)
        raise EventError("body", f"body is not valid JSON ({reason})") from None
    if _SUSPECT_ESCAPE.search(text):  # only an escape can make a NUL or a lone surrogate
        found = _find(data, _bad_text)
        if found is not None:
            where = found[0] or "body"
            problem = "a NUL character" if "\x00" in found[1] else "a lone surrogate"
            raise EventError(where, f"field '{where}' contains {problem}")
    return data


def _locate(text: str, literal: str) -> str:
    """The path of the first refused number or constant in ``text`` ("" at the top)."""
    try:
        data = _LENIENT.decode(text)
    except ValueError:  # pragma: no cover - the strict pass got as far as the literal
        return ""
    found = _find(
        data,
        lambda v: isinstance(v, _Literal)
        and (v[:1].isalpha() or v.startswith("-I") or _check_number(v) is not None),
    )
    return found[0] if found else ""


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
            "event",
            f"unknown event {excerpt(name)!r} (expected one of {', '.join(EVENT_NAMES)})",
        )
    r = _Reader(data)
    r.seen.add("event")
    return parser(r)
