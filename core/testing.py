"""A test kit for plugin authors, shipped as a pytest plugin.

Installed with Switchboard, it is loaded by pytest automatically (entry point
``pytest11``). A plugin package's tests then build a server with exactly the plugins
they name, send signed callbacks, and assert on the answer and the trace::

    from core.testing import ice, dice

    def test_vip_caller_gets_a_direct_line(switchboard):
        sb = switchboard({"vip": VipPlugin()}, plugins={"vip": {"callers": ["+12015555555"]}})
        result = sb.send(ice(cli="12015555555"))
        assert result.action == "connectPstn"
        assert result.decided_by == ["vip"]
        assert result.plugin("vip")["decision"]["reason"] == "VIP caller"

Fixtures:

* ``switchboard``: a factory ``switchboard(plugins, **config_sections)`` returning a
  ``Harness``. ``plugins`` (positional) maps names to plugin objects, in precedence order;
  ``config_sections`` are config.toml tables (``plugins={"vip": {...}}``,
  ``policy={"budget": 0.5}``...; ``plugins={"shadow": ["vip"]}`` runs the plugins it
  names in shadow, the others stay enabled). The store is a private in-memory SQLite
  database.
  Every harness is closed after the test. ``Harness.send(event)`` returns a ``Result``.

Builders: ``ice()``, ``ace()``, ``pie()``, ``dice()``, ``notify()`` make realistic
callback bodies. Numbers and money are taken in the shapes Sinch sends as well as
plain: ``ice(to="+46701234567")`` or ``ice(to={"type": "did", "endpoint": "+46..."})``,
``dice(debit="0.02", currency="EUR")`` or ``dice(debit={"currencyId": "EUR",
"amount": 0.02})``; any other keyword sets a body field by Sinch's name, last.
``encode()`` makes the body bytes, ``signed()`` the headers Sinch would send with them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from core import config as config_mod
from core.app import make_app, wsgi_post
from core.runtime import Runtime
from core.signing import Credential, format_timestamp, sign_headers
from core.store import SqliteStore

TEST_KEY = "669E367E-6BBA-48AB-AF15-266871C28135"
TEST_SECRET = "BeIukql3pTKJ8RGL5zo0DA=="  # Sinch's published example secret, for tests only
CALLBACK_PATH = "/sinch/callback"


# ------------------------------------------------------------------ callback bodies

Endpoint = str | Mapping[str, Any]
"""A number as a builder takes it: ``"+46701234567"`` or Sinch's object
``{"type": "number", "endpoint": "+46701234567"}``."""
Amount = int | float | str | Decimal | Mapping[str, Any]
"""Money as a builder takes it: an amount (``0.0095``, ``"0.0095"``, ``Decimal``) in
``currency``, or Sinch's object ``{"currencyId": "EUR", "amount": 0.0095}``."""


def _base(event: str, callid: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "event": event,
        "callid": callid or str(uuid.uuid4()),
        "timestamp": now,
        "version": 1,
        "applicationKey": TEST_KEY,
    }
    return body | dict(fields)


def destination(value: Endpoint, kind: str = "number") -> dict[str, Any]:
    """Sinch's ``{type, endpoint}`` object (``to``): a mapping is taken as it is, a
    number string becomes ``{"type": kind, "endpoint": value}``."""
    if isinstance(value, Mapping):
        return dict(value)
    return {"type": kind, "endpoint": value}


def number(value: Endpoint) -> str:
    """A number as Sinch sends ``cli`` and ``from`` (plain strings): a string is taken
    as it is (with or without ``+``), an endpoint object as its ``endpoint``."""
    if isinstance(value, Mapping):
        return str(value["endpoint"])
    return value


