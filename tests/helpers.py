"""Shared test helpers: settings, runtimes, signed requests and test plugins."""

from __future__ import annotations

import json
import threading
import uuid
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import webtest

from core import config as config_mod
from core.app import make_app
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.runtime import Runtime
from core.signing import Credential, format_timestamp, sign_headers
from core.store import SqliteStore, Store, open_store

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "conformance" / "sinch-vectors.json").read_text())
KEY = "669E367E-6BBA-48AB-AF15-266871C28135"
SECRET = "BeIukql3pTKJ8RGL5zo0DA=="
CREDENTIAL = Credential(KEY, SECRET)
PATH = "/sinch/callback"

# The store backend the current test runs on; the ``backend`` fixture switches it.
# On PostgreSQL every scratch store is a schema of its own, dropped after the test.
BACKEND: dict[str, Any] = {"name": "sqlite", "url": "", "schemas": {}}


def _pg_schema(name: str) -> str:
    import psycopg

    schemas = BACKEND["schemas"]
    if name not in schemas:
        schema = f"sbtest_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(BACKEND["url"], autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        schemas[name] = schema
    sep = "&" if "?" in BACKEND["url"] else "?"
    return f"{BACKEND['url']}{sep}options=-csearch_path%3D{schemas[name]}"


def new_store() -> Store:
    """A scratch store on the current backend."""
    if BACKEND["name"] == "postgres":
        return open_store(_pg_schema(uuid.uuid4().hex), pool_size=8)
    return SqliteStore(":memory:")


def store_url(tmp: Path, name: str) -> str:
    """``store.url`` for a server config on the current backend; the same name gives
    the same store, so several servers can share one."""
    return _pg_schema(name) if BACKEND["name"] == "postgres" else f"sqlite:///{tmp / name}.db"


def settings(**sections: Any) -> config_mod.Settings:
    """Settings from TOML-like sections; the test key is configured unless overridden."""
    data: dict[str, Any] = {"sinch": {"keys": [{"key": KEY, "secret": SECRET}]}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_mod.parse(data, None, env={})


def runtime(given: Mapping[str, object] | None = None, **sections: Any) -> Runtime:
    """A runtime with exactly the ``given`` plugins (in that order) and a scratch store.

    ``sections`` are config.toml tables; ``plugins={"name": {...}}`` configures plugins.
    """
    given = dict(given or {})
    sections["plugins"] = {"enabled": list(given), **sections.get("plugins", {})}
    store = new_store()
    try:
        return Runtime.build(settings(**sections), given=given, load_entrypoints=False, store=store)
    except BaseException:
        store.close()  # refused configurations must not leave connections behind
        raise


def webapp(rt: Runtime) -> webtest.TestApp:
    return webtest.TestApp(make_app(rt))


def body_of(event: dict[str, Any] | bytes) -> bytes:
    return event if isinstance(event, bytes) else json.dumps(event, separators=(",", ":")).encode()


def signed(
    event: dict[str, Any] | bytes,
    *,
    path: str = PATH,
    credential: Credential = CREDENTIAL,
    timestamp: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = body_of(event)
    ts = timestamp or format_timestamp(datetime.now(UTC))
    return body, sign_headers(credential, "POST", path, body, timestamp=ts)


def post(
    app: webtest.TestApp, event: dict[str, Any] | bytes, *, status: int | str = 200, **kw: Any
) -> Any:
    body, headers = signed(event, **kw)
    return app.post(PATH, body, headers=headers, status=status)


_counter = iter(range(1, 10**9))


def ice(
    callid: str | None = None, to: str = "+15612600684", cli: str = "12015555555", **extra: Any
) -> dict[str, Any]:
    return {
        "event": "ice",
        "callid": callid or f"call-{next(_counter)}",
        "timestamp": "2024-06-06T17:20:14Z",
        "version": 1,
        "userRate": {"currencyId": "USD", "amount": 0.0},
        "cli": cli,
        "to": {"type": "number", "endpoint": to},
        "domain": "pstn",
        "applicationKey": KEY,
        "originationType": "PSTN",
        "rdnis": "",
        **extra,
    }


def ace(callid: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "ace",
        "callid": callid,
        "timestamp": "2024-06-06T17:20:20Z",
        "version": 1,
        **extra,
    }


def pie(callid: str, value: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "event": "pie",
        "callid": callid,
        "timestamp": "2024-06-06T17:20:30Z",
        "version": 1,
        "menuResult": {"type": "sequence", "value": value, "menuId": "main", "inputMethod": "dtmf"},
        **extra,
    }


def dice(callid: str, duration: int = 42, **extra: Any) -> dict[str, Any]:
    return {
        "event": "dice",
        "callid": callid,
        "timestamp": "2024-06-06T17:21:14Z",
        "version": 1,
        "reason": "CALLERHANGUP",
        "result": "ANSWERED",
        "debit": {"currencyId": "USD", "amount": 0.0095},
        "userRate": {"currencyId": "USD", "amount": 0.0095},
        "to": {"type": "number", "endpoint": "15612600684"},
        "duration": duration,
        "from": "12015555555",
        **extra,
    }


def notify(callid: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": "notify",
        "callid": callid,
        "version": 1,
        "type": "recording_finished",
        "destination": "azure://rec/x.mp3",
        **extra,
    }


def table_counts(store: Store) -> dict[str, int]:
    return {n: store.query(f"SELECT COUNT(*) FROM {n}")[0][0] for n in store.tables()}  # noqa: S608


# ------------------------------------------------------------------------ test plugins


class Fixed:
    """Returns the same decision for the given events."""

    def __init__(self, decision: Decision | None, events: tuple[str, ...] = ("ice",)) -> None:
        self.decision = decision
        self.events = events
        self.calls: list[str] = []

    def _answer(self, name: str) -> Decision | None:
        self.calls.append(name)
        return self.decision if name in self.events else None

    @hookimpl
    def switchboard_ice(self, event: Any) -> Decision | None:
        return self._answer("ice")

    @hookimpl
    def switchboard_ace(self, event: Any) -> Decision | None:
        return self._answer("ace")

    @hookimpl
    def switchboard_pie(self, event: Any) -> Decision | None:
        return self._answer("pie")


class Raising:
    @hookimpl
    def switchboard_ice(self, event: Any) -> Decision | None:
        raise RuntimeError("database exploded")


class Hanging:
    """Blocks until released (or 30 s), like a plugin stuck on a dead network call."""

    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def switchboard_ice(self, event: Any) -> Decision | None:
        self.release.wait(30)
        return Decision.denied("too late")


class Recorder:
    """Records every hook call with its thread-safe order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def _note(self, hook: str, callid: str) -> None:
        with self.lock:
            self.seen.append((hook, callid))

    @hookimpl
    def switchboard_ice(self, event: Any, ctx: Any) -> None:
        self._note("ice", event.callid)

    @hookimpl
    def switchboard_ace(self, event: Any, ctx: Any) -> None:
        self._note("ace", event.callid)

    @hookimpl
    def switchboard_pie(self, event: Any, ctx: Any) -> None:
        self._note("pie", event.callid)

    @hookimpl
    def switchboard_dice(self, event: Any, ctx: Any) -> None:
        self._note("dice", event.callid)

    @hookimpl
    def switchboard_notify(self, event: Any, ctx: Any) -> None:
        self._note("notify", event.callid)

    @hookimpl
    def switchboard_after_answer(self, event: Any, answer: Any, trace: Any) -> None:
        self._note(f"after_answer:{event.name}", event.callid)


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
