"""Simulated callbacks: a realistic, signed Sinch callback sent to a server.

``simulate`` sends it to the running server (``--url``; ``--port``; else the address
a server on the same configuration file recorded, ``core.server.listening``; else
``server.host``/``server.port`` of the configuration), or answers it with an
in-process app and a scratch store (``--in-process``), and prints the answer and the
decision trace.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.cli.context import CliError
from core.cli.report import print_answer, print_traces
from core.config import ConfigError, Settings
from core.runtime import Runtime
from core.server import listening, url_of
from core.signing import format_timestamp, sign_headers
from core.store import SqliteStore, StoreError, open_store, redact_url

EVENTS = ("ice", "ace", "pie", "dice", "notify")


@dataclass(frozen=True)
class Call:
    """What the simulated callback says about its call."""

    callid: str | None = None
    to: str = "+15612600684"
    cli: str = "+12015555555"
    duration: int = 42
    digits: str = "1"
    currency: str = "USD"


def build_event(name: str, call: Call, application_key: str | None) -> dict[str, Any]:
    """A realistic callback body, shaped like Sinch's (SINCH.md section 2)."""
    callid = call.callid or str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base: dict[str, Any] = {"event": name, "callid": callid, "timestamp": now, "version": 1}
    if application_key:
        base["applicationKey"] = application_key
    to = {"type": "number", "endpoint": call.to}
    money = {"currencyId": call.currency, "amount": 0.0}
    if name == "ice":
        base.update(
            callResourceUrl=f"https://calling-use1.api.sinch.com/calling/v1/calls/id/{callid}",
            userRate=money,
            cli=call.cli.lstrip("+"),
            to=to,
            domain="pstn",
            originationType="PSTN",
            rdnis="",
        )
    elif name == "pie":
        base["menuResult"] = {
            "type": "sequence",
            "value": call.digits,
            "menuId": "main",
            "inputMethod": "dtmf",
        }
    elif name == "dice":
        base.update(
            reason="CALLERHANGUP",
            result="ANSWERED",
            debit=money,
            userRate=money,
            to={"type": "number", "endpoint": call.to.lstrip("+")},
            duration=call.duration,
            **{"from": call.cli.lstrip("+")},
        )
    elif name == "notify":
        base.update(
            type="recording_finished", destination="azure://switchboard/recordings/simulated.mp3"
        )
    return base


def target(settings: Settings, config_path: str, url: str | None, port: int | None) -> str:
    """The callback URL to send to: ``url``; the configured host on ``port``; where a
    server started on this configuration file listens; the configured address."""
    server = settings.server
    if url:
        return url
    if port is not None:
        return url_of(server["host"], port, server["callback_path"])
    return listening(config_path) or url_of(server["host"], server["port"], server["callback_path"])


def simulate(
    settings: Settings,
    event: str,
    call: Call,
    *,
    url: str,
    in_process: bool = False,
    use_store: bool = False,
) -> int:
    """Send one signed ``event`` and print it, the answer and the trace; returns 0 if
    it was answered 200."""
    key = settings.credentials[0] if settings.credentials else None
    body = json.dumps(
        build_event(event, call, key.key if key else None), separators=(",", ":")
    ).encode()
    server = settings.server
    signed_path = server["public_path_prefix"] + server["callback_path"]
    headers = (
        sign_headers(key, "POST", signed_path, body, timestamp=format_timestamp(datetime.now(UTC)))
        if key
        else {"Content-Type": "application/json; charset=utf-8"}
    )
    callid = json.loads(body)["callid"]
    print(f"> {event.upper()} call {callid}")
    print("> " + body.decode())
    if in_process:
        from core.app import make_app, wsgi_post

        runtime = Runtime.build(settings, store=None if use_store else SqliteStore(":memory:"))
        try:
            runtime.start(serving=False)  # one callback: no background workers
            status, text = wsgi_post(make_app(runtime), server["callback_path"], headers, body)
            print_answer(status, text)
            print_traces(runtime.store, callid)
        finally:
            runtime.close()
        return 0 if status == 200 else 1
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            status, text = exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(
            f"no server answered at {url} ({reason}); start it with 'switchboard serve' "
            "or use --in-process"
        ) from None
    print_answer(status, text)
    try:  # the server records the trace in the store this config names
        store = open_store(settings.store["url"], settings.base_dir, pool_size=2)
    except (StoreError, ConfigError):
        return 0 if status == 200 else 1
    try:
        if not print_traces(store, callid):
            print(
                f"(no trace of call {callid} in {redact_url(settings.store['url'])}: "
                "the server uses another store)"
            )
    finally:
        store.close()
    return 0 if status == 200 else 1