def money(value: Amount, currency: str = "USD") -> dict[str, Any]:
    """Sinch's ``{currencyId, amount}`` object: a mapping is taken as it is, an amount
    is put in ``currency`` (as a JSON number)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str | Decimal):
        value = float(Decimal(value))
    return {"currencyId": currency, "amount": value}


def _headers(value: Mapping[str, str] | Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    if isinstance(value, Mapping):
        return [{"key": k, "value": v} for k, v in value.items()]
    return [dict(item) for item in value]


def ice(
    callid: str | None = None,
    *,
    to: Endpoint = "+15612600684",
    cli: Endpoint = "12015555555",
    user_rate: Amount = 0.0,
    currency: str = "USD",
    call_headers: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An Incoming Call Event, shaped like Sinch's (numbers may come without '+').

    ``to`` is the dialled number or Sinch's ``{"type": ..., "endpoint": ...}`` (type
    ``did`` for one of the application's own numbers); ``cli`` the caller's number;
    ``user_rate`` an amount in ``currency`` or Sinch's money object; ``call_headers`` a
    mapping or Sinch's ``[{"key": ..., "value": ...}]``. ``fields`` set any body field
    by Sinch's name, last (``rdnis="..."``, ``callResourceUrl=...``).
    """
    callid = callid or str(uuid.uuid4())
    body: dict[str, Any] = {
        "callResourceUrl": f"https://calling-use1.api.sinch.com/calling/v1/calls/id/{callid}",
        "userRate": money(user_rate, currency),
        "cli": number(cli),
        "to": destination(to),
        "domain": "pstn",
        "originationType": "PSTN",
        "rdnis": "",
    }
    if call_headers is not None:
        body["callHeaders"] = _headers(call_headers)
    return _base("ice", callid, body | fields)


def ace(callid: str | None = None, **fields: Any) -> dict[str, Any]:
    """An Answered Call Event (``amd={"status": "human", ...}`` for AMD results)."""
    return _base("ace", callid, fields)


def pie(
    callid: str | None = None,
    value: str = "1",
    *,
    menu: str = "main",
    kind: str = "sequence",
    method: str = "dtmf",
    **fields: Any,
) -> dict[str, Any]:
    """A Prompt Input Event from a runMenu: ``menuResult`` from ``value`` (the digits or
    the ``return(x)`` value), ``menu`` (menuId), ``kind`` (type: sequence, return,
    timeout...) and ``method`` (inputMethod); or pass ``menuResult={...}`` whole."""
    return _base(
        "pie",
        callid,
        {
            "menuResult": {"type": kind, "value": value, "menuId": menu, "inputMethod": method},
            **fields,
        },
    )


def dice(
    callid: str | None = None,
    *,
    duration: int = 42,
    result: str = "ANSWERED",
    reason: str = "CALLERHANGUP",
    debit: Amount = 0.0095,
    user_rate: Amount = 0.0095,
    currency: str = "USD",
    to: Endpoint = "15612600684",
    from_: Endpoint = "12015555555",
    **fields: Any,
) -> dict[str, Any]:
    """A Disconnected Call Event. ``debit`` and ``user_rate`` are amounts in
    ``currency`` or Sinch's money objects; ``to`` as for ``ice``; ``from_`` the caller
    (Sinch's ``from``)."""
    return _base(
        "dice",
        callid,
        {
            "reason": reason,
            "result": result,
            "debit": money(debit, currency),
            "userRate": money(user_rate, currency),
            "to": destination(to),
            "duration": duration,
            "from": number(from_),
            **fields,
        },
    )


def notify(callid: str | None = None, **fields: Any) -> dict[str, Any]:
    """A Notify event (by default a finished recording)."""
    return _base(
        "notify",
        callid,
        {"type": "recording_finished", "destination": "azure://rec/x.mp3", **fields},
    )


def encode(event: Mapping[str, Any] | bytes) -> bytes:
    """A body as Sinch sends it: compact JSON (bytes are taken as they are)."""
    if isinstance(event, bytes):
        return event
    return json.dumps(event, separators=(",", ":")).encode()


def signed(
    body: bytes,
    *,
    key: str = TEST_KEY,
    secret: str = TEST_SECRET,
    path: str = CALLBACK_PATH,
    timestamp: str | None = None,
) -> dict[str, str]:
    """The headers Sinch sends with ``body``: Content-Type, x-timestamp, Authorization
    (``timestamp``: the x-timestamp to sign with, by default now)."""
    return sign_headers(
        Credential(key, secret),
        "POST",
        path,
        body,
        timestamp=timestamp or format_timestamp(datetime.now(UTC)),
    )


