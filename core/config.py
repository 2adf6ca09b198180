"""Load and validate config.toml.

Every section is declared with ``Key`` entries (type, default, help); unknown keys and
wrong types are errors that name the key. TOML floats are read as ``Decimal`` so that
money in plugin settings is never a float. Secrets may come from the environment and
never appear in errors or ``describe()`` output.

A key's documented environment variable (``Key.env``) wins over config.toml whenever it
is set; ``Settings.sources`` says where each value came from, for ``serve.py check``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import Any, Union, get_args, get_origin

from core.events import freeze
from core.signing import Credential, decode_secret
from core.store import redact_url
from core.svaml import Svaml, SvamlError


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and help.

    ``type`` is one of str, int, float, bool, Decimal, list, dict, or a list or table
    whose elements are checked too: ``list[str]``, ``dict[str, Decimal]``,
    ``list[dict[str, int]]`` (a table's keys are always strings). ``choices`` limits the
    values; ``check`` is a callable raising ValueError for values out of range.
    ``secret=True`` redacts the value when settings are shown; ``env`` names an
    environment variable that, when set (even to an empty string, which is then
    validated like any other value), wins over config.toml and the default.
    ``default=None`` means unset; any other default must be a valid value.
    """

    type: Any  # a type from the list above, or list[T] / dict[str, T]
    default: Any = None
    help: str = ""
    secret: bool = False
    env: str | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], None] | None = None
    required: bool = False


_SCALARS: dict[Any, tuple[str, str]] = {
    str: ("a string", "strings"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    Decimal: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    list: ("a list", "lists"),
    dict: ("a table", "tables"),
}
KEY_TYPES = "str, int, float, bool, Decimal, list, dict, list[T] or dict[str, T]"


def _type_name(kind: Any, plural: bool = False) -> str:
    """``kind`` as a message says it: ``a list of strings``."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_type_name(args[0], True)}"
    if origin is dict:
        return f"{'tables' if plural else 'a table'} of {_type_name(args[1], True)}"
    names = _SCALARS.get(kind)
    if names is None:
        return getattr(kind, "__name__", repr(kind))
    return names[plural]


def type_problem(kind: Any) -> str | None:
    """Why ``kind`` cannot be a ``Key``'s type (config.toml cannot hold it, or its
    values cannot be checked); ``None`` when it can."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is None:
        if not isinstance(kind, type):
            return f"{kind!r} is not a type (use one of {KEY_TYPES})"
        if kind not in _SCALARS:
            return f"{kind.__name__} is not a type config.toml holds (use one of {KEY_TYPES})"
        return None
    if origin is list and len(args) == 1:
        return type_problem(args[0])
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            return f"{kind!r}: the keys of a table are always strings (use dict[str, ...])"
        return type_problem(args[1])
    if origin in (Union, UnionType):
        return f"{kind!r} cannot be checked (config.toml has no null: declare default=None)"
    return f"{kind!r} cannot be checked (use one of {KEY_TYPES}; choices= for fixed values)"


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _check_type(path: str, kind: Any, value: Any, secret: bool, note: str = "") -> Any:
    """``value`` in the declared type, elements of lists and tables checked too."""
    origin = get_origin(kind)
    ok: bool
    if origin is list:
        ok = isinstance(value, list)
        if ok:
            (element,) = get_args(kind)
            return [
                _check_type(f"{path}[{i}]", element, v, secret, note) for i, v in enumerate(value)
            ]
    elif origin is dict:
        ok = isinstance(value, dict)
        if ok:
            element = get_args(kind)[1]
            return {
                k: _check_type(f"{path}.{_toml_key(k)}", element, v, secret, note)
                for k, v in value.items()
            }
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind in (float, Decimal):
        ok = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
        if ok:
            value = float(value) if kind is float else Decimal(str(value))
    else:
        ok = isinstance(value, kind)
    if not ok:
        shown = "<redacted>" if secret else repr(value)
        raise ConfigError(f"{path}{note}: expected {_type_name(kind)}, got {shown}")
    return value


