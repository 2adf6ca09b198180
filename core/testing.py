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
  ``policy={"budget": 0.5}``...). The store is a private SQLite file. Every harness is
  closed after the test.

Builders: ``ice()``, ``ace()``, ``pie()``, ``dice()``, ``notify()`` make realistic
callback bodies (override any field with keyword arguments); ``signed()`` signs a body
as Sinch would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def ice(
    callid: str | None = None, *, to: str = "+15612600684", cli: str = "12015555555", **fields: Any
) -> dict:
    """An Incoming Call Event, shaped like Sinch's (numbers may come without '+')."""
    return _base(
        "ice",
        callid,
        {
            "callResourceUrl": "https://calling-use1.api.sinch.com/calling/v1/calls/id/x",
            "userRate": {"currencyId": "USD", "amount": 0.0},
            "cli": cli,
            "to": {"type": "number", "endpoint": to},
            "domain": "pstn",
            "originationType": "PSTN",
            "rdnis": "",
            **fields,
        },
    )


def ace(callid: str | None = None, **fields: Any) -> dict:
    """An Answered Call Event."""
    return _base("ace", callid, fields)


def pie(
    callid: str | None = None,
    *,
    value: str = "1",
    menu: str = "main",
    kind: str = "sequence",
    **fields: Any,
) -> dict:
    """A Prompt Input Event from a runMenu."""
    return _base(
        "pie",
        callid,
        {
            "menuResult": {"type": kind, "value": value, "menuId": menu, "inputMethod": "dtmf"},
            **fields,
        },
    )


def dice(
    callid: str | None = None, *, duration: int = 42, result: str = "ANSWERED", **fields: Any
) -> dict:
    """A Disconnected Call Event."""
    return _base(
        "dice",
        callid,
        {
            "reason": "CALLERHANGUP",
            "result": result,
            "debit": {"currencyId": "USD", "amount": 0.01},
            "userRate": {"currencyId": "USD", "amount": 0.01},
            "to": {"type": "number", "endpoint": "15612600684"},
            "duration": duration,
            "from": "12015555555",
            **fields,
        },
    )


def notify(callid: str | None = None, **fields: Any) -> dict:
    """A Notify event."""
    return _base(
        "notify",
        callid,
        {"type": "recording_finished", "destination": "azure://rec/x.mp3", **fields},
    )


def signed(
    body: bytes, *, key: str = TEST_KEY, secret: str = TEST_SECRET, path: str = CALLBACK_PATH
) -> dict:
    """The headers Sinch sends with ``body``: Content-Type, x-timestamp, Authorization."""
    return sign_headers(
        Credential(key, secret), "POST", path, body, timestamp=format_timestamp(datetime.now(UTC))
    )


# ------------------------------------------------------------------ the harness


@dataclass
class Result:
    """One callback's HTTP status, answer and decision trace."""

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
        return list((self.answer or {}).get("instructions", []))

    @property
    def rule(self) -> str | None:
        """The merge rule that settled the answer (``deny``, ``proposal``, ...)."""
        return self.trace.get("rule")

    @property
    def decided_by(self) -> list[str]:
        return list(self.trace.get("decided_by", []))

    @property
    def error(self) -> str | None:
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
        data["plugins"] = {"enabled": list(plugins), **data.get("plugins", {})}
        settings = config_mod.parse(data, None, env={})
        self.runtime = Runtime.build(
            settings, given=dict(plugins), load_entrypoints=False, store=SqliteStore(":memory:")
        )
        self.app = make_app(self.runtime)
        self.store = self.runtime.store

    def send(
        self, event: Mapping[str, Any] | bytes, *, headers: Mapping[str, str] | None = None
    ) -> Result:
        """Sign and POST one callback; wait for its after-answer observers."""
        body = (
            event if isinstance(event, bytes) else json.dumps(event, separators=(",", ":")).encode()
        )
        status, text = wsgi_post(self.app, CALLBACK_PATH, headers or signed(body), body)
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
