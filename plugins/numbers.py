"""Number patterns shared by the built-in plugins: exact E.164 numbers and prefixes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_PATTERN = re.compile(r"^\+?[0-9]{1,15}\*?$")


@dataclass(frozen=True)
class Pattern:
    """``+15612600684`` (exact), ``+1900*`` (prefix) or ``*`` (every number)."""

    digits: str  # E.164 with '+', or '' for '*'
    exact: bool
    text: str

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact beats any prefix; a longer prefix beats a shorter one."""
        return (1 if self.exact else 0, len(self.digits))

    def matches(self, number: str) -> bool:
        return number == self.digits if self.exact else number.startswith(self.digits)


def parse_pattern(text: str) -> Pattern:
    raw = text.strip().replace(" ", "")
    if raw == "*":
        return Pattern("", False, text)
    if not _PATTERN.match(raw):
        raise ValueError(
            f"{text!r} is not a number pattern (+E.164 number, or digits ending in '*')"
        )
    exact = not raw.endswith("*")
    digits = raw.rstrip("*")
    if not digits.startswith("+"):
        digits = "+" + digits
    return Pattern(digits, exact, text)


def parse_patterns(texts: Iterable[str], where: str) -> list[Pattern]:
    out = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"{where}: {text!r} is not a string")
        try:
            out.append(parse_pattern(text))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


class Rules:
    """Allow and deny patterns compiled for lookup by the number's own prefixes: the
    most specific matching rule wins (exact beats any prefix, a longer prefix beats a
    shorter one) and deny wins a tie. A lookup costs one dictionary probe per distinct
    prefix length, however many rules there are."""

    def __init__(self, allow: Iterable[Pattern], deny: Iterable[Pattern]) -> None:
        self.exact: dict[str, tuple[str, Pattern]] = {}
        self.prefix: dict[str, tuple[str, Pattern]] = {}
        for verdict, patterns in (("allow", allow), ("deny", deny)):
            for p in patterns:
                table = self.exact if p.exact else self.prefix
                held = table.get(p.digits)
                if held is None or (verdict == "deny" and held[0] == "allow"):
                    table[p.digits] = (verdict, p)  # the first of equals is named
        self.lengths = sorted({len(d) for d in self.prefix}, reverse=True)

    def verdict(self, number: str) -> tuple[str, Pattern] | None:
        """``(verdict, rule)`` of the most specific rule matching ``number``, or None."""
        hit = self.exact.get(number)
        if hit is not None:
            return hit
        for n in self.lengths:
            if n <= len(number):
                hit = self.prefix.get(number[:n])
                if hit is not None:
                    return hit
        return None


def longest_prefix(number: str, prefixes: Sequence[str]) -> str | None:
    """The longest of ``prefixes`` that ``number`` starts with."""
    best = None
    for prefix in prefixes:
        if number.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best
