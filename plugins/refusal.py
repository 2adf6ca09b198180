"""How the built-in plugins deny a call: hangup, after ``deny_prompt`` when one is set.

The allowlist and credit deny the same way, from the same three settings:
``deny_prompt`` (said before the hangup; unset: a plain hangup), ``prompt_locale`` and
``deny_answer`` (answer the call before the prompt, as Sinch advises, so that every
provider plays it; false: say without answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core import Decision, Key

DENY_ANSWER = Key(
    bool,
    True,
    "answer the call before deny_prompt, as Sinch advises, so that every provider plays "
    "it (answering may start billing the inbound leg); false: say without answer",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The way a plugin denies: its prompt, the prompt's locale, answer first or not."""

    prompt: str | None = None
    locale: str = "en-US"
    answer: bool = True

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Refusal:
        """From a plugin's ``deny_prompt``, ``prompt_locale`` and ``deny_answer``."""
        return cls(config["deny_prompt"], config["prompt_locale"], config["deny_answer"])

    def deny(self, reason: str) -> Decision:
        return Decision.denied(
            reason,
            prompt=self.prompt,
            locale=self.locale if self.prompt else None,
            answer=self.answer,
        )
