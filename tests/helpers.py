"""Shared test helpers: settings, runtimes, store backends, signed requests, test plugins.

Callback bodies come from the test kit the project ships (``core.testing``), so the
suite builds events exactly as plugin authors' tests do.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import webtest

from core import config as config_mod
from core.app import make_app
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.runtime import Runtime
from core.signing import Credential
from core.store import SqliteStore, Store, open_store
from core.testing import CALLBACK_PATH as PATH
from core.testing import TEST_KEY as KEY
from core.testing import TEST_SECRET as SECRET
from core.testing import ace as ace  # the kit's builders, re-exported for the suite
from core.testing import dice as dice
from core.testing import encode
from core.testing import ice as ice
from core.testing import notify as notify
from core.testing import pie as pie
from core.testing import signed as signed_headers

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "conformance" / "sinch-vectors.json").read_text())
CREDENTIAL = Credential(KEY, SECRET)


class Backend:
    """The store backend a test runs on; the ``backend`` fixture (tests/conftest.py)
    gives each test its own, and closes it after the test.

    ``name`` is ``"sqlite"`` or ``"postgres"``. On PostgreSQL (``url`` names the
    server) every store is a schema of its own, dropped by ``close()``.
    """

    def __init__(self, name: str = "sqlite", url: str = "") -> None:
        if name not in ("sqlite", "postgres") or (name == "postgres") != bool(url):
            raise ValueError(f"backend {name!r} with url {url!r}")
        self.name = name
        self._base = url
        self._schemas: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def _schema_url(self, name: str) -> str:
        import psycopg

        if name not in self._schemas:
            schema = f"sbtest_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self._base, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            self._schemas[name] = schema
        sep = "&" if "?" in self._base else "?"
        return f"{self._base}{sep}options=-csearch_path%3D{self._schemas[name]}"

    def store(self) -> Store:
        """A scratch store of its own."""
        if self.name == "postgres":
            return open_store(self._schema_url(uuid.uuid4().hex), pool_size=8)
        return SqliteStore(":memory:")

    def url(self, tmp: Path, name: str) -> str:
        """``store.url`` for a server config; the same name gives the same store, so
        several servers can share one."""
        if self.name == "postgres":
            return self._schema_url(name)
        return f"sqlite:///{tmp / name}.db"

    def runtime(self, given: Mapping[str, object] | None = None, /, **sections: Any) -> Runtime:
        """A runtime with exactly the ``given`` plugins (in that order) on a scratch
        store of this backend; ``sections`` are config.toml tables, as for ``runtime``."""
        return _build(self.store(), given, sections)

    def close(self) -> None:
        """Drop every PostgreSQL schema this backend made."""
        schemas, self._schemas = list(self._schemas.values()), {}
        if not schemas:
            return
        import psycopg

        with psycopg.connect(self._base, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def settings(**sections: Any) -> config_mod.Settings:
    """Settings from TOML-like sections; the test key is configured unless overridden."""
    data: dict[str, Any] = {"sinch": {"keys": [{"key": KEY, "secret": SECRET}]}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_mod.parse(data, None, env={})


def runtime(given: Mapping[str, object] | None = None, /, **sections: Any) -> Runtime:
    """A runtime with exactly the ``given`` plugins (in that order) and a private
    in-memory SQLite store. Tests that run on both backends use ``backend.runtime``.

    ``sections`` are config.toml tables; ``plugins={"name": {...}}`` configures plugins,
    and ``plugins={"shadow": [...]}`` runs those in shadow (the others are enabled).
    """
    return _build(SqliteStore(":memory:"), given, sections)


def _build(store: Store, given: Mapping[str, object] | None, sections: dict[str, Any]) -> Runtime:
    given = dict(given or {})
    shadow = sections.get("plugins", {}).get("shadow", [])  # the others are enabled
    enabled = [name for name in given if name not in shadow]
    sections["plugins"] = {"enabled": enabled, **sections.get("plugins", {})}
    try:
        return Runtime.build(settings(**sections), given=given, load_entrypoints=False, store=store)
    except BaseException:
        store.close()  # refused configurations must not leave connections behind
        raise


def webapp(rt: Runtime) -> webtest.TestApp:
    """The app of ``rt``, started first (as the server does)."""
    rt.start()
    return webtest.TestApp(make_app(rt))


body_of = encode


def signed(
    event: Mapping[str, Any] | bytes,
    *,
    path: str = PATH,
    credential: Credential = CREDENTIAL,
    timestamp: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and the headers Sinch would send (the kit's ``encode`` and ``signed``)."""
    body = encode(event)
    headers = signed_headers(
        body, key=credential.key, secret=credential.secret, path=path, timestamp=timestamp
    )
    return body, headers


def post(
    app: webtest.TestApp, event: Mapping[str, Any] | bytes, *, status: int | str = 200, **kw: Any
) -> Any:
    body, headers = signed(event, **kw)
    return app.post(PATH, body, headers=headers, status=status)


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
