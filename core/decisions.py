"""Plugin decisions and the rules that merge them into one answer (DESIGN.md).

A plugin answers a decision hook with a ``Decision`` (or ``None``: no opinion). The core
merges every enabled plugin's decision, in precedence order (the order of
``[plugins] enabled`` in config.toml), by these rules:

1. ``deny``: any deny wins. The answer is ``hangup`` with the denying plugins'
   instructions only.
2. ``proposal``: otherwise the action proposed by the highest-precedence plugin. A
   different proposal from a later plugin is a conflict, recorded in the trace.
3. ``allow-default`` / ``event-default``: no proposal. The default action carried by the
   highest-precedence ``allow`` (e.g. the allowlist's connectPstn), else the configured
   default for the event (ICE: hangup unless ``policy.ice_default = "connect"``; ACE and
   PIE: continue).
4. ``maxDuration`` is the minimum of every cap and the action's own value, clamped to
   Sinch's limit. A cap on an action that cannot carry ``maxDuration`` cannot be
   enforced: the call is hung up (rule ``cap-unenforceable``), failing closed.
5. Instructions are concatenated in precedence order; an ``answer`` instruction after
   the first is dropped (two deniers that both answer before their prompts answer once).
6. The pipeline then validates the answer for the event; an illegal answer is never
   sent, the configured fallback is (rule ``invalid-answer``).

An answer whose action carries ``suppressCallbacks: true`` makes Sinch send no ACE and no
DiCE for the call. While any enabled plugin relies on the DiCE (``needs_callbacks``: the
pipeline passes the plugins implementing ``switchboard_dice``, unless
``policy.allow_suppress_callbacks`` is true), the merge refuses it: ``RefusedAnswer``,
and the pipeline sends the fallback (rule ``callbacks-suppressed``). Otherwise a prepaid
call would go unsettled (its reservation released by the sweeper) and unrecorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.svaml import (
    Action,
    Answer,
    ConnectPstn,
    Continue,
    Hangup,
    Instruction,
    Say,
    Svaml,
    SvamlError,
)


class DecisionError(ValueError):
    """A Decision was built with values that make no sense."""


class RefusedAnswer(SvamlError):
    """The merged answer is one the configuration forbids sending; ``rule`` names why
    (the rule recorded in the trace and counted in metrics, with the fallback sent)."""

    def __init__(self, rule: str, field: str, message: str, plugins: Sequence[str] = ()) -> None:
        super().__init__(field, message)
        self.rule = rule
        self.plugins = list(plugins)


@dataclass(frozen=True)
class Decision:
    """One plugin's opinion on one callback. Build it with the class methods."""

    deny: bool = False
    allow: bool = False
    action: Action | None = None
    default_action: Action | None = None
    max_duration: int | None = None
    instructions: tuple[Instruction, ...] = ()
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))
        if self.deny and (self.allow or self.action or self.default_action):
            raise DecisionError("a deny cannot also allow or propose an action")
        for name in ("action", "default_action"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Action):
                raise DecisionError(f"{name} must be an SVAML action, got {type(value).__name__}")
        for ins in self.instructions:
            if not isinstance(ins, Instruction):
                raise DecisionError(
                    f"instructions must be SVAML instructions, got {type(ins).__name__}"
                )
        if self.max_duration is not None:
            if isinstance(self.max_duration, bool) or not isinstance(self.max_duration, int):
                raise DecisionError("max_duration must be an integer number of seconds")
            if self.max_duration < 1:
                raise DecisionError("max_duration must be at least 1 second; deny the call instead")
        if not isinstance(self.reason, str):
            raise DecisionError("reason must be a string")

    @classmethod
    def denied(
        cls,
        reason: str,
        *,
        prompt: str | None = None,
        locale: str | None = None,
        instructions: Sequence[Instruction] = (),
        answer: bool = False,
    ) -> Decision:
        """Refuse the call: the answer will be hangup, after ``prompt`` if given.

        ``answer=True`` (ICE only: ``answer`` is illegal in other answers) puts an
        ``answer`` instruction before the prompt: Sinch advises it, as not every
        provider plays a ``say`` to a call not yet answered; answering may start billing.
        """
        extra: tuple[Instruction, ...] = ()
        if prompt:
            extra = (*((Answer(),) if answer else ()), Say(text=prompt, locale=locale))
        return cls(deny=True, reason=reason, instructions=(*instructions, *extra))

    @classmethod
    def allowed(
        cls,
        reason: str = "",
        *,
        action: Action | None = None,
        max_duration: int | None = None,
        instructions: Sequence[Instruction] = (),
    ) -> Decision:
        """Allow the call. ``action`` is used only if no plugin proposes one (rule 3)."""
        return cls(
            allow=True,
            default_action=action,
            max_duration=max_duration,
            instructions=tuple(instructions),
            reason=reason,
        )

    @classmethod
    def propose(
        cls,
        action: Action,
        reason: str = "",
        *,
        max_duration: int | None = None,
        instructions: Sequence[Instruction] = (),
    ) -> Decision:
        """Propose the action to answer with (rule 2: highest precedence wins)."""
        return cls(
            action=action,
            max_duration=max_duration,
            instructions=tuple(instructions),
            reason=reason,
        )

    @classmethod
    def cap(cls, seconds: int, reason: str = "") -> Decision:
        """Limit the call to ``seconds`` (rule 4: the smallest cap wins)."""
        return cls(max_duration=seconds, reason=reason)

    @classmethod
    def add(cls, *instructions: Instruction, reason: str = "") -> Decision:
        """Add instructions to whatever answer is chosen (rule 5)."""
        return cls(instructions=instructions, reason=reason)

    @property
    def kind(self) -> str:
        if self.deny:
            return "deny"
        if self.action is not None:
            return "propose"
        if self.allow:
            return "allow"
        if self.max_duration is not None:
            return "cap"
        return "instructions"

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the trace."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.reason:
            out["reason"] = self.reason
        if self.action is not None:
            out["action"] = self.action.to_dict()
        if self.default_action is not None:
            out["default_action"] = self.default_action.to_dict()
        if self.max_duration is not None:
            out["max_duration"] = self.max_duration
        if self.instructions:
            out["instructions"] = [i.to_dict() for i in self.instructions]
        return out


