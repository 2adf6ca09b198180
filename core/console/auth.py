"""Who may use the console: password hashes, logins, sessions, CSRF tokens, a throttle.

* Passwords are hashed with scrypt (``hashlib.scrypt``), salted, in the format
  ``scrypt$N$r$p$<salt>$<hash>`` (base64) that ``switchboard console hash-password``
  prints for ``[[admin.users]]``. The admin token logs in as the operator ``token``.
* Sessions are kept in the store (``core.console.sessions``: a digest of each id, never
  the id), under a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie, so they
  outlive a restart and every server process on the store knows them. One ends after
  ``admin.session_minutes`` without a request, 12 hours after the login, at
  logout (on any process), or when the token or password hash it logged in with is no
  longer configured (``credential``, checked on every request). Each has its own CSRF
  token.
* The login form, before there is a session, carries a token derived from a random
  nonce in a cookie and a key drawn at each start (``LoginTokens``); it is good for
  ``LOGIN_TOKEN_TTL`` seconds and one login attempt.
* Failed logins are throttled (``Throttle``) so that guessing stays bounded without
  letting anyone lock a correct credential out; see "The login throttle" below. Every
  table here is bounded.

The login throttle
------------------
Behind an SSH tunnel or a local proxy every operator comes from one address
(127.0.0.1), so a limit per client address cannot tell an attacker on the host from the
operators: it let anyone there lock the token login for everyone. Nor does it bound
anything a limit per name does not: a guess at a credential is a guess at its name. So
the address counts for nothing, and logins go in one of two lanes:

* A *known* client carries a device cookie (``DEVICE_COOKIE``) that the console set at
  an earlier successful login of the same name on this browser: ``issued.nonce.mac``,
  the MAC an HMAC keyed by the secret the login used (``device_key``: drawn from the
  token's scrypt, or from the user's name and password hash, as the settings hold
  them; the store keeps other digests of them, so a copy of it makes no cookie, and a
  stolen cookie is no quicker a test of guesses at the token than a password hash). Any server
  process verifies it from the settings alone, it is void when that token or password
  changes, and it lasts ``DEVICE_LIFETIME``. A known client's failures are counted for
  its cookie alone (``THROTTLE_DEVICE_FAILURES`` within ``THROTTLE_WINDOW``): nobody
  else's failures, from the same address, on the same name or anywhere, ever refuse it.
* Every other client is *unknown*: failures are counted per name
  (``THROTTLE_NAME_FAILURES``, from any address) and in all
  (``THROTTLE_ALL_FAILURES``); past either, the next attempts are refused (``429``)
  without checking the password until the window has passed.

Brute force stays bounded: an attacker without the credential has no device cookie (only
a successful login makes one, and the MAC cannot be made without the credential), so
every guess goes in the unknown lane: ten a name per five minutes in each server
process. What others' failures can still block is the first login of a browser that
has never logged in with that name, while someone is failing on the same name (or on a
hundred names) at that very time: such a browser cannot be told from the attacker. An
operator who has logged in from their browser before is never locked out.
"""

from __future__ import annotations

import base64
import functools
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
THROTTLE_NAME_FAILURES = 10  # per name tried by unknown clients, from any address
THROTTLE_ALL_FAILURES = 100  # by unknown clients, in all
THROTTLE_DEVICE_FAILURES = 5  # per device cookie (a known client)
THROTTLE_WINDOW = 300.0
THROTTLE_KEYS = 10_000  # names and device cookies remembered (the oldest are forgotten)
DEVICE_COOKIE = "switchboard_console_device"
DEVICE_LIFETIME = 30 * 86400  # seconds a device cookie is good for
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


@functools.lru_cache(maxsize=8)
def _stretched(token: str) -> bytes:
    """The admin token through scrypt, as a password is hashed (once per token and
    process): the sessions' credential (kept in the store) and the device cookies are
    drawn from it, so neither is a quick way to test guesses at a token chosen by hand.
    A user's password hash is scrypt's already."""
    salt = b"switchboard console token"
    return hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)


