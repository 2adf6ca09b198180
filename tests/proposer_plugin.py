"""A test plugin that proposes a configured SVAML answer, per dialled number, at ICE:
how a third-party plugin would put an odd or illegal answer before the merge
(test_answer_guards.py, in process and on the real server).

    [plugins.proposer]
    answers = { "+15550000001" = { action = { name = "connectPstn", suppressCallbacks = true } } }
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.config import Key
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.svaml import Svaml


def _plain(value: Any) -> Any:
    """Read-only config values as plain JSON-like ones."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


@hookimpl
def switchboard_config_keys():
    return {"answers": Key(dict, {}, "SVAML to propose at ICE, by dialled number (E.164)")}


@hookimpl
def switchboard_ice(event, ctx):
    raw = ctx.config["answers"].get(event.to.e164 if event.to is not None else None)
    if raw is None:
        return None
    svaml = Svaml.from_dict(_plain(raw))
    return Decision.propose(svaml.action, "configured answer", instructions=svaml.instructions)