@dataclass
class Outcome:
    """The merged answer and why."""

    svaml: Svaml
    rule: str
    decided_by: list[str] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    capped_by: str | None = None


def event_default(event: str, ice_default: str = "deny") -> Svaml:
    """Rule 3's configured default when nobody proposes an action."""
    if event == "ice":
        return Svaml(ConnectPstn() if ice_default == "connect" else Hangup())
    return Svaml(Continue())


def merge(
    event: str,
    decisions: Sequence[tuple[str, Decision | None]],
    *,
    ice_default: str = "deny",
    needs_callbacks: Sequence[str] = (),
) -> Outcome:
    """Merge ``(plugin name, decision)`` pairs given in precedence order (rules 1-5).

    ``needs_callbacks`` names the plugins that rely on the call's DiCE: an answer that
    suppresses callbacks raises ``RefusedAnswer`` while it is not empty.
    """
    voiced = [(name, d) for name, d in decisions if d is not None]

    deniers = [(name, d) for name, d in voiced if d.deny]
    if deniers:
        instructions = _concatenate(d for _, d in deniers)
        return Outcome(Svaml(Hangup(), instructions), "deny", [n for n, _ in deniers])

    outcome: Outcome
    proposers = [(name, d) for name, d in voiced if d.action is not None]
    if proposers:
        winner, chosen = proposers[0]
        action: Action = chosen.action  # type: ignore[assignment]
        outcome = Outcome(Svaml(action), "proposal", [winner])
        for name, d in proposers[1:]:
            if d.action != action:
                outcome.conflicts.append(
                    {"plugin": name, "proposed": d.action.to_dict(), "lost_to": winner}  # type: ignore[union-attr]
                )
    else:
        allow = next(((n, d) for n, d in voiced if d.allow and d.default_action is not None), None)
        if allow is not None:
            action = allow[1].default_action  # type: ignore[assignment]
            outcome = Outcome(Svaml(action), "allow-default", [allow[0]])
        else:
            action = event_default(event, ice_default).action
            outcome = Outcome(Svaml(action), "event-default")

    caps = [(name, d.max_duration) for name, d in voiced if d.max_duration is not None]
    if caps:
        if not action.caps_duration:
            names = [n for n, _ in caps]
            outcome.notes.append(
                f"{action.name} cannot carry maxDuration; capped by {', '.join(names)}"
            )
            return Outcome(
                Svaml(Hangup()), "cap-unenforceable", names, outcome.conflicts, outcome.notes
            )
        values = [v for _, v in caps if v is not None]
        own = getattr(action, "max_duration", None)
        if own is not None:
            values.append(own)
        limit = min(min(values), action.duration_limit)
        if limit != own:
            action = action.replace(max_duration=limit)
            capper = min(caps, key=lambda c: c[1] or 0)[0]
            outcome.notes.append(f"maxDuration {limit} s set by {capper}")
            outcome.capped_by = capper

    if needs_callbacks and getattr(action, "suppress_callbacks", None) is True:
        raise RefusedAnswer(
            "callbacks-suppressed",
            "action.suppressCallbacks",
            f"{action.name} with suppressCallbacks true (from {outcome.rule} by "
            f"{', '.join(outcome.decided_by) or 'the configured default'}) would make Sinch "
            f"send no ACE and no DiCE, which {', '.join(needs_callbacks)} rely on; "
            "policy.allow_suppress_callbacks = true allows it",
            outcome.decided_by,
        )
    outcome.svaml = Svaml(action, _concatenate(d for _, d in voiced))
    return outcome


def _concatenate(decisions: Iterable[Decision]) -> tuple[Instruction, ...]:
    """Rule 5: every decision's instructions in order, the call answered once at most."""
    out: list[Instruction] = []
    answered = False
    for d in decisions:
        for ins in d.instructions:
            if isinstance(ins, Answer):
                if answered:
                    continue
                answered = True
            out.append(ins)
    return tuple(out)
