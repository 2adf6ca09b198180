"""allowlist: which numbers may be called, and how often (toll-fraud guard).

Decides at ICE. Rules on the destination (``to.endpoint`` in E.164) and on the caller
(``cli``): exact numbers or prefixes, allow and deny; the most specific matching rule
wins and deny wins a tie. A destination that matches no rule follows ``default``
(deny unless configured). A built-in list of high-risk ranges is denied unless a more
specific allow overrides it. Velocity limits (calls per caller, calls per destination
prefix, per sliding window) are counted in the store, so they hold across processes.

An allowed call carries ``connectPstn`` to the dialled number as its default action
(used when no other plugin proposes one), with the configured ``cli``. ``max_duration``
caps every call the allowlist allows (merge rule 4), whichever plugin's action wins. A
denied call gets ``hangup``, after ``answer`` and ``deny_prompt`` when a prompt is set
(``deny_answer = false``: the prompt without ``answer``).

A call with ``to.type = "did"`` dialled one of the application's own numbers:
connecting it to ``to.endpoint`` would call that number itself. It is connected to its
``did_forward`` entry, else to ``did_default``, else denied. The destination rules do
not apply to these configured targets (the caller does not choose them); the caller
rules and velocity limits do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core import (
    is_e164,
    MAX_DURATION,
    CallContext,
    ConnectPstn,
    Decision,
    Ice,
    Key,
    Migration,
    Store,
    between,
    hookimpl,
    non_negative,
)
from plugins.numbers import Rules, parse_pattern, parse_patterns
from plugins.refusal import DENY_ANSWER, Refusal


# Ranges carriers commonly block for premium-rate and international revenue share
# fraud (IRSF). Each line: prefix, what it is. See the README for the sources.
HIGH_RISK: tuple[tuple[str, str], ...] = (
    ("+1900", "NANP 900 premium-rate service code"),
    ("+4490", "UK 090 premium-rate"),
    ("+4491", "UK 091 premium-rate"),
    ("+4498", "UK 098 sexual entertainment premium-rate"),
    ("+4470", "UK 070 personal numbering, common in fraud"),
    ("+49900", "Germany 0900 premium-rate"),
    ("+3389", "France 089 premium-rate"),
    ("+39899", "Italy 899 premium-rate"),
    ("+34803", "Spain 803 premium-rate"),
    ("+34806", "Spain 806 premium-rate"),
    ("+34807", "Spain 807 premium-rate"),
    ("+31900", "Netherlands 0900 premium-rate"),
    ("+31906", "Netherlands 0906 premium-rate"),
    ("+31909", "Netherlands 0909 premium-rate"),
    ("+61190", "Australia 190 premium-rate"),
    ("+870", "Inmarsat (ITU-T E.164 shared code), IRSF target"),
    ("+881", "Global Mobile Satellite System (shared code), IRSF target"),
    ("+882", "International Networks (shared code), IRSF target"),
    ("+883", "International Networks (shared code), IRSF target"),
    ("+53", "Cuba, high-cost IRSF destination"),
    ("+224", "Guinea, IRSF destination"),
    ("+232", "Sierra Leone, IRSF destination"),
    ("+247", "Ascension Island, IRSF destination"),
    ("+252", "Somalia, IRSF destination"),
    ("+290", "Saint Helena, IRSF destination"),
    ("+674", "Nauru, IRSF destination"),
    ("+675", "Papua New Guinea, IRSF destination"),
    ("+677", "Solomon Islands, IRSF destination"),
    ("+682", "Cook Islands, IRSF destination"),
    ("+683", "Niue, IRSF destination"),
    ("+688", "Tuvalu, IRSF destination"),
    ("+690", "Tokelau, IRSF destination"),
)

MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE allowlist_hits (
                scope TEXT NOT NULL, key TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, callid TEXT NOT NULL)""",
            "CREATE INDEX allowlist_hits_key ON allowlist_hits (scope, key, at)",
        ),
        "velocity counters",
    )
]


def _check_number(where: str, value: Any) -> None:
    if not is_e164(value):
        raise ValueError(f"{where}: {value!r} is not an E.164 number with '+'")


