"""crm's webhook: one signed POST of a call record to the CRM.

The body is the record as JSON, sent with an ``Idempotency-Key`` (the call id) and an
HMAC signature header: ``X-Switchboard-Signature: v1=<hex HMAC-SHA256(secret,
timestamp + "." + body)>``, with ``X-Switchboard-Timestamp``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return (
        "v1="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


def post(url: str, secret: str, timeout: float, callid: str, body: bytes) -> str | None:
    """POST one record; None on success, else a short error (never the secret)."""
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": callid,
            "X-Switchboard-Timestamp": timestamp,
            "X-Switchboard-Signature": sign(secret, timestamp, body),
            "User-Agent": "switchboard-crm",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            resp.read()
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        with exc:
            return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