def coerce(path: str, key: Key, value: Any, note: str = "") -> Any:
    """Check ``value`` against ``key``; return it in the declared type.

    Errors name ``path`` (and an element's index or key within it), then ``note``
    (where the value came from, e.g. `` (from $VARIABLE)``)."""
    value = _check_type(path, key.type, value, key.secret, note)
    path += note
    if key.choices is not None and value not in key.choices:
        raise ConfigError(
            f"{path}: must be one of {', '.join(map(repr, key.choices))}, got {value!r}"
        )
    if key.check is not None:
        try:
            key.check(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return value


MAPPING_METHODS = ("get", "items", "keys", "values")


def declaration_problem(name: str, key: Any) -> str | None:
    """What is wrong with a plugin's declaration of config key ``name``, or ``None``."""
    if not isinstance(name, str) or not name.isidentifier():
        return f"config key {name!r} is not a valid name"
    if name in MAPPING_METHODS:
        return (
            f"config key {name!r} is named like a method of the config mapping "
            f"(config.{name} would not read it); choose another name"
        )
    if not isinstance(key, Key):
        return f"config key {name!r} must be declared with core.config.Key"
    problem = type_problem(key.type)
    if problem is not None:
        return f"config key {name!r}: {problem}"
    if key.default is not None:
        try:
            coerce("default", key, key.default)
        except ConfigError as exc:
            return f"config key {name!r}: {exc}"
    return None


class PluginConfig(Mapping[str, Any]):
    """One plugin's validated ``[plugins.<name>]`` section, read-only: by key
    (``config["max_duration"]``) or as an attribute (``config.max_duration``).

    Its repr names the keys only, never the values (they may be secrets).
    """

    __slots__ = ("_plugin", "_values")

    def __init__(self, plugin: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_plugin", plugin)
        # read-only all the way down: a list setting is a tuple, a table a read-only mapping
        object.__setattr__(
            self, "_values", MappingProxyType({k: freeze(v) for k, v in values.items()})
        )

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in PluginConfig.__slots__:
            raise AttributeError(attr)
        try:
            return self._values[attr]
        except KeyError:
            known = ", ".join(sorted(self._values)) or "none"
            raise AttributeError(
                f"plugins.{self._plugin} has no key {attr!r} (keys: {known})"
            ) from None

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"plugins.{self._plugin} is read-only")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"plugins.{self._plugin} is read-only")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._values})

    def __repr__(self) -> str:
        return f"PluginConfig({self._plugin!r}, keys={sorted(self._values)})"


FROM_FILE = "file"
FROM_DEFAULT = "default"


def read_section(
    path: str,
    data: Any,
    keys: Mapping[str, Key],
    env: Mapping[str, str] | None = None,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validate one table against its declared keys; fill env values and defaults.

    A key's environment variable, when set, wins over the table; then the table; then
    the default. ``sources``, when given, receives ``"<path>.<key>"`` -> ``"file"``,
    ``"$VARIABLE"`` or ``"default"`` for every key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table")
    env = os.environ if env is None else env
    unknown = sorted(set(data) - set(keys))
    if unknown:
        known = ", ".join(sorted(keys)) or "none"
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (known keys: {known})")
    out: dict[str, Any] = {}
    for name, key in keys.items():
        where = f"{path}.{name}"
        if key.env and key.env in env:
            raw = env[key.env]
            value: Any = raw
            if key.type is not str:
                try:
                    value = tomllib.loads(f"v = {raw}", parse_float=Decimal)["v"]
                except tomllib.TOMLDecodeError:
                    raise ConfigError(
                        f"{where}: environment variable {key.env} is not a valid value"
                    ) from None
            out[name] = coerce(where, key, value, f" (from ${key.env})")
            source = f"${key.env}"
        elif name in data:
            out[name] = coerce(where, key, data[name])
            source = FROM_FILE
        elif key.required:
            raise ConfigError(f"{where}: required")
        else:
            out[name] = key.default
            source = FROM_DEFAULT
        if sources is not None:
            sources[where] = source
    return out


def redacted(section: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    return {
        k: ("<redacted>" if keys.get(k, Key(str)).secret and v is not None else v)
        for k, v in section.items()
    }


# Checks for ``Key(check=...)``, for the core's keys and plugins' alike.


def positive(value: Any) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def non_negative(value: Any) -> None:
    if value < 0:
        raise ValueError("must not be negative")


def between(low: Any, high: Any, unit: str = "") -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}{' ' + unit if unit else ''}")

    return check


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535)")