def credential(
    user: str, by_token: bool, token: str | None, users: Iterable[Mapping[str, str]]
) -> str | None:
    """What a session of ``user`` rests on in these settings: a digest of the admin
    token (a login with the token; of its scrypt, see ``_stretched``), or the user's
    name and a digest of their password hash; ``None`` when that credential is no
    longer configured. A session whose credential differs from the current one (the
    token rotated, the user removed or given a new password, then a reload) has ended.
    The store keeps it with the session."""
    if by_token:
        if not token:
            return None
        return "token " + hashlib.sha256(b"credential\0" + _stretched(token)).hexdigest()
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


def device_key(name: str, token: str | None, users: Iterable[Mapping[str, str]]) -> bytes | None:
    """The key of the device cookies of logins as ``name`` (empty: the token), drawn from
    the secret as the settings hold it (the token's scrypt, the user's password hash),
    never from what the store keeps (``credential``'s digests of them); ``None`` when
    there is no such login."""
    if not name:
        secret = _stretched(token) if token else None
    else:
        found = next((u for u in users if u.get("name") == name), None)
        secret = f"{name}\0{found['password_hash']}".encode() if found else None
    if not secret:
        return None
    return hashlib.sha256(b"switchboard console device\0" + secret).digest()


def device_cookie(key: bytes, now: float | None = None) -> str:
    """A device cookie for a browser that has just logged in (``key``: ``device_key``)."""
    issued = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(16)
    return f"{issued}.{nonce}.{_device_mac(key, issued, nonce)}"


def known_device(cookie: str | None, key: bytes | None, now: float | None = None) -> str | None:
    """The nonce of a device cookie made by ``device_cookie`` with ``key`` (the
    ``device_key`` of the name being tried) less than ``DEVICE_LIFETIME`` ago; ``None``
    for anything else: that client is unknown."""
    if not cookie or not key or len(cookie) > 200:
        return None
    issued, _, rest = cookie.partition(".")
    nonce, _, mac = rest.partition(".")
    if not issued.isascii() or not issued.isdigit() or not nonce or not mac:
        return None
    now = time.time() if now is None else now
    if not 0 <= now - int(issued) <= DEVICE_LIFETIME:
        return None
    expected = _device_mac(key, issued, nonce)
    return nonce if hmac.compare_digest(expected.encode(), mac.encode()) else None


def _device_mac(key: bytes, issued: str, nonce: str) -> str:
    return hmac.new(key, f"{issued}.{nonce}".encode(), hashlib.sha256).hexdigest()


class Throttle:
    """Failed logins in two lanes (see "The login throttle" above): an unknown client's
    per name and in all, a known client's per device cookie (``device``, its nonce);
    too many within the window refuse the next of that lane. Memory is bounded: at most
    ``keys`` names and devices (the least recently failed are forgotten), each with at
    most its limit of times."""

    def __init__(
        self,
        window: float = THROTTLE_WINDOW,
        *,
        per_name: int = THROTTLE_NAME_FAILURES,
        in_all: int = THROTTLE_ALL_FAILURES,
        per_device: int = THROTTLE_DEVICE_FAILURES,
        keys: int = THROTTLE_KEYS,
    ):
        self.window = window
        self.per_name, self.in_all, self.per_device = per_name, in_all, per_device
        self.keys = keys
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

    def _key(self, name: str, device: str | None) -> tuple[str, int]:
        return ("d " + device, self.per_device) if device else ("n " + name, self.per_name)

    def allows(self, name: str, device: str | None = None, now: float | None = None) -> bool:
        """Whether an attempt on ``name`` (from the known client ``device``) is checked."""
        now = time.time() if now is None else now
        key, limit = self._key(name, device)
        with self._lock:
            if device is None:
                _expire(self._all, now - self.window)
                if len(self._all) >= self.in_all:
                    return False
            return self._recent(key, limit, now) < limit

    def failed(self, name: str, device: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        key, limit = self._key(name, device)
        with self._lock:
            if device is None:
                self._all.append(now)
            self._recent(key, limit, now, add=True)

    def succeeded(self, name: str, device: str | None = None) -> None:
        with self._lock:
            self._seen.pop(self._key(name, device)[0], None)

    def __len__(self) -> int:
        return len(self._seen)


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()
