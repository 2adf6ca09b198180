"""SVAML: the answer Sinch obeys (SINCH.md section 3).

Typed, immutable actions and instructions. Each checks its own fields and limits when
built (``SvamlError`` names the field); ``Svaml.validate_for(event)`` applies the
per-event legality table of SINCH.md 3.2 and the rules Sinch states for an element as
sent (``Node.check_sent``: a ``#tts[...]`` prompt needs a locale, a recording needs
somewhere to go), so that an answer breaking them is never sent. ``to_dict()`` and
``to_json()`` emit the canonical camelCase wire form with no null fields;
``Svaml.from_dict`` reads it back (used for the configured fallback answers and by tests).
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

MAX_DURATION = 14400  # seconds, connectPstn/connectSip/connectStream
MAX_PARK_DURATION = 600  # seconds, park (2021 docs)
MAX_SAY_CHARS = 600
MAX_COOKIE_BYTES = 1024
MAX_HEADER_BYTES = 1024
MAX_CONFERENCE_ID = 64

INDICATIONS = frozenset(
    [
        "at",
        "au",
        "bg",
        "br",
        "be",
        "ch",
        "cl",
        "cn",
        "cz",
        "de",
        "dk",
        "ee",
        "es",
        "fi",
        "fr",
        "gr",
        "hu",
        "il",
        "in",
        "it",
        "lt",
        "jp",
        "mx",
        "my",
        "nl",
        "no",
        "nz",
        "ph",
        "pl",
        "pt",
        "ru",
        "se",
        "sg",
        "th",
        "uk",
        "us",
        "tw",
        "ve",
        "za",
    ]
)
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_DTMF = re.compile(r"^[0-9#w]+$")
_MENU_ACTION = re.compile(r"^(menu|return)\((.*)\)$")
_SPOKEN_PROMPT = ("#tts[", "#ssml[")  # playFiles ids Sinch speaks: they need a locale
RECORDING_SCHEMES = ("s3", "azure", "gs")  # Amazon S3, Azure Blob Storage, Google Cloud Storage


class SvamlError(ValueError):
    """An SVAML element breaks a rule. ``field`` is the wire path at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(inner type, is-tuple) of ``X | None`` / ``tuple[X, ...] | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        return typing.get_args(inner)[0], True
    return inner, False


def _type_ok(value: Any, kind: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


class Node:
    """Base of every SVAML element: generic type check, wire names, (de)serialisation."""

    wire_names: ClassVar[dict[str, str]] = {}  # python field -> wire key, when not camelCase
    aliases: ClassVar[dict[str, str]] = {}  # extra accepted wire key -> python field
    required: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for attr, wire, kind, many in self._field_specs():
            value = getattr(self, attr)
            if value is None:
                if attr in self.required:
                    raise SvamlError(wire, "is required")
                continue
            if many:
                if isinstance(value, list):
                    value = tuple(value)
                    object.__setattr__(self, attr, value)
                if not isinstance(value, tuple) or not all(_type_ok(v, kind) for v in value):
                    raise SvamlError(wire, f"must be a list of {getattr(kind, '__name__', kind)}")
            elif not _type_ok(value, kind):
                raise SvamlError(wire, f"must be {_kind_label(kind)}")
        self.check()

    @classmethod
    def _field_specs(cls) -> tuple[tuple[str, str, Any, bool], ...]:
        """(python name, wire name, element type, is-list) of every field; computed once
        per class, since every answer builds several elements."""
        cached = cls.__dict__.get("_field_specs_cache")
        if cached is None:
            hints = _hints(cls)
            cached = tuple((name, wire, *_unwrap(hints[name])) for name, wire in cls._wire_fields())
            cls._field_specs_cache = cached  # type: ignore[attr-defined]
        return cached

    def check(self) -> None:
        """Field rules beyond types; raise SvamlError."""

    def check_sent(self) -> None:
        """Rules Sinch states for this element in an answer (a field required together
        with another, a value it needs to act on), beyond what ``check`` enforces when it
        is built. ``Svaml.validate_for`` calls it: an answer that breaks one is never
        sent (the pipeline sends the fallback, rule ``invalid-answer``)."""

    @classmethod
    def _wire(cls, name: str) -> str:
        return cls.wire_names.get(name, _camel(name))

    @classmethod
    def _wire_fields(cls) -> tuple[tuple[str, str], ...]:
        """(python name, wire name) of every field; computed once per class."""
        cached = cls.__dict__.get("_wire_fields_cache")
        if cached is None:
            cached = tuple((f.name, cls._wire(f.name)) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._wire_fields_cache = cached  # type: ignore[attr-defined]
        return cached

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        name = getattr(self, "name", None)
        if isinstance(name, str):
            out["name"] = name
        for attr, wire in self._wire_fields():
            value = getattr(self, attr)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, Node) else v for v in value]
            elif isinstance(value, Node):
                value = value.to_dict()
            out[wire] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Any:
        if not isinstance(data, dict):
            raise SvamlError(where or cls.__name__, "must be an object")
        wire_to_field = {cls._wire(f.name): f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        wire_to_field.update(cls.aliases)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "name":
                continue
            fname = wire_to_field.get(key)
            path = f"{where}.{key}" if where else key
            if fname is None:
                raise SvamlError(path, "unknown field")
            kind, many = _unwrap(_hints(cls)[fname])
            if isinstance(kind, type) and issubclass(kind, Node) and value is not None:
                if many:
                    if not isinstance(value, list):
                        raise SvamlError(path, "must be a list")
                    value = tuple(kind.from_dict(v, f"{path}[{i}]") for i, v in enumerate(value))
                else:
                    value = kind.from_dict(value, path)
            elif many and isinstance(value, list):
                value = tuple(value)
            kwargs[fname] = value
        try:
            return cls(**kwargs)
        except SvamlError as exc:
            if not where:
                raise
            raise SvamlError(f"{where}.{exc.field}", exc.message) from None


def _kind_label(kind: Any) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean"}.get(
        kind, f"a {getattr(kind, '__name__', kind)} object"
    )


