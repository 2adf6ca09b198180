"""Typed, immutable Sinch callback events (SINCH.md section 2).

``parse_event(raw_bytes)`` turns a raw request body into an ``Ice``, ``Ace``, ``Pie``,
``Dice`` or ``Notify``: frozen ``msgspec.Struct`` types, read the way ``core.wire``
describes. Unknown fields are kept (read-only, in ``extra``) and otherwise ignored; a
known field of the wrong type, a missing ``event`` or ``callid`` (optional for a Notify
only: then ``callid`` is ``""``), an unknown event name, or a body that is not a JSON
object raises ``EventError`` naming the field.

Money amounts are parsed as ``Decimal``, never float.

Parsing is bounded (``parse_json``): a body nesting deeper than ``MAX_DEPTH``, a
number literal longer than ``MAX_NUMBER_CHARS`` or with a decimal exponent beyond
``MAX_EXPONENT``, ``NaN``/``Infinity``, and a string (key or value, anywhere) holding a
NUL character or a lone surrogate are refused, so no input costs more than linear time
or reaches the store in a form it cannot encode. Every numeric field of an event has a
range (each struct's ``ranges``, ``MONEY_MAX``, ``MONEY_PLACES``); a value outside it is
refused naming the field. Messages quote at most ``EXCERPT`` characters of any input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from core import wire

EVENT_NAMES = ("ice", "ace", "pie", "dice", "notify")

MAX_DEPTH = 32  # levels of nested objects/arrays; Sinch's events use 3
MAX_NUMBER_CHARS = 40  # characters of one number literal, sign and exponent included
MAX_EXPONENT = 400  # |decimal exponent| of a number anywhere (every finite double fits)
EXCERPT = 40  # characters of input quoted in an error message

# (low, high) of the integer fields, inclusive (each event's ``ranges``). Durations: a
# day (Sinch cuts a call at its maxDuration, at most 14400 s; a DiCE may report a little
# more than a cap).
VERSION = (1, 100)
DURATION = (0, 86_400)
ERROR_CODE = (0, 999_999)
# Money (debit, userRate): 0 <= amount < MONEY_MAX, at most MONEY_PLACES decimals
# (trailing zeros aside). Sinch prices and charges are never negative.
MONEY_MAX = Decimal(10) ** 9
MONEY_PLACES = 12
_PLACES = Decimal(1).scaleb(-MONEY_PLACES)
DECISION_EVENTS = ("ice", "ace", "pie")

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def is_e164(value: object) -> bool:
    """Whether ``value`` is a phone number in E.164 form: ``+``, a country code, at most
    15 digits in all (the one check of it the core and the plugins use)."""
    return isinstance(value, str) and _E164.match(value) is not None
_EMPTY: Mapping[str, Any] = MappingProxyType({})


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
    if not text.startswith("+"):
        text = "+" + text
    return text if _E164.match(text) else None


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON value (objects become ``MappingProxyType``,
    arrays tuples); what the core hands plugins is frozen so."""
    kind = type(value)
    if kind is dict or kind is MappingProxyType:
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if kind is list or kind is tuple:
        return tuple([freeze(v) for v in value])
    return value


# --------------------------------------------------------------------------- value types