# ------------------------------------------------------------------ the harness


@dataclass
class Result:
    """What ``Harness.send`` returns: one callback's HTTP status, answer and trace.

    ``status`` is the HTTP status (200, or 400/401/413/415/503 with ``error`` saying
    why), ``body`` the response text, ``trace`` the decision trace the core recorded for
    this event (``{}`` for a refused callback; a DiCE's or Notify's has rule ``observed``).
    The properties below read them.
    """

    status: int
    body: str
    trace: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> dict[str, Any] | None:
        """The SVAML answer (None for DiCE, Notify and errors)."""
        return json.loads(self.body) if self.body and self.status == 200 else None

    @property
    def action(self) -> str | None:
        """The answer's action name, e.g. ``"hangup"``."""
        return self.answer["action"]["name"] if self.answer else None

    @property
    def instructions(self) -> list[dict[str, Any]]:
        """The answer's instructions (``[]`` when none)."""
        return list((self.answer or {}).get("instructions", []))

    @property
    def rule(self) -> str | None:
        """The merge rule that settled the answer (``deny``, ``proposal``, ...)."""
        return self.trace.get("rule")

    @property
    def decided_by(self) -> list[str]:
        """The plugins whose decisions settled the answer, in precedence order."""
        return list(self.trace.get("decided_by", []))

    @property
    def error(self) -> str | None:
        """Why the callback was refused (status other than 200), else None."""
        return json.loads(self.body)["error"] if self.status != 200 and self.body else None

    def plugin(self, name: str) -> dict[str, Any]:
        """The trace entry of plugin ``name``: status, ms, decision or error."""
        for entry in self.trace.get("plugins", []):
            if entry["plugin"] == name:
                return dict(entry)
        raise AssertionError(f"plugin {name!r} is not in the trace: {self.trace.get('plugins')}")


class Harness:
    """A Switchboard app with exactly the given plugins, driven in-process."""

    def __init__(self, plugins: Mapping[str, object], sections: Mapping[str, Any]) -> None:
        data: dict[str, Any] = {"sinch": {"keys": [{"key": TEST_KEY, "secret": TEST_SECRET}]}}
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values}
        shadow = data.get("plugins", {}).get("shadow", [])  # the others are enabled
        enabled = [name for name in plugins if name not in shadow]
        data["plugins"] = {"enabled": enabled, **data.get("plugins", {})}
        settings = config_mod.parse(data, None, env={})
        self.runtime = Runtime.build(
            settings, given=dict(plugins), load_entrypoints=False, store=SqliteStore(":memory:")
        )
        self.runtime.start()
        self.app = make_app(self.runtime)
        self.store = self.runtime.store

    def send(
        self, event: Mapping[str, Any] | bytes, *, headers: Mapping[str, str] | None = None
    ) -> Result:
        """POST one callback, signed as Sinch would unless ``headers`` are given (then
        exactly those are sent); wait for its after-answer observers."""
        body = encode(event)
        status, text = wsgi_post(
            self.app, CALLBACK_PATH, signed(body) if headers is None else headers, body
        )
        assert self.runtime.pipeline is not None
        self.runtime.pipeline.wait_idle()
        trace: dict[str, Any] = {}
        if status == 200:
            callid = json.loads(body)["callid"]
            name = json.loads(body)["event"].lower()
            rows = [r for r in self.store.traces(callid) if r["event"] == name and r["trace"]]
            if rows:
                trace = json.loads(rows[-1]["trace"])
        return Result(status, text, trace)

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def switchboard() -> Iterator[Any]:
    """Factory: ``switchboard(plugins, **config_sections) -> Harness``."""
    made: list[Harness] = []

    def make(given: Mapping[str, object] | None = None, /, **sections: Any) -> Harness:
        harness = Harness(given or {}, sections)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
