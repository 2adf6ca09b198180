"""Who may use the console: password hashes, logins, sessions, CSRF tokens, a throttle.

* Passwords are hashed with scrypt (``hashlib.scrypt``), salted, in the format
  ``scrypt$N$r$p$<salt>$<hash>`` (base64) that ``switchboard console hash-password``
  prints for ``[[admin.users]]``. The admin token logs in as the operator ``token``.
* Sessions are kept in the store (``core.console.sessions``: a digest of each id, never
  the id), under a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie, so they
  outlive a restart and every server process on the store knows them. One ends after
  ``admin.session_minutes`` without a request, ``SESSION_LIFETIME`` after the login, at
  logout (on any process), or when the token or password hash it logged in with is no
  longer configured (``credential``, checked on every request). Each has its own CSRF
  token.
* The login form, before there is a session, carries a token derived from a random
  nonce in a cookie and a key drawn at each start (``LoginTokens``); it is good for
  ``LOGIN_TOKEN_TTL`` seconds and one login attempt.
* Failed logins are counted per client address, per name and in all: too many within
  ``THROTTLE_WINDOW`` seconds refuse the next ones until the window has passed
  (``Throttle``), whatever name is tried. Every table here is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
TOKEN_ACTOR = "token"  # the operator name of a login with the admin token
THROTTLE_FAILURES = 5  # per client address
THROTTLE_NAME_FAILURES = 10  # per name tried, from any address
THROTTLE_ALL_FAILURES = 100  # in all
THROTTLE_WINDOW = 300.0
THROTTLE_KEYS = 10_000  # addresses and names remembered (the oldest are forgotten)
NAME_LIMIT = 64  # a login name's length
LOGIN_TOKEN_TTL = 600.0
LOGIN_TOKENS = 10_000  # login forms outstanding (the oldest are forgotten)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password`` for ``[[admin.users]] password_hash``."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


_DUMMY = hash_password("no such user", salt=b"\0" * 16)  # same work for unknown names


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by ``hash_password`` (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def authenticate(
    name: str, password: str, token: str | None, users: Iterable[Mapping[str, str]]
) -> str | None:
    """The operator a login form names, or ``None``: an empty ``name`` logs in with the
    admin token, any other a configured user with its password."""
    if not name:
        if token and hmac.compare_digest(password.encode(), token.encode()):
            return TOKEN_ACTOR
        verify_password(password, _DUMMY)  # answer no faster than a user's login
        return None
    found = next((u for u in users if u.get("name") == name), None)
    stored = found["password_hash"] if found is not None else _DUMMY
    if verify_password(password, stored) and found is not None:
        return name
    return None


# ---------------------------------------------------------------------------- sessions


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def credential(
    user: str, by_token: bool, token: str | None, users: Iterable[Mapping[str, str]]
) -> str | None:
    """What a session of ``user`` rests on in these settings: a digest of the admin
    token (a login with the token), or the user's name and a digest of their password
    hash; ``None`` when that credential is no longer configured. A session whose
    credential differs from the current one (the token rotated, the user removed or
    given a new password, then a reload) has ended."""
    if by_token:
        return "token " + _digest(token) if token else None
    found = next((u for u in users if u.get("name") == user), None)
    if found is None or not found.get("password_hash"):
        return None
    return f"user {_digest(found['password_hash'])} {user}"


@dataclass
class Session:
    sid: str
    user: str
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) to show next
    credential: str = ""  # see ``credential``: what this session was logged in with

    @property
    def by_token(self) -> bool:
        return self.credential.startswith("token ")

    def still_valid(self, token: str | None, users: Iterable[Mapping[str, str]]) -> bool:
        """Whether the credential this session logged in with is still configured."""
        now = credential(self.user, self.by_token, token, users)
        return now is not None and hmac.compare_digest(now.encode(), self.credential.encode())


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())


class LoginTokens:
    """CSRF tokens for the login form, before there is a session: the form carries
    HMAC(key, nonce), the nonce is in a cookie; the key is drawn at each start. A nonce
    is good for ``ttl`` seconds and one check; at most ``limit`` are outstanding (a
    flood of login pages forgets the oldest: their forms need a reload)."""

    def __init__(self, ttl: float = LOGIN_TOKEN_TTL, limit: int = LOGIN_TOKENS) -> None:
        self._key = secrets.token_bytes(32)
        self.ttl, self.limit = ttl, limit
        self._lock = threading.Lock()
        self._issued: OrderedDict[str, float] = OrderedDict()  # nonce -> issued at

    def issue(self, now: float | None = None) -> tuple[str, str]:
        now = time.time() if now is None else now
        nonce = secrets.token_urlsafe(24)
        with self._lock:
            self._issued[nonce] = now
            while len(self._issued) > self.limit:
                self._issued.popitem(last=False)
        return nonce, self.token(nonce)

    def token(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def check(self, nonce: str | None, given: str | None, now: float | None = None) -> bool:
        """Whether ``given`` is the form token of ``nonce``, issued here less than
        ``ttl`` ago and not checked before (it is used up either way)."""
        if not nonce or not given:
            return False
        now = time.time() if now is None else now
        with self._lock:
            issued = self._issued.pop(nonce, None)
        if issued is None or now - issued > self.ttl:
            return False
        return hmac.compare_digest(self.token(nonce).encode(), given.encode())


class Throttle:
    """Failed logins per client address, per name and in all: too many of any within
    the window refuse the next. Memory is bounded: at most ``keys`` addresses and names
    (the least recently failed are forgotten), each with at most its limit of times."""

    def __init__(
        self,
        failures: int = THROTTLE_FAILURES,
        window: float = THROTTLE_WINDOW,
        *,
        per_name: int = THROTTLE_NAME_FAILURES,
        in_all: int = THROTTLE_ALL_FAILURES,
        keys: int = THROTTLE_KEYS,
    ):
        self.failures, self.window = failures, window
        self.per_name, self.in_all, self.keys = per_name, in_all, keys
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=in_all)

    def _recent(self, key: str, limit: int, now: float, add: bool = False) -> int:
        recent = self._seen.get(key)
        if recent is None:
            if not add:
                return 0
            recent = self._seen[key] = deque(maxlen=limit)
            while len(self._seen) > self.keys:
                self._seen.popitem(last=False)
        _expire(recent, now - self.window)
        if add:
            recent.append(now)
            self._seen.move_to_end(key)
        return len(recent)

    def _limits(self, address: str, name: str) -> list[tuple[str, int]]:
        return [("a " + address, self.failures), ("n " + name, self.per_name)]

    def allows(self, address: str, name: str = "", now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            _expire(self._all, now - self.window)
            if len(self._all) >= self.in_all:
                return False
            return all(
                self._recent(key, limit, now) < limit for key, limit in self._limits(address, name)
            )

    def failed(self, address: str, name: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._all.append(now)
            for key, limit in self._limits(address, name):
                self._recent(key, limit, now, add=True)

    def succeeded(self, address: str, name: str = "") -> None:
        with self._lock:
            for key, _ in self._limits(address, name):
                self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()
