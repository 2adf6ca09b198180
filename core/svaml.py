"""SVAML: the answer Sinch obeys (SINCH.md section 3).

Typed, immutable actions and instructions: frozen ``msgspec.Struct`` types like the
events (``core.wire``), an action or instruction tagged on the wire by its ``name``.
Each checks its own fields and limits when built (``SvamlError`` names the field);
``Svaml.validate_for(event)`` applies the per-event legality table of SINCH.md 3.2 and
the rules Sinch states for an element as sent (``Node.check_sent``: a ``#tts[...]``
prompt needs a locale, a recording needs somewhere to go), so that an answer breaking
them is never sent. ``to_dict()`` and ``to_json()`` emit the canonical camelCase wire
form with no null fields (msgspec writes it); ``Svaml.from_dict`` reads it back (used
for the configured fallback answers and by tests).
"""

from __future__ import annotations

import re
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar, Union

import msgspec

from core import wire
from core.events import is_e164

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


def _kind_label(kind: Any) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean"}.get(
        kind, f"a {getattr(kind, '__name__', kind)} object"
    )


_SPECS: dict[type, tuple[tuple[str, str, Any, bool], ...]] = {}


def _specs(cls: type[Node]) -> tuple[tuple[str, str, Any, bool], ...]:
    """(python name, wire name, element type, is-list) of every field of ``cls``;
    computed once per class, since every answer builds several elements."""
    specs = _SPECS.get(cls)
    if specs is None:
        fields = msgspec.structs.fields(cls)
        specs = _SPECS[cls] = tuple((f.name, f.encode_name, *_unwrap(f.type)) for f in fields)
    return specs


