"""Configuration revisions: which configuration decided a call.

Every configuration a server loads (at its start and at each reload) is a *revision*:
the first 12 hex digits of the SHA-256 of the validated settings that decide answers
(``policy_content``: the Sinch keys and signature window, the policy and fallbacks, the
plugins and their settings), as people see them (``Settings.describe()``: secrets are
redacted, so a revision names no secret and its content can be shown). Where a process
listens, its store, logging and console are not part of it, so instances serving one
callback URL with the same policy share a revision. The same content always gives the
same revision. Each load is recorded in the store (``config_loads``: revision, time, start or
reload, the server process), with the content once per revision
(``config_revisions``); every trace names the revision that decided it (``revision``).
``switchboard revisions`` lists the loads and shows what changed between two revisions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.config import Settings
from core.store import Store

# the parts of ``Settings.describe()`` that are not policy
NOT_POLICY = ("server", "store", "logging", "admin")


def policy_content(settings: Settings) -> dict[str, Any]:
    """What a revision is made of: the shown settings that decide answers."""
    shown = settings.describe()
    policy = {key: value for key, value in shown.items() if key not in NOT_POLICY}
    return json.loads(canonical(policy))  # plain JSON values, as recorded


def revision_for(settings: Settings) -> str:
    """The revision of a configuration (``revision_of`` its ``policy_content``)."""
    return revision_of(policy_content(settings))


def canonical(content: Mapping[str, Any]) -> str:
    """The content's JSON with sorted keys: what a revision is the digest of."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    """Settings' read-only mappings as objects; anything else (a Decimal) as its text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def revision_of(content: Mapping[str, Any]) -> str:
    """The revision id of a configuration's shown content (``Settings.describe()``)."""
    return hashlib.sha256(canonical(content).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Load:
    """One configuration loaded by one server process."""

    revision: str
    loaded_at: float
    how: str  # "start" or "reload"
    instance: str | None


def record(store: Store, revision: str, content: Mapping[str, Any], how: str) -> None:
    """Record that this process loaded ``revision`` (and its content, the first time)."""
    now = time.time()
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO config_revisions (revision, content, first_loaded_at) VALUES (?, ?, ?) "
            "ON CONFLICT (revision) DO NOTHING",
            (revision, canonical(content), now),
        )
        tx.execute(
            "INSERT INTO config_loads (revision, loaded_at, how, instance) VALUES (?, ?, ?, ?)",
            (revision, now, how, store.instance or None),
        )


def loads(store: Store, limit: int = 50) -> list[Load]:
    """The latest loads, newest first."""
    rows = store.inspect(
        "SELECT revision, loaded_at, how, instance FROM config_loads "
        f"ORDER BY loaded_at DESC LIMIT {int(limit)}"
    )
    return [Load(*row) for row in rows]


def content(store: Store, revision: str) -> dict[str, Any] | None:
    """A recorded revision's content; a unique prefix of its id is enough. ``None``
    when no revision starts so; ``ValueError`` when several do."""
    prefix = revision.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError(f"{revision!r} is not a revision id (hex digits)")
    rows = store.inspect(
        "SELECT revision, content FROM config_revisions WHERE revision >= ? AND revision < ? "
        "ORDER BY revision LIMIT 2",
        (prefix, prefix + "g"),
    )
    if len(rows) > 1:
        raise ValueError(f"{revision!r} names several revisions; give more digits")
    return json.loads(rows[0][1]) if rows else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What changed from ``old`` to ``new``, one line per setting:
    ``plugins.allowlist.allow: ["+1"] -> ["+1", "+44"]`` (added and removed settings
    show ``(unset)``)."""
    a, b = dict(_leaves(old)), dict(_leaves(new))
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if a.get(path, _UNSET) != b.get(path, _UNSET):
            lines.append(f"{path}: {_show(a.get(path, _UNSET))} -> {_show(b.get(path, _UNSET))}")
    return lines


_UNSET = object()


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value, sort_keys=True, default=str)


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Each setting with its dotted path; lists are compared whole."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    else:
        yield path, value
