"""Running the server: waitress serving a runtime's app until a signal stops it.

``serve(runtime, ...)`` pins the process to a CPU, listens, records where it listens
(``listen_file``, for ``simulate``), serves, reloads the configuration on SIGHUP,
and on SIGTERM or SIGINT finishes what it accepted within ``server.shutdown_grace``
before the runtime is closed. ``Signals`` is created before the slow start-up work, so
a SIGHUP that arrives meanwhile is a reload once the server runs, not the end of it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from core.config import console_address, load
from core.logs import Sparse
from core.runtime import Runtime

log = logging.getLogger("switchboard")
MAX_HEADER_BYTES = 16384  # request line and headers together (waitress's default: 256 kB)
QUEUE_WARNING_INTERVAL = 10.0  # seconds between waitress's "Task queue depth" warnings
FRESH_CONNECTION_WAIT = 1.0  # seconds a drained connection may take to show its request
CONSOLE_GRACE = 5.0  # seconds the console's requests may take to finish at shutdown


class ServerError(Exception):
    """The server cannot start: a message for the operator (the port is taken, ...)."""


# ---------------------------------------------------------------------------- the app


class Switch:
    """The WSGI app waitress serves: forwards to the current runtime's app, so that a
    reload swaps it between two requests while requests in flight finish on the old one."""

    def __init__(self, runtime: Runtime) -> None:
        from core.app import make_app

        self.runtime = runtime
        runtime.start()
        self.app = make_app(runtime)
        self.retired: list[Runtime] = []
        self.loaded_at = time.time()  # of the running configuration (shown by the console)
        self.refused: tuple[float, str] | None = None  # the last reload refused since

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

    def reload(self, config_path: str) -> bool:
        """Validate the configuration completely and switch to it; on any error keep
        the running one. Returns whether it switched."""
        from core.app import make_app

        old = self.runtime
        try:
            settings = load(config_path)
            fixed = ("host", "port", "threads")
            changed = [k for k in fixed if settings.server[k] != old.settings.server[k]]
            same_store = settings.store["url"] == old.settings.store["url"]
            runtime = Runtime.build(settings, store=old.store if same_store else None)
            try:
                runtime.start(how="reload")
                app = make_app(runtime)
            except Exception:
                runtime.close(close_store=not same_store)
                raise
        except Exception as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self.refused = (time.time(), str(exc))
            return False
        if settings.admin["console"] != old.settings.admin["console"]:
            changed.append("admin.console")
        if changed:
            log.warning(
                "reload: %s changes need a restart; the rest applies now",
                ", ".join(k if "." in k else f"server.{k}" for k in changed),
            )
        self.runtime, self.app = runtime, app
        self.loaded_at, self.refused = time.time(), None
        old.retire(close_store=not same_store)
        self.retired.append(old)
        log.info("reloaded %s: plugins %s", config_path, _loaded(runtime))
        return True

    @property
    def inflight(self) -> int:
        return self.runtime.inflight + sum(r.inflight for r in self.retired)


def _loaded(runtime: Runtime) -> str:
    """The plugins a runtime runs, as the log says it: ``a, b; in shadow: c``."""
    plugins = runtime.plugins
    shadow = f"; in shadow: {', '.join(plugins.shadow)}" if plugins.shadow else ""
    return (", ".join(plugins.order) or "none") + shadow


# ---------------------------------------------------------------------------- signals


class Signals:
    """The signals a server acts on, recorded for its loop.

    Created at the start of ``serve``, before settings, plugins and the store are
    loaded: a SIGHUP from then on (whose default action ends the process) is kept and
    reloads the configuration as soon as the server runs. SIGTERM and SIGINT keep their
    default actions until ``serving()``; from then on they stop the server cleanly."""

    def __init__(self) -> None:
        self.reloads: list[int] = []
        self.stopping: list[int] = []
        signal.signal(signal.SIGHUP, self._record(self.reloads))

    def serving(self) -> None:
        signal.signal(signal.SIGTERM, self._record(self.stopping))
        signal.signal(signal.SIGINT, self._record(self.stopping))

    @staticmethod
    def _record(into: list[int]) -> Any:
        def handler(signum: int, _frame: FrameType | None) -> None:
            into.append(signum)

        return handler


# ---------------------------------------------------------------------------- where it listens


def url_of(host: str, port: int, path: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def listen_file(config_path: str | os.PathLike[str]) -> Path:
    """Where a server started on this configuration file records its URL while it
    runs: ``config.toml.listen`` beside ``config.toml``."""
    config = Path(config_path).resolve()
    return config.with_name(config.name + ".listen")


def _record_listening(path: Path, url: str) -> None:
    try:
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
        os.replace(partial, path)
    except OSError as exc:
        log.warning("cannot record the listening address in %s: %s", path, exc.strerror or exc)


def _forget_listening(path: Path) -> None:
    """Remove the file if it is still this process's (another server on the same
    configuration file may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def listening(config_path: str | os.PathLike[str]) -> str | None:
    """The URL a running server on this configuration file listens on, or ``None``
    (none runs, or it died without removing its file)."""
    try:
        found = json.loads(listen_file(config_path).read_text())
        url, pid = found["url"], int(found["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return str(url)


# ---------------------------------------------------------------------------- the process


def pin_cpu(setting: str) -> int | None:
    """Keep the process on one CPU (see ``server.cpu_affinity``); returns the CPU or None."""
    if setting == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        if len(allowed) < 2:
            return None
        cpu = allowed[os.getpid() % len(allowed)]  # instances on one machine spread out
    else:
        cpu = int(setting)
        if cpu not in allowed:
            raise ServerError(
                f"server.cpu_affinity: CPU {cpu} is not available (allowed: {allowed})"
            )
    os.sched_setaffinity(0, {cpu})
    return cpu


def exit_past_hung_hooks(code: int) -> None:
    """A hook still running after shutdown (a plugin stuck on a dead network call) would
    keep the interpreter from exiting, since it waits for worker threads: leave now."""
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("switchboard-hook") and t.is_alive()
    ]
    if stuck:
        log.warning("exiting with %d plugin hook(s) still running", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)


# ---------------------------------------------------------------------------- waitress


def _accept_backlog(server: Any) -> int:
    """Accept every connection waiting in the listen backlog; returns how many.

    The kernel completes TCP handshakes on its own and queues them until the server
    calls accept(); waitress accepts one per loop pass and none at all past its
    ``connection_limit`` (100 open channels), so under load hundreds of clients have
    connected and sent their request without waitress knowing. Closing the listening
    socket resets every one of them. Taking them all in first (the limit guards file
    descriptors in normal running, the backlog bounds what is added here) lets the
    drain answer them like the rest."""
    poller = select.poll()
    poller.register(server.socket.fileno(), select.POLLIN)
    taken = 0
    while poller.poll(0):
        before = len(server._map)
        server.handle_accept()  # waitress's own accept: a channel per connection
        if len(server._map) == before:  # nothing accepted: aborted, or out of descriptors
            break
        taken += 1
    return taken


def _draining(server: Any, switch: Switch, elapsed: float) -> bool:
    """Whether an accepted connection still waits for its answer.

    Counts callbacks in the app, requests waitress has read but not yet handed to a
    thread (its task queue), answers not yet flushed, requests partly read, and, for
    ``FRESH_CONNECTION_WAIT`` seconds, connections that have not sent a byte yet: one
    accepted from the backlog has its request in the socket buffer, read on the next
    loop pass; past that wait such a connection is an idle one and is closed."""
    from waitress.channel import HTTPChannel

    if switch.inflight:
        return True
    for ch in list(server._map.values()):
        if not isinstance(ch, HTTPChannel):
            continue
        if ch.requests or ch.total_outbufs_len or ch.request is not None:
            return True
        if ch.last_activity == ch.creation_time and elapsed < FRESH_CONNECTION_WAIT:
            return True  # accepted, nothing read yet
    return False


def _channel_class() -> type:
    """waitress's connection class, with two changes:

    * each request carries the moment it was read in full (``core.app.RECEIVED_HEADER``,
      overwriting any the client sent): a callback that waited in waitress's queue for a
      free thread has that much less of its budget left;
    * the errors waitress answers itself, before the app runs (413, 400, 431, 501), keep
      their status but get the app's short JSON body ``{"error": ...}`` instead of a
      text quoting the offending input whole.

    Both go through waitress's channel internals (``parser_class``,
    ``error_task_class``), stable since waitress 1.x; pyproject pins waitress < 4."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.task import ErrorTask

    from core.app import RECEIVED_HEADER
    from core.pipeline import error_body

    class StampedParser(HTTPRequestParser):
        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            if self.completed:
                self.headers[RECEIVED_HEADER] = repr(time.monotonic())
            return consumed

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            body = error_body(f"{error.reason}: {error.body}").encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        parser_class = StampedParser
        error_task_class = JsonErrorTask

    return Channel


def _listen(switch: Switch, host: str, port: int) -> Any:
    """waitress's server, bound; a failure to bind is one line naming the address."""
    import waitress

    server_cfg = switch.runtime.settings.server
    try:
        server = waitress.create_server(
            switch,
            host=host,
            port=port,
            threads=server_cfg["threads"],
            # the app answers 413 as JSON up to this size; beyond it waitress refuses the
            # body itself, so an oversized request never fills memory
            max_request_body_size=max(server_cfg["max_body_bytes"] * 4, 1 << 20),
            # waitress quotes a malformed header line in full in its 400: this bounds that
            # echo (Sinch's headers are a few hundred bytes); larger headers get a 431
            max_request_header_size=MAX_HEADER_BYTES,
            ident="switchboard",
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ServerError(f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}") from None
    server.channel_class = _channel_class()  # for the connections accepted from now on
    return server


def _console(switch: Switch) -> Any:
    """The operator console's own listener, started, when ``admin.console`` is set."""
    address = switch.runtime.settings.admin["console"]
    if not address:
        return None
    from core.console.server import ConsoleError, ConsoleServer

    console = ConsoleServer(switch, console_address(address))
    try:
        console.start()
    except ConsoleError as exc:
        raise ServerError(str(exc)) from None
    return console


def serve(
    runtime: Runtime,
    config_path: str,
    signals: Signals,
    *,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """Serve ``runtime`` until SIGTERM or SIGINT; ``host`` and ``port`` override the
    settings. Closes the runtime (and every one a reload retired) before returning 0."""
    server_cfg = runtime.settings.server
    try:
        cpu = pin_cpu(server_cfg["cpu_affinity"])
        if cpu is not None:
            log.info(
                "running on CPU %d (server.cpu_affinity = %s)", cpu, server_cfg["cpu_affinity"]
            )
        host = host or server_cfg["host"]
        port = server_cfg["port"] if port is None else port
        switch = Switch(runtime)
        logging.getLogger("waitress.queue").addFilter(Sparse(QUEUE_WARNING_INTERVAL))
        server = _listen(switch, host, port)
        try:
            console = _console(switch)
        except BaseException:
            server.close()
            raise
    except BaseException:
        runtime.close()
        raise
    signals.serving()
    url = url_of(host, server.effective_port, server_cfg["callback_path"])
    where = listen_file(config_path)
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    _record_listening(where, url_of(loopback, server.effective_port, server_cfg["callback_path"]))
    print(f"switchboard listening on {url} (plugins: {_loaded(runtime)})", flush=True)
    if console is not None:
        print(f"switchboard console on {console.url}", flush=True)
    loop = server.asyncore.loop
    try:
        while not signals.stopping:
            if signals.reloads:
                signals.reloads.clear()
                log.info("SIGHUP: reloading %s", config_path)
                switch.reload(config_path)
            loop(timeout=0.2, map=server._map, count=1, use_poll=True)
            for old in [r for r in switch.retired if r.inflight == 0]:
                old.close_retired()
                switch.retired.remove(old)
        log.info(
            "signal %s: no new connections; finishing in-flight callbacks", signals.stopping[0]
        )
        server.accepting = False
        taken = _accept_backlog(server)
        server.del_channel()
        server.socket.close()
        if taken:
            log.info("accepted %d connection(s) that were waiting in the listen backlog", taken)
        began = time.monotonic()
        grace_end = began + server_cfg["shutdown_grace"]
        while _draining(server, switch, time.monotonic() - began) and time.monotonic() < grace_end:
            loop(timeout=0.05, map=server._map, count=1, use_poll=True)
        if _draining(server, switch, time.monotonic() - began):
            log.warning(
                "shutdown grace of %s s passed with callbacks in flight",
                server_cfg["shutdown_grace"],
            )
    finally:
        server.task_dispatcher.shutdown(timeout=1)
        if console is not None:
            console.stop(min(server_cfg["shutdown_grace"], CONSOLE_GRACE))
        for old in switch.retired:
            old.close_retired()
        switch.runtime.close()
        _forget_listening(where)
        log.info("stopped")
    return 0