def _url_path(value: str) -> None:
    if not value.startswith("/") or "?" in value:
        raise ValueError("must be a path starting with '/' and without a query")


def _prefix(value: str) -> None:
    if value and (not value.startswith("/") or value.endswith("/")):
        raise ValueError("must be empty or start with '/' and not end with '/'")


def _affinity(value: str) -> None:
    if value not in ("auto", "none") and not value.isdigit():
        raise ValueError(f"must be auto, none or a CPU number, got {value!r}")


SERVER_KEYS = {
    "host": Key(str, "127.0.0.1", "address to listen on"),
    "port": Key(int, 8080, "TCP port (0 picks a free one)", check=_port),
    "threads": Key(int, 8, "waitress worker threads", check=positive),
    "callback_path": Key(str, "/sinch/callback", "path Sinch POSTs callbacks to", check=_url_path),
    "public_path_prefix": Key(
        str,
        "",
        "prefix a reverse proxy strips before forwarding; part of the signed path",
        check=_prefix,
    ),
    "max_body_bytes": Key(int, 65536, "largest callback body accepted (413 above)", check=positive),
    "shutdown_grace": Key(
        float, 10.0, "seconds to finish in-flight callbacks on SIGTERM", check=positive
    ),
    "cpu_affinity": Key(
        str,
        "auto",
        "auto: run on one CPU (Python threads fighting for the GIL across cores collapse under "
        "many connections); none: let the OS place threads; or a CPU number",
        check=_affinity,
    ),
}

SINCH_KEYS = {
    "keys": Key(list, [], "application key/secret pairs accepted (several during rotation)"),
    "insecure": Key(
        bool, False, "accept unsigned callbacks (development only; logged at every start)"
    ),
    "timestamp_window": Key(
        float, 300.0, "accepted x-timestamp skew in seconds; 0 disables the check"
    ),
}

CREDENTIAL_KEYS = {
    "key": Key(str, None, "application key", required=True),
    "secret": Key(str, None, "application secret (base64); prefer secret_env", secret=True),
    "secret_env": Key(str, None, "environment variable holding the application secret"),
}

EVENT_BUDGET_LIMIT = 4.5  # Sinch's v2 docs give 5 s; answer well before


def _budget(value: float) -> None:
    if not 0 < value <= EVENT_BUDGET_LIMIT:
        raise ValueError(f"must be greater than 0 and at most {EVENT_BUDGET_LIMIT} seconds")


POLICY_KEYS = {
    "budget": Key(float, 2.0, "seconds within which every ICE/ACE/PIE is answered", check=_budget),
    "ice_default": Key(
        str, "deny", "ICE answer when no plugin proposes an action", choices=("deny", "connect")
    ),
    "workers": Key(int, 16, "threads that run plugin hooks", check=positive),
    "retry_backoff": Key(
        float,
        1.0,
        "seconds before a DiCE/Notify whose plugin work failed is retried; doubles each time",
        check=positive,
    ),
    "retry_max_backoff": Key(float, 300.0, "longest wait between retries", check=positive),
    "retry_attempts": Key(
        int, 12, "attempts before the work is parked for an operator", check=positive
    ),
    "breaker_timeouts": Key(
        int,
        5,
        "timeouts of one plugin within breaker_window that open its circuit breaker (0: off)",
        check=non_negative,
    ),
    "breaker_window": Key(float, 10.0, "seconds the breaker counts timeouts over", check=positive),
    "breaker_cooldown": Key(
        float,
        30.0,
        "seconds an open breaker skips the plugin (its on_error applies at once)",
        check=positive,
    ),
    "fallback": Key(dict, {}, "SVAML sent when the budget passes or the merge fails, per event"),
    "allow_suppress_callbacks": Key(
        bool,
        False,
        "send an answer with suppressCallbacks true (no ACE, no DiCE) even while an enabled "
        "plugin relies on the DiCE (credit settlement, crm records); false: the fallback is sent",
    ),
}


def _store_url(value: str) -> None:
    if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ValueError(
            f"unsupported store {value.split(':', 1)[0]!r} (use sqlite:///path or postgresql://...)"
        )


