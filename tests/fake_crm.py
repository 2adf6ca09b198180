"""A real local HTTP server standing in for a CRM webhook (tests only)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeCrm:
    """Fails the first ``fail_first`` deliveries (HTTP 503), then accepts.

    Every accepted delivery is checked: its signature must verify with ``secret``.
    ``received`` lists the accepted records' call ids in order (duplicates included).
    """

    def __init__(self, secret: str, fail_first: int = 0, delay: float = 0.0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.delay = delay
        self.attempts = 0
        self.received: list[str] = []
        self.payloads: dict[str, Any] = {}
        self.bad_signatures = 0
        self.lock = threading.Lock()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if crm.delay:
                    time.sleep(crm.delay)
                with crm.lock:
                    crm.attempts += 1
                    failing = crm.attempts <= crm.fail_first
                    stamp = self.headers.get("X-Switchboard-Timestamp", "")
                    expected = (
                        "v1="
                        + hmac.new(
                            crm.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256
                        ).hexdigest()
                    )
                    valid = hmac.compare_digest(
                        expected, self.headers.get("X-Switchboard-Signature", "")
                    )
                    if not valid:
                        crm.bad_signatures += 1
                    elif not failing:
                        key = self.headers["Idempotency-Key"]
                        crm.received.append(key)
                        crm.payloads[key] = json.loads(body)
                status = 401 if not valid else 503 if failing else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/calls"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeCrm:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