class Node(
    msgspec.Struct,
    frozen=True,
    rename="camel",
    omit_defaults=True,
    forbid_unknown_fields=True,
):
    """Base of every SVAML element: a frozen msgspec struct (``core.wire``), camelCase on
    the wire with no null field. msgspec checks the types of what it reads; ``__post_init__``
    checks those of an element built in Python, then its rules (``check``)."""

    aliases: ClassVar[dict[str, str]] = {}  # extra accepted wire key -> wire key
    required: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for attr, wire_name, kind, many in _specs(type(self)):
            value = getattr(self, attr)
            if value is None:
                if attr in self.required:
                    raise SvamlError(wire_name, "is required")
                continue
            if many:
                if isinstance(value, list):
                    value = tuple(value)
                    msgspec.structs.force_setattr(self, attr, value)
                if not isinstance(value, tuple) or not all(_type_ok(v, kind) for v in value):
                    raise SvamlError(
                        wire_name, f"must be a list of {getattr(kind, '__name__', kind)}"
                    )
            elif not _type_ok(value, kind):
                raise SvamlError(wire_name, f"must be {_kind_label(kind)}")
        self.check()

    def check(self) -> None:
        """Field rules beyond types; raise SvamlError."""

    def check_sent(self) -> None:
        """Rules Sinch states for this element in an answer (a field required together
        with another, a value it needs to act on), beyond what ``check`` enforces when it
        is built. ``Svaml.validate_for`` calls it: an answer that breaks one is never
        sent (the pipeline sends the fallback, rule ``invalid-answer``)."""

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (python names), checked like a new element."""
        fields = {name: getattr(self, name) for name in self.__struct_fields__}
        return type(self)(**{**fields, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The wire form as JSON-like values (lists, not tuples)."""
        return _JSON.decode(_JSON_OUT.encode(self))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Read the wire form (``to_dict``'s); SvamlError names the field at fault."""
        return _read(cls, _aliased(cls, data))


def _aliased(kind: type[Node], data: Any) -> Any:
    """``data`` with the wire keys ``kind`` also accepts under another name renamed."""
    if kind.aliases and isinstance(data, dict) and not data.keys().isdisjoint(kind.aliases):
        return {kind.aliases.get(k, k): v for k, v in data.items()}
    return data


_T = TypeVar("_T")
_JSON = msgspec.json.Decoder()
_JSON_OUT = msgspec.json.Encoder()
_ELEMENT = re.compile(r"action|instructions\[\d+\]")


def _read(kind: type[_T], data: Any) -> _T:
    """``msgspec.convert`` with its errors as SvamlErrors naming the field."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise _error(exc) from None


def _error(exc: msgspec.ValidationError) -> SvamlError:
    message, path = wire.split(exc)
    cause = exc.__cause__
    if isinstance(cause, SvamlError):  # a rule of __post_init__, at the element's path
        return SvamlError(wire.join(path, cause.field), cause.message)
    field = wire.unknown(message)
    if field is not None:
        return SvamlError(wire.join(path, field), "unknown field")
    field = wire.missing(message)
    if field is not None:
        if field == "name":
            return SvamlError(path or "name", "must be an object with a 'name'")
        return SvamlError(wire.join(path, field), "is required")
    if message.startswith("Invalid value "):  # a name no action or instruction has
        return SvamlError(path, f"unknown name {message.removeprefix('Invalid value ')}")
    kind = wire.expected(message)
    if kind == "object" and _ELEMENT.fullmatch(path):
        return SvamlError(path, "must be an object with a 'name'")
    if kind == "array":
        return SvamlError(path, "must be a list")
    if kind is None:  # pragma: no cover - msgspec says no more than the above here
        return SvamlError(path or "svaml", message)
    return SvamlError(path or "svaml", f"must be {wire.LABELS[kind]}")


def _check_max_duration(value: int | None, limit: int = MAX_DURATION) -> None:
    if value is not None and not 1 <= value <= limit:
        raise SvamlError("maxDuration", f"must be between 1 and {limit} seconds, got {value}")


def _check_cli(value: str | None) -> None:
    if value is not None and value != "private" and not is_e164(value):
        raise SvamlError("cli", f"must be an E.164 number with '+' or 'private', got {value!r}")


def _check_dtmf(field: str, value: str | None) -> None:
    if value is not None and not _DTMF.match(value):
        raise SvamlError(field, "may contain only 0-9, '#' and 'w'")


def _check_endpoint_type(dest: Endpoint | None, expected: str) -> None:
    if dest is not None and (dest.type or "").lower() != expected.lower():
        raise SvamlError("destination.type", f"must be {expected!r}")


# --------------------------------------------------------------------------- shared parts


class Endpoint(Node, frozen=True):
    type: str | None = None
    endpoint: str | None = None
    required: ClassVar[tuple[str, ...]] = ("endpoint",)


class Header(Node, frozen=True):
    key: str | None = None
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("key", "value")

    def check(self) -> None:
        if len(f"{self.key}{self.value}".encode()) > MAX_HEADER_BYTES:
            raise SvamlError("callHeaders", f"a key/value pair exceeds {MAX_HEADER_BYTES} bytes")


class AmdOptions(Node, frozen=True):
    enabled: bool | None = None
    async_: bool | None = msgspec.field(default=None, name="async")


class ConferenceDtmfOptions(Node, frozen=True):
    mode: str | None = None
    max_digits: int | None = None
    timeout_mills: int | None = None

    def check(self) -> None:
        if self.mode is not None and self.mode not in ("ignore", "forward", "detect"):
            raise SvamlError("conferenceDtmfOptions.mode", "must be ignore, forward or detect")
        for value, name in ((self.max_digits, "maxDigits"), (self.timeout_mills, "timeoutMills")):
            if value is not None and value < 0:
                raise SvamlError(f"conferenceDtmfOptions.{name}", "must not be negative")


class StreamingOptions(Node, frozen=True):
    version: int | None = None
    sample_rate: int | None = None


class MenuOption(Node, frozen=True):
    dtmf: str | None = None
    action: str | None = None
    required: ClassVar[tuple[str, ...]] = ("dtmf", "action")

    def check(self) -> None:
        if not _MENU_ACTION.match(self.action or ""):
            raise SvamlError(
                "options.action", f"must be menu(<id>) or return(<value>), got {self.action!r}"
            )


class Menu(Node, frozen=True):
    id: str | None = None
    main_prompt: str | None = None
    repeat_prompt: str | None = None
    repeats: int | None = None
    max_digits: int | None = None
    timeout_mills: int | None = None
    max_timeout_mills: int | None = None
    options: tuple[MenuOption, ...] | None = None
    required: ClassVar[tuple[str, ...]] = ("id",)


class TranscriptionOptions(Node, frozen=True):
    enabled: bool | None = None
    locale: str | None = None


class RecordingOptions(Node, frozen=True):
    destination_url: str | None = None
    credentials: str | None = None
    format: str | None = None
    notification_events: bool | None = None
    transcription_options: TranscriptionOptions | None = None


# --------------------------------------------------------------------------- actions


def _tag(class_name: str) -> str:
    """The wire ``name`` of an action or instruction: its class name, lower-case first."""
    return class_name[:1].lower() + class_name[1:]


class Action(Node, frozen=True, tag_field="name", tag=_tag):
    name: ClassVar[str] = ""

    @property
    def caps_duration(self) -> bool:
        """Whether this action carries a ``maxDuration``."""
        return "max_duration" in self.__struct_fields__

    @property
    def duration_limit(self) -> int:
        return MAX_DURATION


class Hangup(Action, frozen=True):
    name: ClassVar[str] = "hangup"


class Continue(Action, frozen=True):
    name: ClassVar[str] = "continue"


class ConnectPstn(Action, frozen=True):
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
        if self.number is not None and not is_e164(self.number):
            raise SvamlError("number", f"must be an E.164 number with '+', got {self.number!r}")
        _check_max_duration(self.max_duration)
        if self.dial_timeout is not None and self.dial_timeout < 1:
            raise SvamlError("dialTimeout", "must be at least 1 second")
        _check_cli(self.cli)
        _check_dtmf("dtmf", self.dtmf)
        if self.indications is not None and self.indications not in INDICATIONS:
            raise SvamlError("indications", f"unknown ring-tone country {self.indications!r}")


class ConnectMxp(Action, frozen=True):
    name: ClassVar[str] = "connectMxp"
    destination: Endpoint | None = None
    call_headers: tuple[Header, ...] | None = None
    aliases: ClassVar[dict[str, str]] = {"callheaders": "callHeaders"}  # OAS spelling

    def check(self) -> None:
        _check_endpoint_type(self.destination, "username")


class ConnectConf(Action, frozen=True):
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


class ConnectSip(Action, frozen=True):
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


class ConnectStream(Action, frozen=True):
    name: ClassVar[str] = "connectStream"
    destination: Endpoint | None = None
    streaming_options: StreamingOptions | None = None
    max_duration: int | None = None
    call_headers: tuple[Header, ...] | None = None
    required: ClassVar[tuple[str, ...]] = ("destination",)

    def check(self) -> None:
        _check_endpoint_type(self.destination, "websocket")
        _check_max_duration(self.max_duration)


class RunMenu(Action, frozen=True):
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


class Park(Action, frozen=True):
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


class Instruction(Node, frozen=True, tag_field="name", tag=_tag):
    name: ClassVar[str] = ""


class PlayFiles(Instruction, frozen=True):
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


class Say(Instruction, frozen=True):
    name: ClassVar[str] = "say"
    text: str | None = None
    locale: str | None = None
    required: ClassVar[tuple[str, ...]] = ("text",)

    def check(self) -> None:
        if not self.text or len(self.text) > MAX_SAY_CHARS:
            raise SvamlError("text", f"must be 1 to {MAX_SAY_CHARS} characters")


class SendDtmf(Instruction, frozen=True):
    name: ClassVar[str] = "sendDtmf"
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("value",)

    def check(self) -> None:
        _check_dtmf("value", self.value)


class SetCookie(Instruction, frozen=True):
    name: ClassVar[str] = "setCookie"
    key: str | None = None
    value: str | None = None
    required: ClassVar[tuple[str, ...]] = ("key", "value")

    @property
    def size(self) -> int:
        return len((self.key or "").encode()) + len((self.value or "").encode())


class Answer(Instruction, frozen=True):
    name: ClassVar[str] = "answer"


class StartRecording(Instruction, frozen=True):
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


class StopRecording(Instruction, frozen=True):
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


if TYPE_CHECKING:
    _AnyAction = Action
    _Instructions = tuple[Instruction, ...]
else:  # what msgspec reads: one of them, by name
    _AnyAction = Union[tuple(ACTIONS.values())]
    _Instructions = tuple[Union[tuple(INSTRUCTIONS.values())], ...]


class Svaml(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One SVAML answer: exactly one action and any number of instructions."""

    action: _AnyAction
    instructions: _Instructions = ()

    def __post_init__(self) -> None:
        if not isinstance(self.action, Action) or type(self.action) is Action:
            raise SvamlError("action", "must be one SVAML action")
        if not isinstance(self.instructions, tuple):
            msgspec.structs.force_setattr(self, "instructions", tuple(self.instructions))
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

    def _wire(self) -> dict[str, Any]:
        if self.instructions:
            return {"instructions": self.instructions, "action": self.action}
        return {"action": self.action}

    def to_dict(self) -> dict[str, Any]:
        """The wire form as JSON-like values (lists, not tuples)."""
        return _JSON.decode(_JSON_OUT.encode(self._wire()))

    def to_json(self) -> str:
        return _JSON_OUT.encode(self._wire()).decode()

    @classmethod
    def from_dict(cls, data: Any) -> Svaml:
        """Read the wire form (``to_dict``'s); SvamlError names the field at fault."""
        if not isinstance(data, dict):
            raise SvamlError("svaml", "must be an object with 'action' and optional 'instructions'")
        action = data.get("action")
        name = action.get("name") if isinstance(action, dict) else None
        kind = ACTIONS.get(name) if isinstance(name, str) else None
        if kind is not None and kind.aliases:
            data = {**data, "action": _aliased(kind, action)}
        return _read(cls, data)


def dumps(answer: dict[str, Any]) -> str:
    """The canonical JSON text of an answer's ``to_dict()``: compact, UTF-8 as is."""
    return _JSON_OUT.encode(answer).decode()