def _check_max_duration(value: int | None, limit: int = MAX_DURATION) -> None:
    if value is not None and not 1 <= value <= limit:
        raise SvamlError("maxDuration", f"must be between 1 and {limit} seconds, got {value}")


def _check_cli(value: str | None) -> None:
    if value is not None and value != "private" and not _E164.match(value):
        raise SvamlError("cli", f"must be an E.164 number with '+' or 'private', got {value!r}")


def _check_dtmf(field: str, value: str | None) -> None:
    if value is not None and not _DTMF.match(value):
        raise SvamlError(field, "may contain only 0-9, '#' and 'w'")


def _check_endpoint_type(dest: Endpoint | None, expected: str) -> None:
    if dest is not None and (dest.type or "").lower() != expected.lower():
        raise SvamlError("destination.type", f"must be {expected!r}")


# --------------------------------------------------------------------------- shared parts


@dataclass(frozen=True)
class Endpoint(Node):
    type: str | None = None
    endpoint: str | None = None
    required: ClassVar[tuple[str, ...]] = ("endpoint",)


@dataclass(frozen=True)
class Header(Node):
    key: str | None = None
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("key", "value")

    def check(self) -> None:
        if len(f"{self.key}{self.value}".encode()) > MAX_HEADER_BYTES:
            raise SvamlError("callHeaders", f"a key/value pair exceeds {MAX_HEADER_BYTES} bytes")


@dataclass(frozen=True)
class AmdOptions(Node):
    enabled: bool | None = None
    async_: bool | None = None
    wire_names: ClassVar[dict[str, str]] = {"async_": "async"}