def _check_did_forward(table: Mapping[str, Any]) -> None:
    for did, target in table.items():
        _check_number("DID", did)
        _check_number(f"target of {did}", target)
        if target in table:  # the forward would ring one of our own numbers again
            raise ValueError(f"{did} forwards to {target}, itself one of the DIDs")


def _check_did_default(value: str) -> None:
    _check_number("did_default", value)


KEYS = {
    "default": Key(
        str, "deny", "verdict for a destination no rule matches", choices=("deny", "allow")
    ),
    "allow": Key(list[str], [], "destination numbers or prefixes ('+44*') that may be called"),
    "deny": Key(list[str], [], "destination numbers or prefixes that may not be called"),
    "callers_default": Key(
        str, "allow", "verdict for a caller no caller rule matches", choices=("deny", "allow")
    ),
    "allow_callers": Key(list[str], [], "caller numbers or prefixes that may call"),
    "deny_callers": Key(list[str], [], "caller numbers or prefixes that may not call"),
    "builtin_deny": Key(bool, True, "deny the built-in high-risk ranges (premium-rate, IRSF)"),
    "max_duration": Key(
        int,
        None,
        "cap on every call the allowlist allows (merge rule 4: no plugin's action runs "
        "longer; an action that cannot carry maxDuration is hung up), and the maxDuration "
        "of its connectPstn",
        check=between(1, MAX_DURATION, "seconds"),
    ),
    "cli": Key(str, None, "caller id shown on the connected call (E.164 or 'private')"),
    "deny_prompt": Key(str, None, "said to the caller before a denied call is hung up"),
    "deny_answer": DENY_ANSWER,
    "prompt_locale": Key(str, "en-US", "locale of deny_prompt"),
    "did_forward": Key(
        dict,
        {},
        "where a call to one of the application's own numbers (to.type did) is connected: "
        "{ '+15550001111' = '+14440002222' } (DID = target, E.164)",
        check=_check_did_forward,
    ),
    "did_default": Key(
        str,
        None,
        "target (E.164) for a DID call without a did_forward entry; unset: such calls are denied",
        check=_check_did_default,
    ),
    "caller_limit": Key(
        int, 0, "calls per caller per caller_window (0: no limit)", check=non_negative
    ),
    "caller_window": Key(float, 3600.0, "seconds", check=non_negative),
    "prefix_limit": Key(
        int, 0, "calls per destination prefix per prefix_window (0: no limit)", check=non_negative
    ),
    "prefix_window": Key(float, 3600.0, "seconds", check=non_negative),
    "prefix_digits": Key(
        int, 6, "digits of the destination (after '+') that form its prefix", check=non_negative
    ),
}


