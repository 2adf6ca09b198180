"""The bottle app factory: HTTP in front of the callback pipeline.

``make_app(runtime)`` returns an explicit ``bottle.Bottle`` with:

* ``POST <server.callback_path>``: Sinch callbacks. ICE/ACE/PIE get SVAML JSON;
  DiCE and Notify get ``200`` with an empty body.
* ``GET /healthz``: liveness (the process answers).
* ``GET /readyz``: readiness: 503 while the store cannot take a write (unreachable,
  disk full, read-only, or its latest write failed) or migrations are pending;
  answered within ``READY_TIMEOUT`` seconds even when the store hangs.
* ``GET /metrics``: Prometheus metrics.
* ``GET /admin/trace/<callid>``: the recorded decision traces of a call, for a request
  bearing ``Authorization: Bearer <admin.token>``; with no token configured the
  endpoint does not exist (404).

Errors are short JSON objects ``{"error": ..., "field": ...}`` that name the problem
and never a secret, quoting at most a short excerpt of any input
(``core.events.excerpt``): 401 bad, missing or stale signature; 400 bad body; 413 body
over ``server.max_body_bytes``; 415 content type not JSON; 405 wrong method; 404
elsewhere.
Checks run cheapest first (size, content type, signature, body), so nothing is parsed
or stored for a request that fails one.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import bottle
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.events import excerpt
from core.pipeline import error_body
from core.runtime import Runtime

log = logging.getLogger("switchboard.app")

_JSON_TYPES = ("application/json",)
READY_TIMEOUT = 1.0  # seconds /readyz waits for the store before it answers 503


def _json_error(status: int, message: str, field_name: str | None = None) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=error_body(message, field_name),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    raw_length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if raw_length:
        try:
            length = int(raw_length)
        except ValueError:
            raise _json_error(400, "Content-Length is not a number") from None
        if length > limit:
            raise _json_error(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
        body: bytes = stream.read(length) if length > 0 else b""
        return body
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise _json_error(413, f"body exceeds the limit of {limit} bytes")
    return body


class _ThenRun:
    """A response body that runs ``after`` when the server closes it: by then the
    server has written the body to the client (waitress writes each chunk as it is
    produced), so the after-answer observers never delay the answer."""

    def __init__(self, body: bytes, after: Callable[[], None], runtime: Runtime) -> None:
        self.body, self.after, self.runtime = body, after, runtime
        bottle.response.content_length = len(body)  # an iterable gets none of its own

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    def close(self) -> None:
        try:
            self.after()
        except Exception:
            log.exception("after-answer observers failed")
        finally:  # the callback counts as in flight until its observers are done
            self.runtime.leave()


class ReadinessProbe:
    """Checks that the store takes writes, in one helper thread at a time.

    ``check(timeout)`` starts a probe unless one is running already, and waits for it at
    most ``timeout`` seconds: a hung store holds up one helper thread, never one per
    request, and every caller has its answer within the bound. Returns why the runtime
    is not ready, or ``None``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._running: tuple[threading.Event, list[str | None]] | None = None

    def check(self, timeout: float) -> str | None:
        with self._lock:
            if self._running is None:
                self._running = (threading.Event(), [])
                threading.Thread(
                    target=self._run,
                    args=(self._running, timeout * 0.75),  # the store's own give-up comes first
                    name="switchboard-readyz",
                    daemon=True,
                ).start()
            done, result = self._running
        if not done.wait(timeout):
            return f"store did not answer within {timeout:g} s"
        return result[0]

    def _run(self, running: tuple[threading.Event, list[str | None]], timeout: float) -> None:
        done, result = running
        try:
            result.append(self._probe(timeout))
        except Exception as exc:  # not a write fault the store recognised: still not ready
            result.append(f"store unreachable ({type(exc).__name__})")
        finally:
            with self._lock:
                self._running = None
            done.set()

    def _probe(self, timeout: float) -> str | None:
        store = self.runtime.store
        try:
            store.probe_write(timeout)
        except Exception as exc:
            fault = store.write_fault()
            if fault is None:
                raise
            log.warning("readyz: store cannot take writes: %s (%s)", fault, type(exc).__name__)
            return f"store cannot take writes: {fault}"
        fault = store.write_fault()
        if fault is not None:
            return f"store cannot take writes: {fault}"
        pending = self.runtime.pending_migrations()
        if pending:
            owners = ", ".join(f"{owner} {versions}" for owner, versions in pending.items())
            return f"migrations pending: {owners}"
        return None


RECEIVED_HEADER = "X_SWITCHBOARD_RECEIVED"  # as waitress's parser names it
"""Set by ``serve.py``'s waitress parser when a request has been read in full: the
``time.monotonic()`` of that moment, so the budget counts the wait for a free thread."""