@dataclass(frozen=True)
class ConferenceDtmfOptions(Node):
    mode: str | None = None
    max_digits: int | None = None
    timeout_mills: int | None = None

    def check(self) -> None:
        if self.mode is not None and self.mode not in ("ignore", "forward", "detect"):
            raise SvamlError("conferenceDtmfOptions.mode", "must be ignore, forward or detect")
        for name in ("max_digits", "timeout_mills"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SvamlError(f"conferenceDtmfOptions.{_camel(name)}", "must not be negative")


@dataclass(frozen=True)
class StreamingOptions(Node):
    version: int | None = None
    sample_rate: int | None = None


@dataclass(frozen=True)
class MenuOption(Node):
    dtmf: str | None = None
    action: str | None = None
    required: ClassVar[tuple[str, ...]] = ("dtmf", "action")

    def check(self) -> None:
        if not _MENU_ACTION.match(self.action or ""):
            raise SvamlError(
                "options.action", f"must be menu(<id>) or return(<value>), got {self.action!r}"
            )


@dataclass(frozen=True)
class Menu(Node):
    id: str | None = None
    main_prompt: str | None = None
    repeat_prompt: str | None = None
    repeats: int | None = None
    max_digits: int | None = None
    timeout_mills: int | None = None
    max_timeout_mills: int | None = None
    options: tuple[MenuOption, ...] | None = None
    required: ClassVar[tuple[str, ...]] = ("id",)


@dataclass(frozen=True)
class TranscriptionOptions(Node):
    enabled: bool | None = None
    locale: str | None = None


@dataclass(frozen=True)
class RecordingOptions(Node):
    destination_url: str | None = None
    credentials: str | None = None
    format: str | None = None
    notification_events: bool | None = None
    transcription_options: TranscriptionOptions | None = None


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action(Node):
    name: ClassVar[str] = ""

    @property
    def caps_duration(self) -> bool:
        """Whether this action carries a ``maxDuration``."""
        return any(f.name == "max_duration" for f in dataclasses.fields(self))

    @property
    def duration_limit(self) -> int:
        return MAX_DURATION


@dataclass(frozen=True)
class Hangup(Action):
    name: ClassVar[str] = "hangup"


@dataclass(frozen=True)
class Continue(Action):
    name: ClassVar[str] = "continue"


@dataclass(frozen=True)
class ConnectPstn(Action):
    name: ClassVar[str] = "connectPstn"
    number: str | None = None
    locale: str | None = None
    max_duration: int | None = None
    dial_timeout: int | None = None
    cli: str | None = None
    suppress_callbacks: bool | None = None
    dtmf: str | None = None
    indications: str | None = None
    amd: AmdOptions | None = None

    def check(self) -> None:
        if self.number is not None and not _E164.match(self.number):
            raise SvamlError("number", f"must be an E.164 number with '+', got {self.number!r}")
        _check_max_duration(self.max_duration)
        if self.dial_timeout is not None and self.dial_timeout < 1:
            raise SvamlError("dialTimeout", "must be at least 1 second")
        _check_cli(self.cli)
        _check_dtmf("dtmf", self.dtmf)
        if self.indications is not None and self.indications not in INDICATIONS:
            raise SvamlError("indications", f"unknown ring-tone country {self.indications!r}")


@dataclass(frozen=True)
class ConnectMxp(Action):
    name: ClassVar[str] = "connectMxp"
    destination: Endpoint | None = None
    call_headers: tuple[Header, ...] | None = None
    aliases: ClassVar[dict[str, str]] = {"callheaders": "call_headers"}  # OAS spelling

    def check(self) -> None:
        _check_endpoint_type(self.destination, "username")


@dataclass(frozen=True)
class ConnectConf(Action):
    name: ClassVar[str] = "connectConf"
    conference_id: str | None = None
    conference_dtmf_options: ConferenceDtmfOptions | None = None
    moh: str | None = None
    required: ClassVar[tuple[str, ...]] = ("conference_id",)

    def check(self) -> None:
        if not self.conference_id or len(self.conference_id) > MAX_CONFERENCE_ID:
            raise SvamlError("conferenceId", f"must be 1 to {MAX_CONFERENCE_ID} characters")
        if self.moh is not None and self.moh not in ("ring", "music1", "music2", "music3"):
            raise SvamlError("moh", "must be ring, music1, music2 or music3")


@dataclass(frozen=True)
class ConnectSip(Action):
    name: ClassVar[str] = "connectSip"
    destination: Endpoint | None = None
    max_duration: int | None = None
    cli: str | None = None
    transport: str | None = None
    suppress_callbacks: bool | None = None
    call_headers: tuple[Header, ...] | None = None
    moh: str | None = None
    required: ClassVar[tuple[str, ...]] = ("destination",)

    def check(self) -> None:
        _check_endpoint_type(self.destination, "sip")
        _check_max_duration(self.max_duration)
        if self.transport is not None and self.transport.upper() not in ("UDP", "TCP", "TLS"):
            raise SvamlError("transport", "must be UDP, TCP or TLS")


@dataclass(frozen=True)
class ConnectStream(Action):
    name: ClassVar[str] = "connectStream"
    destination: Endpoint | None = None
    streaming_options: StreamingOptions | None = None
    max_duration: int | None = None
    call_headers: tuple[Header, ...] | None = None
    required: ClassVar[tuple[str, ...]] = ("destination",)

    def check(self) -> None:
        _check_endpoint_type(self.destination, "websocket")
        _check_max_duration(self.max_duration)


@dataclass(frozen=True)
class RunMenu(Action):
    name: ClassVar[str] = "runMenu"
    barge: bool | None = None
    locale: str | None = None
    main_menu: str | None = None
    enable_voice: bool | None = None
    menus: tuple[Menu, ...] | None = None
    required: ClassVar[tuple[str, ...]] = ("menus",)

    def check(self) -> None:
        ids = [m.id for m in self.menus or ()]
        if "main" not in ids:
            raise SvamlError("menus", "one menu must have the id 'main'")
        if len(set(ids)) != len(ids):
            raise SvamlError("menus", "menu ids must be unique")
        if self.main_menu is not None and self.main_menu not in ids:
            raise SvamlError("mainMenu", f"names no menu: {self.main_menu!r}")
        if self.enable_voice and not self.locale:
            raise SvamlError("locale", "is required when enableVoice is true")
        for menu in self.menus or ():
            for option in menu.options or ():
                match = _MENU_ACTION.match(option.action or "")
                if match and match.group(1) == "menu" and match.group(2) not in ids:
                    raise SvamlError("options.action", f"{option.action!r} names no menu")


@dataclass(frozen=True)
class Park(Action):
    name: ClassVar[str] = "park"
    locale: str | None = None
    intro_prompt: str | None = None
    hold_prompt: str | None = None
    max_duration: int | None = None

    @property
    def duration_limit(self) -> int:
        return MAX_PARK_DURATION

    def check(self) -> None:
        _check_max_duration(self.max_duration, MAX_PARK_DURATION)


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Instruction(Node):
    name: ClassVar[str] = ""


@dataclass(frozen=True)
class PlayFiles(Instruction):
    name: ClassVar[str] = "playFiles"
    ids: tuple[str, ...] | None = None
    locale: str | None = None
    required: ClassVar[tuple[str, ...]] = ("ids",)

    def check(self) -> None:
        if not self.ids:
            raise SvamlError("ids", "must name at least one file or prompt")

    def check_sent(self) -> None:
        spoken = [i for i in self.ids or () if i.lower().startswith(_SPOKEN_PROMPT)]
        if spoken and not self.locale:
            raise SvamlError(
                "locale", f"is required for #tts[...] and #ssml[...] prompts ({spoken[0][:40]!r})"
            )


@dataclass(frozen=True)
class Say(Instruction):
    name: ClassVar[str] = "say"
    text: str | None = None
    locale: str | None = None
    required: ClassVar[tuple[str, ...]] = ("text",)

    def check(self) -> None:
        if not self.text or len(self.text) > MAX_SAY_CHARS:
            raise SvamlError("text", f"must be 1 to {MAX_SAY_CHARS} characters")


@dataclass(frozen=True)
class SendDtmf(Instruction):
    name: ClassVar[str] = "sendDtmf"
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("value",)

    def check(self) -> None:
        _check_dtmf("value", self.value)


@dataclass(frozen=True)
class SetCookie(Instruction):
    name: ClassVar[str] = "setCookie"
    key: str | None = None
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("key", "value")

    @property
    def size(self) -> int:
        return len((self.key or "").encode()) + len((self.value or "").encode())


@dataclass(frozen=True)
class Answer(Instruction):
    name: ClassVar[str] = "answer"


@dataclass(frozen=True)
class StartRecording(Instruction):
    name: ClassVar[str] = "startRecording"
    options: RecordingOptions | None = None

    def check_sent(self) -> None:
        # Sinch: "In every case, the Recording Options are required"; the file goes to
        # an S3, Azure Blob Storage or Google Cloud Storage URI (SINCH.md 3.4)
        if self.options is None:
            raise SvamlError("options", "are required (destinationUrl at least)")
        url = self.options.destination_url
        if not url:
            raise SvamlError("options.destinationUrl", "is required")
        scheme, sep, rest = url.partition("://")
        if not sep or not rest or scheme.lower() not in RECORDING_SCHEMES:
            raise SvamlError(
                "options.destinationUrl",
                f"must be an s3://, azure:// or gs:// URI, got {url[:60]!r}",
            )


@dataclass(frozen=True)
class StopRecording(Instruction):
    name: ClassVar[str] = "stopRecording"


ACTIONS: dict[str, type[Action]] = {
    c.name: c
    for c in (
        Hangup,
        Continue,
        ConnectPstn,
        ConnectMxp,
        ConnectConf,
        ConnectSip,
        ConnectStream,
        RunMenu,
        Park,
    )
}
INSTRUCTIONS: dict[str, type[Instruction]] = {
    c.name: c for c in (PlayFiles, Say, SendDtmf, SetCookie, Answer, StartRecording, StopRecording)
}

# SINCH.md 3.2: which action / instruction may answer which event.
LEGAL_ACTIONS: dict[str, frozenset[str]] = {
    "ice": frozenset(
        {
            "hangup",
            "connectPstn",
            "connectMxp",
            "connectConf",
            "connectSip",
            "connectStream",
            "runMenu",
            "park",
        }
    ),
    "ace": frozenset({"hangup", "continue", "connectConf", "runMenu"}),
    "pie": frozenset({"hangup", "continue", "connectPstn", "connectConf", "connectSip", "runMenu"}),
}
LEGAL_INSTRUCTIONS: dict[str, frozenset[str]] = {
    "ice": frozenset(INSTRUCTIONS),
    "ace": frozenset({"playFiles", "say", "setCookie", "startRecording", "stopRecording"}),
    "pie": frozenset(
        {"playFiles", "say", "sendDtmf", "setCookie", "startRecording", "stopRecording"}
    ),
}


# --------------------------------------------------------------------------- the answer


@dataclass(frozen=True)
class Svaml:
    """One SVAML answer: exactly one action and any number of instructions."""

    action: Action
    instructions: tuple[Instruction, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.action, Action) or type(self.action) is Action:
            raise SvamlError("action", "must be one SVAML action")
        object.__setattr__(self, "instructions", tuple(self.instructions))
        for i, ins in enumerate(self.instructions):
            if not isinstance(ins, Instruction) or type(ins) is Instruction:
                raise SvamlError(f"instructions[{i}]", "must be an SVAML instruction")
        cookies = sum(i.size for i in self.instructions if isinstance(i, SetCookie))
        if cookies > MAX_COOKIE_BYTES:
            raise SvamlError(
                "instructions", f"cookies total {cookies} bytes, limit {MAX_COOKIE_BYTES}"
            )

    def validate_for(self, event: str) -> Svaml:
        """Raise SvamlError unless this answer is legal for ``event`` (ice, ace, pie)."""
        if event not in LEGAL_ACTIONS:
            raise SvamlError("event", f"{event!r} takes no SVAML answer")
        if self.action.name not in LEGAL_ACTIONS[event]:
            raise SvamlError(
                "action", f"{self.action.name!r} is not allowed in an {event.upper()} answer"
            )
        for i, ins in enumerate(self.instructions):
            if ins.name not in LEGAL_INSTRUCTIONS[event]:
                raise SvamlError(
                    f"instructions[{i}]",
                    f"{ins.name!r} is not allowed in an {event.upper()} answer",
                )
            try:
                ins.check_sent()
            except SvamlError as exc:
                raise SvamlError(f"instructions[{i}].{exc.field}", exc.message) from None
        try:
            self.action.check_sent()
        except SvamlError as exc:
            raise SvamlError(f"action.{exc.field}", exc.message) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.instructions:
            out["instructions"] = [i.to_dict() for i in self.instructions]
        out["action"] = self.action.to_dict()
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Svaml:
        if not isinstance(data, dict):
            raise SvamlError("svaml", "must be an object with 'action' and optional 'instructions'")
        unknown = set(data) - {"action", "instructions"}
        if unknown:
            raise SvamlError(sorted(unknown)[0], "unknown field")
        return cls(
            action=_element(ACTIONS, data.get("action"), "action"),  # type: ignore[arg-type]
            instructions=tuple(
                _element(INSTRUCTIONS, item, f"instructions[{i}]")  # type: ignore[misc]
                for i, item in enumerate(_as_list(data.get("instructions", []), "instructions"))
            ),
        )


def dumps(answer: dict[str, Any]) -> str:
    """The canonical JSON text of an answer's ``to_dict()``: compact, UTF-8 as is."""
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False)


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SvamlError(where, "must be a list")
    return value


def _element(table: Mapping[str, type[Node]], data: Any, where: str) -> Node:
    if not isinstance(data, dict) or "name" not in data:
        raise SvamlError(where, "must be an object with a 'name'")
    kind = table.get(data["name"])
    if kind is None:
        raise SvamlError(f"{where}.name", f"unknown name {data['name']!r}")
    return kind.from_dict(data, where)