class _Invalid(ValueError):
    """A field's rule broken (raised in ``__post_init__``; ``field`` is its wire name)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(f"field '{field}' {text}")
        self.field, self.text = field, text


class _Struct(msgspec.Struct, frozen=True, rename="camel"):
    """Frozen, camelCase on the wire; unknown fields ignored (``parse_event`` keeps the
    top level's in ``extra``). ``ranges`` (python name: (low, high)) are the integer
    fields, checked and made ``int`` after decoding."""

    ranges: ClassVar[dict[str, tuple[int, int]]] = {}

    def __post_init__(self) -> None:
        for name, (low, high) in self.ranges.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not low <= value <= high:  # before int(): a Decimal may be 1E+400
                raise _Invalid(
                    _camel(name), f"is {excerpt(str(value))}, outside its range {low}..{high}"
                )
            if isinstance(value, Decimal):
                if value != value.to_integral_value():
                    raise _Invalid(_camel(name), "must be an integer")
                msgspec.structs.force_setattr(self, name, int(value))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class CallHeader(_Struct, frozen=True):
    key: str
    value: str


if TYPE_CHECKING:  # what a plugin reads
    _Int = int
    _Amount = Decimal
    _Headers = tuple[CallHeader, ...]
else:  # what the parser takes (a null is an absent field), made what a plugin reads in
    # __post_init__: a JSON number of either kind an int or a Decimal, a null list ()
    _Int = int | Decimal
    _Amount = int | Decimal | None
    _Headers = tuple[CallHeader, ...] | None


class Money(_Struct, frozen=True):
    currency_id: str | None = None
    amount: _Amount = Decimal(0)

    def __post_init__(self) -> None:
        """0 <= amount < MONEY_MAX, at most MONEY_PLACES decimals; null is 0."""
        amount = Decimal(0 if self.amount is None else self.amount)
        if not 0 <= amount < MONEY_MAX or amount != amount.quantize(_PLACES):
            raise _Invalid(
                "amount",
                f"is {excerpt(str(self.amount))}, outside its range 0 <= amount < "
                f"{MONEY_MAX:.0f} with at most {MONEY_PLACES} decimals",
            )
        msgspec.structs.force_setattr(self, "amount", amount)


class Destination(_Struct, frozen=True):
    type: str | None = None
    endpoint: str | None = None

    @property
    def e164(self) -> str | None:
        """The endpoint as an E.164 number, when it is a phone number."""
        if (self.type or "").lower() in ("number", "did", ""):
            return normalize_number(self.endpoint)
        return None


class Amd(_Struct, frozen=True):
    status: str | None = None
    reason: str | None = None
    duration: _Int | None = None
    ranges: ClassVar[dict[str, tuple[int, int]]] = {"duration": DURATION}


class MenuResult(_Struct, frozen=True):
    menu_id: str | None = None
    type: str | None = None
    value: str | None = None
    input_method: str | None = None


# --------------------------------------------------------------------------- events


class Event(_Struct, frozen=True):
    """Fields common to every callback (SINCH.md 2.1). ``extra``: the unknown top-level
    fields, read-only."""

    name: ClassVar[str] = ""
    callid: str
    version: _Int | None = None
    timestamp: str | None = None
    custom: str | None = None
    application_key: str | None = None
    conference_id: str | None = None
    extra: Mapping[str, Any] = _EMPTY
    ranges: ClassVar[dict[str, tuple[int, int]]] = {"version": VERSION}

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self, "call_headers", ()) is None:
            msgspec.structs.force_setattr(self, "call_headers", ())

    @property
    def event(self) -> str:
        return self.name


class Ice(Event, frozen=True):
    name: ClassVar[str] = "ice"
    cli: str | None = None
    to: Destination | None = None
    domain: str | None = None
    origination_type: str | None = None
    user_rate: Money | None = None
    duration: _Int | None = None
    rdnis: str | None = None
    call_resource_url: str | None = None
    call_headers: _Headers = ()
    ranges: ClassVar[dict[str, tuple[int, int]]] = {**Event.ranges, "duration": DURATION}

    @property
    def cli_e164(self) -> str | None:
        return normalize_number(self.cli)


class Ace(Event, frozen=True):
    name: ClassVar[str] = "ace"
    amd: Amd | None = None


class Pie(Event, frozen=True):
    name: ClassVar[str] = "pie"
    menu_result: MenuResult | None = None


class Dice(Event, frozen=True):
    name: ClassVar[str] = "dice"
    reason: str | None = None
    result: str | None = None
    debit: Money | None = None
    user_rate: Money | None = None
    to: Destination | None = None
    duration: _Int | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    call_headers: _Headers = ()
    ranges: ClassVar[dict[str, tuple[int, int]]] = {**Event.ranges, "duration": DURATION}

    @property
    def from_e164(self) -> str | None:
        return normalize_number(self.from_)


class Notify(Event, frozen=True):
    """``callid`` is optional here: a conference notification may carry ``conferenceId``
    instead (SINCH.md 2.6); then it is ``""``, and the body digest tells deliveries apart."""

    name: ClassVar[str] = "notify"
    type: str | None = None
    destination: str | None = None
    amd: Amd | None = None
    error_code: _Int | None = None
    error_msg: str | None = None
    user: str | None = None
    ranges: ClassVar[dict[str, tuple[int, int]]] = {**Event.ranges, "error_code": ERROR_CODE}


EVENTS: dict[str, type[Event]] = {c.name: c for c in (Ice, Ace, Pie, Dice, Notify)}
# the wire names each event reads ("extra" is not one: a field of that name is extra)
_KNOWN = {
    c: frozenset({"event", *(f.encode_name for f in msgspec.structs.fields(c))} - {"extra"})
    for c in EVENTS.values()
}


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
_FAST = msgspec.json.Decoder(float_hook=_parse_float)
_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)
_LENIENT = json.JSONDecoder(parse_float=_Literal, parse_int=_Literal, parse_constant=_Literal)

# (bytes: the UTF-8 of a multi-byte character holds no ASCII byte)
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")  # NUL, or half a surrogate pair
# a body's shape, to look for long runs of digits and count brackets in one pass: digits
# become 0, opening brackets [, anything else a blank
_SHAPE = bytes(48 if 48 <= i <= 57 else 91 if i in b"[{" else 32 for i in range(256))
_LONG_DIGITS = b"0" * MAX_NUMBER_CHARS


def _too_deep(body: bytes) -> bool:
    """Whether the JSON ``body`` nests objects/arrays deeper than ``MAX_DEPTH`` (cheap
    when it has few brackets; otherwise linear, strings skipped)."""
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(body):
        bracket = match.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif bracket in (b"]", b"}"):
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
    """Decode a request body, within the limits of this module's docstring. msgspec
    decodes it (every non-integer number through ``_parse_float``) unless something in it
    needs a closer look: brackets enough to nest too deep, an escape that may make a NUL or
    a lone surrogate, a run of digits long enough to be a number over the limit. Then, and
    whenever msgspec refuses it, the exact decoder (``_parse_exact``) decides and names
    the field at fault."""
    shape = body.translate(_SHAPE)
    if (
        _LONG_DIGITS not in shape
        and _SUSPECT_ESCAPE.search(body) is None
        and (shape.count(b"[") <= MAX_DEPTH or not _too_deep(body))
    ):
        try:
            return _FAST.decode(body)
        except (msgspec.MsgspecError, ValueError):  # incl. invalid UTF-8 and _Refused
            pass
    return _parse_exact(body)


def _parse_exact(body: bytes) -> Any:
    """The standard library's decoder, with hooks that refuse and locate what the limits
    refuse."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("body", "body is not UTF-8") from None
    if _too_deep(body):
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
    found = _find(data, _bad_text) if _SUSPECT_ESCAPE.search(body) else None
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
    kind = EVENTS.get(name.lower())
    if kind is None:
        raise EventError(
            "event",
            f"unknown event {excerpt(name)!r} (expected one of {', '.join(EVENT_NAMES)})",
        )
    if data.get("callid") in (None, ""):
        if kind is not Notify:
            raise EventError("callid", "missing field 'callid'")
        data = {**data, "callid": ""}
    unknown = data.keys() - _KNOWN[kind]
    known = {k: v for k, v in data.items() if k not in unknown} if unknown else data
    try:
        event = msgspec.convert(known, kind, builtin_types=(Decimal,))
    except msgspec.ValidationError as exc:
        raise _error(exc) from None
    if unknown:
        extra = freeze({k: v for k, v in data.items() if k in unknown})
        msgspec.structs.force_setattr(event, "extra", extra)
    return event


def _error(exc: msgspec.ValidationError) -> EventError:
    """The EventError naming the field of a msgspec validation error."""
    message, path = wire.split(exc)
    cause = exc.__cause__
    if isinstance(cause, _Invalid):
        where = wire.join(path, cause.field)
        return EventError(where, f"field '{where}' {cause.text}")
    name = wire.missing(message)
    if name is not None:
        where = wire.join(path, name)
        return EventError(where, f"missing field '{where}'")
    kind = wire.expected(message)
    if kind is None:  # pragma: no cover - msgspec says no more than the above here
        return EventError(path or "body", f"field '{path}': {excerpt(message)}")
    label = "a number" if path.endswith("amount") else wire.LABELS[kind]
    return EventError(path, f"field '{path}' must be {label}")
