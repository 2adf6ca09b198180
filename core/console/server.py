"""The console's listener: a waitress server of its own, in a thread of its own.

It has its own socket map, its own few worker threads and its own address
(``admin.console``), so the console's requests never take a thread, a connection slot
or a place in the queue of the callbacks' listener, and a proxy that exposes the
callback URL never exposes it. ``start()`` binds (a port that is taken stops the
server's start, naming the address), ``stop(grace)`` stops accepting, lets requests
already received finish within ``grace`` seconds, then closes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from core.console.app import Console
from core.console.health import Host

log = logging.getLogger("switchboard.console")

THREADS = 4  # console requests served at once
MAX_BODY = 1 << 16  # forms are small
MAX_HEADERS = 16384


class ConsoleError(Exception):
    """The console cannot start (its address is taken, ...): a message for the operator."""


class ConsoleServer:
    def __init__(self, host: Host, address: tuple[str, int]) -> None:
        self.console = Console(host)
        self.host_name, self.port = address
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._grace = 0.0
        self._done = threading.Event()

    @property
    def url(self) -> str:
        host = self.host_name
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> None:
        import waitress

        self.console.prepare()  # the audit table, the plugins' pages: fail early
        try:
            self._server = waitress.create_server(
                self.console.wsgi(),
                host=self.host_name,
                port=self.port,
                threads=THREADS,
                ident="switchboard-console",
                max_request_body_size=MAX_BODY,
                max_request_header_size=MAX_HEADERS,
                # X-Forwarded-Proto reaches the app: it only ever adds Secure to the cookie
                clear_untrusted_proxy_headers=False,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            where = f"[{self.host_name}]:{self.port}" if ":" in self.host_name else (
                f"{self.host_name}:{self.port}"
            )
            raise ConsoleError(
                f"admin.console: cannot listen on {where}: {reason[:1].lower()}{reason[1:]}"
            ) from None
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._run, name="switchboard-console", daemon=True)
        self._thread.start()
        log.info("operator console listening on %s", self.url)

    def _run(self) -> None:
        server = self._server
        loop = server.asyncore.loop
        try:
            while not self._stop.is_set():
                loop(timeout=0.2, map=server._map, count=1, use_poll=True)
            server.accepting = False
            server.del_channel()
            server.socket.close()
            end = time.monotonic() + self._grace
            while self._busy() and time.monotonic() < end:
                loop(timeout=0.05, map=server._map, count=1, use_poll=True)
        except Exception:
            log.exception("operator console: the listener failed")
        finally:
            self._done.set()

    def _busy(self) -> bool:
        from waitress.channel import HTTPChannel

        return any(
            ch.requests or ch.total_outbufs_len or ch.request is not None
            for ch in list(self._server._map.values())
            if isinstance(ch, HTTPChannel)
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; finish the requests received within ``grace`` seconds."""
        if self._server is None:
            return
        self._grace = grace
        self._stop.set()
        self._done.wait(grace + 1.0)
        self._server.task_dispatcher.shutdown(timeout=1)
        for channel in list(self._server._map.values()):
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - closing what is left, as waitress does
                pass
        self._server = None
        log.info("operator console stopped")