def _received(environ: Mapping[str, Any]) -> float | None:
    raw = environ.get("HTTP_" + RECEIVED_HEADER)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def trace_view(row: dict[str, Any]) -> dict[str, Any]:
    """One recorded callback as shown to operators (CLI and admin endpoint)."""
    return {
        "event": row["event"],
        "state": row["state"],
        "outcome": row["outcome"],
        "answer": json.loads(row["answer"]) if row["answer"] else None,
        "trace": json.loads(row["trace"]) if row["trace"] else None,
    }


def make_app(runtime: Runtime) -> bottle.Bottle:
    """Build the WSGI app for ``runtime``, without side effects: starting the runtime
    (migrations, the plugins' start-up hooks, background workers) is the runner's job,
    done before (``runtime.start()``)."""
    pipeline = runtime.pipeline
    if pipeline is None:
        raise RuntimeError(
            "make_app needs a started runtime: call runtime.start() first (it applies the "
            "migrations and runs the plugins' start-up hooks)"
        )
    settings = runtime.settings
    limit = settings.server["max_body_bytes"]
    app = bottle.Bottle(catchall=True)
    app.config["json.enable"] = False
    app.config["switchboard.runtime"] = runtime

    @app.post(settings.server["callback_path"])
    def callback() -> Any:
        runtime.enter()
        handed_over = False  # to the body, which leaves once its observers are done
        try:
            environ = bottle.request.environ
            try:
                body = _read_body(environ, limit)
            except bottle.HTTPResponse as refused:
                pipeline.count_reject(refused.status_code)
                return refused
            content_type = environ.get("CONTENT_TYPE", "")
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in _JSON_TYPES:
                shown = excerpt(media) if media else "none"
                pipeline.count_reject(415)
                return _json_error(415, f"Content-Type must be application/json, got {shown}")
            headers = {
                "authorization": environ.get("HTTP_AUTHORIZATION", ""),
                "x-timestamp": environ.get("HTTP_X_TIMESTAMP", ""),
                "content-type": content_type,
            }
            result = pipeline.handle("POST", headers, body, received=_received(environ))
            bottle.response.status = result.status
            if result.body:
                bottle.response.content_type = "application/json"
            if result.after is None:
                return result.body
            if not result.body:  # waitress sends nothing before the iterable is closed
                pipeline.in_background(result.after)
                return result.body
            body_then = _ThenRun(result.body.encode(), result.after, runtime)
            handed_over = True
            return body_then
        finally:
            if not handed_over:
                runtime.leave()

    @app.get("/healthz")
    def healthz() -> Any:
        bottle.response.content_type = "application/json"
        return json.dumps({"status": "ok"})

    readiness = ReadinessProbe(runtime)

    @app.get("/readyz")
    def readyz() -> Any:
        reason = readiness.check(READY_TIMEOUT)
        if reason is not None:
            return _json_error(503, reason)
        bottle.response.content_type = "application/json"
        return json.dumps({"status": "ready"})

    @app.get("/metrics")
    def metrics() -> Any:
        bottle.response.content_type = CONTENT_TYPE_LATEST
        return generate_latest(runtime.metrics.registry)

    token = settings.admin["token"]
    if token:
        expected = f"Bearer {token}".encode()

        @app.get("/admin/trace/<callid>")
        def admin_trace(callid: str) -> Any:
            given = bottle.request.get_header("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _json_error(401, "admin endpoints need Authorization: Bearer <admin.token>")
            rows = runtime.store.traces(callid)
            if not rows:
                return _json_error(404, f"no callbacks recorded for call {excerpt(callid)}")
            bottle.response.content_type = "application/json"
            return json.dumps({"callid": callid, "callbacks": [trace_view(r) for r in rows]})

    def _error(err: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json"
        if err.status_code == 405:
            method = excerpt(bottle.request.method)
            return error_body(f"method {method} not allowed; callbacks are POSTed")
        if err.status_code == 404:
            return error_body(f"no such path: {excerpt(bottle.request.path)}")
        if err.exception is not None:
            log.error("unhandled error on %s", bottle.request.path, exc_info=err.exception)
        return error_body("internal error")

    for code in (404, 405, 500):
        app.error(code)(_error)
    return app


def wsgi_post(app: Any, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
    """POST ``body`` to a WSGI ``app``; returns (status, response text)."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for key, value in headers.items():
        if key.lower() != "content-type":
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    status: list[str] = []
    chunks = app(environ, lambda s, h, exc=None: status.append(s))
    try:
        text = b"".join(chunks).decode()
    finally:
        getattr(chunks, "close", lambda: None)()
    return int(status[0].split()[0]), text