class Allowlist:
    """One instance per server; ``switchboard_configure`` compiles the rules."""

    def __init__(self) -> None:
        self.destinations = Rules((), ())
        self.callers = Rules((), ())
        self.builtin: dict[str, str] = {}
        self.did_forward: dict[str, str] = {}
        self.refusal = Refusal()

    @hookimpl
    def switchboard_config_keys(self) -> Mapping[str, Key]:
        return KEYS

    @hookimpl
    def switchboard_store_migrations(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def switchboard_replay_rewind(self, store: Store, since: float) -> None:
        """A replay from ``since``: the calls counted since are counted again."""
        with store.transaction() as tx:
            tx.execute("DELETE FROM allowlist_hits WHERE at >= ?", (since,))

    @hookimpl
    def switchboard_configure(self, config: Mapping[str, Any]) -> None:
        deny = parse_patterns(config["deny"], "deny")
        self.builtin = {}
        if config["builtin_deny"]:
            self.builtin = {parse_pattern(prefix + "*").text: why for prefix, why in HIGH_RISK}
            deny += [parse_pattern(p) for p in self.builtin]
        self.destinations = Rules(parse_patterns(config["allow"], "allow"), deny)
        self.callers = Rules(
            parse_patterns(config["allow_callers"], "allow_callers"),
            parse_patterns(config["deny_callers"], "deny_callers"),
        )
        if config["cli"] is not None:
            ConnectPstn(cli=config["cli"])  # raises if it is not a valid caller id
        self.did_forward = dict(config["did_forward"])
        self.refusal = Refusal.of(config)
        if config["did_default"] in self.did_forward:
            raise ValueError(f"did_default {config['did_default']} is itself one of the DIDs")

    @hookimpl
    def switchboard_ice(self, event: Ice, ctx: CallContext) -> Decision:
        cfg = ctx.config
        to = event.to
        dest = to.e164 if to is not None else None
        if to is None or dest is None:
            return self.refusal.deny("destination is not a phone number")
        if (to.type or "").lower() == "did":  # one of our own numbers was dialled
            target = self.did_forward.get(dest) or cfg["did_default"]
            if target is None:
                return self.refusal.deny(
                    f"{dest} is one of the application's own numbers (to.type did) and has no "
                    "forward target (did_forward, did_default)",
                )
            via = "did_forward" if dest in self.did_forward else "did_default"
            allowed_by = f"DID {dest} forwarded by {via}"
            dest = target
        else:
            found = self.destinations.verdict(dest)
            if found is None:
                if cfg["default"] == "deny":
                    return self.refusal.deny(f"{dest} matches no allow rule (default deny)")
            elif found[0] == "deny":
                risk = self.builtin.get(found[1].text)
                detail = (
                    f"high-risk range {found[1].digits} ({risk})"
                    if risk
                    else f"rule {found[1].text!r}"
                )
                return self.refusal.deny(f"{dest} denied by {detail}")
            allowed_by = f"rule {found[1].text!r}" if found else "default allow"

        caller = event.cli_e164
        if caller is not None:
            found_caller = self.callers.verdict(caller)
            verdict = found_caller[0] if found_caller else cfg["callers_default"]
            if verdict == "deny":
                rule = f"rule {found_caller[1].text!r}" if found_caller else "callers_default"
                return self.refusal.deny(f"caller {caller} denied by {rule}")
        elif cfg["callers_default"] == "deny":
            return self.refusal.deny("caller number unknown (callers_default deny)")

        limited = self._velocity(event, ctx, dest, caller or (event.cli or "unknown"))
        if limited:
            ctx.log.warning("velocity limit: call %s denied: %s", event.callid, limited)
            return self.refusal.deny(limited)

        action = ConnectPstn(number=dest, max_duration=cfg["max_duration"], cli=cfg["cli"])
        return Decision.allowed(
            f"{dest} allowed by {allowed_by}", action=action, max_duration=cfg["max_duration"]
        )

    def _velocity(self, event: Any, ctx: Any, dest: str, caller: str) -> str | None:
        cfg = ctx.config
        checks = []
        if cfg["caller_limit"]:
            checks.append(("caller", caller, cfg["caller_limit"], cfg["caller_window"]))
        if cfg["prefix_limit"]:
            checks.append(
                (
                    "prefix",
                    dest[: 1 + cfg["prefix_digits"]],
                    cfg["prefix_limit"],
                    cfg["prefix_window"],
                )
            )
        if not checks:
            return None
        now = ctx.now()
        with ctx.store.transaction() as tx:
            for scope, key, _, _ in sorted(checks):  # one order everywhere: no deadlocks
                tx.lock(f"allowlist:{scope}:{key}")
            for scope, key, limit, window in checks:
                tx.execute(
                    "DELETE FROM allowlist_hits WHERE scope = ? AND key = ? AND at < ?",
                    (scope, key, now - window),
                )
                row = tx.one(
                    "SELECT COUNT(*) FROM allowlist_hits WHERE scope = ? AND key = ?", (scope, key)
                )
                if row is not None and row[0] >= limit:
                    return f"{scope} {key} reached {limit} calls per {window:g} s"
            for scope, key, _, _ in checks:
                tx.execute(
                    "INSERT INTO allowlist_hits (scope, key, at, callid) VALUES (?, ?, ?, ?)",
                    (scope, key, now, event.callid),
                )
        return None