STORE_KEYS = {
    "url": Key(
        str,
        "sqlite:///switchboard.db",
        "sqlite:///relative/path, sqlite:////absolute/path or postgresql://user@host:port/db",
        check=_store_url,
        env="SWITCHBOARD_STORE_URL",
    ),
    "pool_size": Key(int, 16, "PostgreSQL connections per server process", check=positive),
    "sqlite_synchronous": Key(
        str,
        "full",
        "full: every commit reaches the disk before the answer; normal: faster, survives a crash "
        "of the process but may lose the last commits on power loss",
        choices=("full", "normal"),
    ),
    "retention_days": Key(
        float,
        30.0,
        "days each recorded callback (its body, answer and trace, with the call's phone "
        "numbers) is kept; older ones are purged hourly and by serve.py purge",
        check=positive,
    ),
    "inspect_timeout": Key(
        float,
        10.0,
        "seconds an operator's read (a console page, switchboard calls) may run before it is "
        "stopped with a message to narrow the filters",
        check=positive,
    ),
}

def console_address(value: str) -> tuple[str, int]:
    """``admin.console`` as (host, port): ``"HOST:PORT"``, ``"[IPv6]:PORT"`` or a bare
    ``"PORT"`` (loopback)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or PORT (e.g. 127.0.0.1:8081), got {value!r}")
    return host, int(port)


def _console_address(value: str) -> None:
    console_address(value)


SCRYPT_PREFIX = "scrypt$"  # the format of core.console.auth.hash_password


def _users(value: list[dict[str, str]]) -> None:
    seen: set[str] = set()
    for i, user in enumerate(value):
        if set(user) != {"name", "password_hash"}:
            raise ValueError(f"[{i}]: give exactly name and password_hash")
        if not user["name"] or user["name"] in seen:
            raise ValueError(f"[{i}].name: must be a non-empty name used once")
        if len(user["name"]) > 64:  # core.console.auth.NAME_LIMIT
            raise ValueError(f"[{i}].name: at most 64 characters")
        if not user["password_hash"].startswith(SCRYPT_PREFIX):
            raise ValueError(
                f"[{i}].password_hash: not a hash made by `switchboard console hash-password`"
            )
        seen.add(user["name"])


ADMIN_KEYS = {
    "token": Key(
        str,
        None,
        "bearer token for GET /admin/trace/<callid>, and a console login; unset: the endpoint "
        "is off",
        secret=True,
        env="SWITCHBOARD_ADMIN_TOKEN",
    ),
    "console": Key(
        str,
        None,
        "address of the operator console, HOST:PORT or PORT (on 127.0.0.1); its own listener, "
        "never the callback one; unset: no console",
        check=_console_address,
        env="SWITCHBOARD_CONSOLE",
    ),
    "users": Key(
        list[dict[str, str]],
        [],
        "console operators: [[admin.users]] name, password_hash (from `switchboard console "
        "hash-password`)",
        secret=True,
        check=_users,
    ),
    "console_https": Key(
        bool,
        False,
        "the console is reached over HTTPS (a TLS-terminating proxy): its session cookie is "
        "Secure (it is anyway for a request with X-Forwarded-Proto: https)",
    ),
    "session_minutes": Key(
        int, 480, "a console session ends after this many minutes without a request", check=positive
    ),
}

LOGGING_KEYS = {
    "level": Key(str, "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    "format": Key(
        str,
        "text",
        "text, or json: one JSON object per line",
        choices=("text", "json"),
        env="SWITCHBOARD_LOG_FORMAT",
    ),
}

DEFAULT_FALLBACK = {
    "ice": {"action": {"name": "hangup"}},
    "ace": {"action": {"name": "continue"}},
    "pie": {"action": {"name": "hangup"}},
}

PLUGIN_CORE_KEYS = {
    "on_error": Key(
        str,
        None,
        "deny (fail closed) or abstain (fail open) when the plugin errs",
        choices=("deny", "abstain"),
    ),
    "timeout": Key(
        float, None, "seconds this plugin may take (at most the budget)", check=positive
    ),
}

RESERVED_PLUGIN_NAMES = ("enabled", "shadow")


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Plugin sections are filled in by ``with_plugins``."""

    path: Path | None
    server: Mapping[str, Any]
    sinch: Mapping[str, Any]
    credentials: tuple[Credential, ...]
    policy: Mapping[str, Any]
    fallback: Mapping[str, Svaml]
    store: Mapping[str, Any]
    logging: Mapping[str, Any]
    admin: Mapping[str, Any]
    enabled: tuple[str, ...]
    plugin_tables: Mapping[str, Any]
    plugins: Mapping[str, PluginConfig] = field(default_factory=dict)
    plugin_keys: Mapping[str, Mapping[str, Key]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each value came from: ``"store.url"`` -> ``"file"``, ``"default"`` or the
    environment variable (``"$SWITCHBOARD_STORE_URL"``); plugin keys as
    ``"plugins.<name>.<key>"``, credential secrets as ``"sinch.keys[<i>].secret"``."""
    shadow: tuple[str, ...] = ()
    """``plugins.shadow``: plugins run on live traffic, traced and never merged."""

    def source(self, key: str) -> str:
        """Where ``key`` (``"store.url"``) came from, as people read it."""
        found = self.sources.get(key, FROM_DEFAULT)
        return "config file" if found == FROM_FILE else found

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def describe(self) -> dict[str, Any]:
        """The settings as shown to people: secrets redacted. ``shadow`` only when some
        plugin runs in shadow (so that a configuration without any keeps its revision,
        ``core.revisions``)."""
        shown = {
            "server": dict(self.server),
            "sinch": {
                "insecure": self.sinch["insecure"],
                "timestamp_window": self.sinch["timestamp_window"],
                "keys": [repr(c) for c in self.credentials],
            },
            "policy": {k: v for k, v in self.policy.items() if k != "fallback"},
            "fallback": {k: v.to_dict() for k, v in self.fallback.items()},
            "store": {**self.store, "url": redact_url(self.store["url"])},
            "admin": redacted(self.admin, ADMIN_KEYS),
            "enabled": list(self.enabled),
            "plugins": {
                name: redacted(values, self.plugin_keys.get(name, {}))
                for name, values in self.plugins.items()
            },
        }
        if self.shadow:
            shown["shadow"] = list(self.shadow)
        return shown


def _credentials(
    items: list[Any], env: Mapping[str, str], sources: dict[str, str]
) -> tuple[Credential, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"sinch.keys[{i}]"
        values = read_section(where, item, CREDENTIAL_KEYS, env, sources)
        secret = values["secret"]
        if values["secret_env"]:
            sources[f"{where}.secret"] = f"${values['secret_env']}"
            if secret is not None:
                raise ConfigError(f"{where}: give either secret or secret_env, not both")
            name = values["secret_env"]
            secret = env.get(name)
            if not secret:
                raise ConfigError(f"{where}.secret_env: environment variable {name} is not set")
        if not secret:
            raise ConfigError(f"{where}: needs secret_env (or secret)")
        try:
            decode_secret(secret)
        except ValueError:
            raise ConfigError(f"{where}: the application secret is not valid base64") from None
        out.append(Credential(values["key"], secret))
    return tuple(out)


def _fallback(table: Mapping[str, Any]) -> dict[str, Svaml]:
    unknown = sorted(set(table) - set(DEFAULT_FALLBACK))
    if unknown:
        raise ConfigError(f"policy.fallback.{unknown[0]}: unknown event (ice, ace or pie)")
    out = {}
    for event, default in DEFAULT_FALLBACK.items():
        raw = _plain(table.get(event, default))
        try:
            out[event] = Svaml.from_dict(raw).validate_for(event)
        except SvamlError as exc:
            raise ConfigError(f"policy.fallback.{event}: {exc}") from None
    return out


def _plain(value: Any) -> Any:
    """TOML values as JSON-like values (Decimal -> int when integral)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def parse(
    data: Mapping[str, Any], path: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Validate the core sections of a parsed config.toml."""
    env = os.environ if env is None else env
    sections = {"server", "sinch", "policy", "store", "logging", "plugins", "admin"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(sorted(sections))})")
    sources: dict[str, str] = {}
    server = read_section("server", data.get("server"), SERVER_KEYS, env, sources)
    sinch = read_section("sinch", data.get("sinch"), SINCH_KEYS, env, sources)
    credentials = _credentials(sinch["keys"], env, sources)
    if not credentials and not sinch["insecure"]:
        raise ConfigError(
            "sinch.keys: no application key configured; add [[sinch.keys]] "
            "or set sinch.insecure = true for development"
        )
    policy = read_section("policy", data.get("policy"), POLICY_KEYS, env, sources)
    fallback = _fallback(policy["fallback"])
    store = read_section("store", data.get("store"), STORE_KEYS, env, sources)
    logging_ = read_section("logging", data.get("logging"), LOGGING_KEYS, env, sources)
    admin = read_section("admin", data.get("admin"), ADMIN_KEYS, env, sources)
    if admin["token"] is not None and len(admin["token"]) < 16:
        raise ConfigError("admin.token: use at least 16 characters")
    if admin["console"] is not None and not admin["token"] and not admin["users"]:
        raise ConfigError(
            "admin.console: nobody could log in; set admin.token (or $SWITCHBOARD_ADMIN_TOKEN) "
            "or add [[admin.users]]"
        )

    plugins_table = data.get("plugins") or {}
    if not isinstance(plugins_table, dict):
        raise ConfigError("plugins: expected a table")
    enabled = _plugin_names(plugins_table, "enabled")
    shadow = _plugin_names(plugins_table, "shadow")
    for name in shadow:
        if name in enabled:
            raise ConfigError(
                f"plugins.shadow: {name!r} is also in plugins.enabled (a plugin runs enabled "
                "or in shadow, not both)"
            )
    tables = {k: v for k, v in plugins_table.items() if k not in RESERVED_PLUGIN_NAMES}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"plugins.{name}: expected a table")
    return Settings(
        path=path,
        server=MappingProxyType(server),
        sinch=MappingProxyType(sinch),
        credentials=credentials,
        policy=MappingProxyType(policy),
        fallback=MappingProxyType(fallback),
        store=MappingProxyType(store),
        logging=MappingProxyType(logging_),
        admin=MappingProxyType(admin),
        enabled=tuple(enabled),
        plugin_tables=MappingProxyType(tables),
        sources=MappingProxyType(sources),
        shadow=tuple(shadow),
    )


def _plugin_names(table: Mapping[str, Any], key: str) -> list[str]:
    """``plugins.enabled`` or ``plugins.shadow``: a list of distinct, unreserved names."""
    names = table.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"plugins.{key}: expected a list of plugin names")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"plugins.{key}: {dupes[0]!r} is listed twice")
    for name in names:
        if name in RESERVED_PLUGIN_NAMES:
            raise ConfigError(f"plugins.{key}: {name!r} is a reserved name")
    return names


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate config.toml (core sections only; see ``with_plugins``)."""
    file = Path(path).resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse(data, file, env)


def with_plugins(
    settings: Settings,
    declared: Mapping[str, Mapping[str, Key]],
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Validate each enabled (or shadow) plugin's ``[plugins.<name>]`` table against its
    declared keys."""
    stray = sorted(set(settings.plugin_tables) - {*settings.enabled, *settings.shadow})
    if stray:
        raise ConfigError(
            f"plugins.{stray[0]}: configured but not enabled (add it to plugins.enabled or "
            "plugins.shadow, or remove the table)"
        )
    values: dict[str, PluginConfig] = {}
    keys_by_plugin: dict[str, Mapping[str, Key]] = {}
    sources = {k: v for k, v in settings.sources.items() if not k.startswith("plugins.")}
    for name in (*settings.enabled, *settings.shadow):
        keys = dict(declared.get(name, {}))
        clash = sorted(set(keys) & set(PLUGIN_CORE_KEYS))
        if clash:
            raise ConfigError(f"plugin {name!r} declares key {clash[0]!r}, which the core reserves")
        keys.update(PLUGIN_CORE_KEYS)
        section = read_section(
            f"plugins.{name}", settings.plugin_tables.get(name), keys, env, sources
        )
        timeout = section["timeout"]
        if timeout is not None and timeout > settings.policy["budget"]:
            raise ConfigError(
                f"plugins.{name}.timeout: must not exceed policy.budget ({settings.policy['budget']} s)"
            )
        values[name] = PluginConfig(name, section)
        keys_by_plugin[name] = MappingProxyType(keys)
    return dataclasses.replace(
        settings,
        plugins=MappingProxyType(values),
        plugin_keys=MappingProxyType(keys_by_plugin),
        sources=MappingProxyType(sources),
    )
