"""Sinch callback request signing (SINCH.md section 4).

``Authorization: application <key>:<base64(HMAC-SHA256(b64decode(secret), StringToSign))>``
with ``StringToSign = METHOD\\nbase64(md5(body))\\nContent-Type\\nx-timestamp:<value>\\n<path>``.

The same module verifies incoming callbacks and signs requests for the tests and the
simulator. Nothing here ever puts a secret or a signature into an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

SCHEME = "application"


class SignatureError(Exception):
    """A callback failed verification. ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Credential:
    """One application key and its secret (base64, as shown in the Sinch dashboard)."""

    key: str
    secret: str = field(repr=False)

    def secret_bytes(self) -> bytes:
        return decode_secret(self.secret)

    def __repr__(self) -> str:  # never show the secret
        return f"Credential(key={self.key!r}, secret=<redacted>)"


def decode_secret(secret: str) -> bytes:
    """Decode a base64 application secret; tolerates missing padding and the URL-safe
    alphabet (as Node's decoder does)."""
    text = secret.strip()
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("application secret is not valid base64") from None


def content_md5(body: bytes) -> str:
    """Base64 MD5 of the raw body; the empty string for an empty body."""
    if not body:
        return ""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def string_to_sign(method: str, body: bytes, content_type: str, timestamp: str, path: str) -> str:
    return "\n".join(
        [method.upper(), content_md5(body), content_type, "x-timestamp:" + timestamp, path]
    )


def compute_signature(secret: bytes, to_sign: str) -> str:
    digest = hmac.digest(secret, to_sign.encode("utf-8"), "sha256")  # OpenSSL's one-shot
    return base64.b64encode(digest).decode("ascii")


def sign_headers(
    credential: Credential,
    method: str,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/json; charset=utf-8",
    timestamp: str | None = None,
) -> dict[str, str]:
    """The headers Sinch would send with this request, for tests and the simulator."""
    if timestamp is None:
        timestamp = format_timestamp(datetime.now(UTC))
    sig = compute_signature(
        credential.secret_bytes(), string_to_sign(method, body, content_type, timestamp, path)
    )
    return {
        "Content-Type": content_type,
        "x-timestamp": timestamp,
        "Authorization": f"{SCHEME} {credential.key}:{sig}",
    }


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with 7 fractional digits, as Sinch's .NET stack writes it."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an x-timestamp value (``Z`` or offset, up to 7 fractional digits)."""
    text = value.strip()
    # datetime.fromisoformat accepts at most 6 fractional digits: drop the 7th and beyond.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = head + ("." + digits[:6] if digits else "") + rest
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


class Verifier:
    """Checks the ``application`` signature of a callback request.

    ``credentials``: every accepted key/secret pair (several at once during rotation).
    ``window``: accepted clock skew of ``x-timestamp`` in seconds either way; ``None`` or 0
    disables the freshness check (for replaying historic vectors).
    ``clock``: returns the current time (injectable for tests).
    """

    def __init__(
        self,
        credentials: Iterable[Credential],
        *,
        window: float | None = 300,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._by_key: dict[str, list[bytes]] = {}
        for cred in credentials:
            self._by_key.setdefault(cred.key, []).append(cred.secret_bytes())
        if not self._by_key:
            raise ValueError("signature verification needs at least one application key")
        self.window = window or None
        self.clock = clock or (lambda: datetime.now(UTC))

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """Return the application key that signed the request, or raise SignatureError."""
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization")
        if not auth:
            raise SignatureError("missing", "missing Authorization header")
        scheme, sep, credential = auth.partition(" ")
        if not sep or scheme.lower() != SCHEME:
            raise SignatureError("scheme", "Authorization scheme must be 'application'")
        key, sep, signature = credential.partition(":")
        if not sep or not key or not signature:
            raise SignatureError(
                "malformed", "Authorization must be 'application <key>:<signature>'"
            )
        secrets = self._by_key.get(key)
        if secrets is None:
            raise SignatureError("unknown-key", "unknown application key")
        timestamp = lower.get("x-timestamp")
        if not timestamp:
            raise SignatureError("missing-timestamp", "missing x-timestamp header")
        if self.window is not None:
            try:
                sent = parse_timestamp(timestamp)
            except ValueError:
                raise SignatureError(
                    "bad-timestamp", "x-timestamp is not an ISO-8601 time"
                ) from None
            skew = abs((self.clock() - sent).total_seconds())
            if skew > self.window:
                raise SignatureError(
                    "stale", f"x-timestamp is outside the accepted window of {self.window:g} s"
                )
        to_sign = string_to_sign(method, body, lower.get("content-type", ""), timestamp, path)
        given = signature.encode("ascii", "replace")
        ok = False
        for secret in secrets:  # check every secret: no early exit that leaks which one
            expected = compute_signature(secret, to_sign).encode("ascii")
            ok |= hmac.compare_digest(expected, given)
        if not ok:
            raise SignatureError("mismatch", "signature does not match")
        return key
