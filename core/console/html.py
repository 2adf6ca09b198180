"""Small pieces every console page uses: escaping, URLs with query strings, times in
UTC, durations, and reading times typed into a form."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from core.calls import MAX_TIME
from core.console.page import BadParameter

esc = html.escape
_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,20})?", re.ASCII)


def query(params: Mapping[str, Any]) -> str:
    """``?a=1&b=2`` of the params that are set (not None, not empty, not False)."""
    kept = {
        k: ("1" if v is True else v) for k, v in params.items() if v not in (None, "", False)
    }
    return "?" + urlencode(kept) if kept else ""


def link(base: str, path: str, **params: Any) -> str:
    return base + path + query(params)


def call_path(callid: str) -> str:
    return "/calls/" + quote(callid, safe="")


def _utc(moment: float | datetime) -> datetime:
    """An epoch time or a datetime (naive ones are UTC) as an aware UTC datetime."""
    if isinstance(moment, datetime):
        stamp = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    else:
        stamp = datetime.fromtimestamp(float(moment), UTC)
    return stamp.astimezone(UTC)


def when(moment: float | datetime | None) -> str:
    """A moment as operators read it: ``2026-11-29 08:00:03Z`` (UTC)."""
    if moment is None:
        return "-"
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(moment: float | datetime | None) -> str:
    """The machine form of a moment, for ``<time datetime=...>``."""
    if moment is None:
        return ""
    return _utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


def form_time(moment: float | datetime | None) -> str:
    """A moment as a ``datetime-local`` input shows it (UTC, to the minute)."""
    if moment is None:
        return ""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M")


def epoch_param(name: str, text: str | None) -> float | None:
    """A query parameter holding epoch seconds (a page's cursor), ``None`` when empty;
    raises ``BadParameter`` naming it unless it is ASCII digits (a fraction allowed:
    no sign, exponent, NaN or infinity, which ``float`` would take) up to ``MAX_TIME``."""
    if text is None or not text.strip():
        return None
    if not _SECONDS.fullmatch(text.strip()):
        raise BadParameter(name, "not a number of seconds")
    value = float(text)
    if value > MAX_TIME:
        raise BadParameter(name, "out of range")
    return value


def parse_epoch(text: str | None) -> float | None:
    """``parse_time`` as epoch seconds; a time no datetime holds (year 1 east of UTC)
    is a ``ValueError`` too."""
    stamp = parse_time(text)
    if stamp is None:
        return None
    try:
        return stamp.timestamp()
    except OverflowError:
        raise ValueError(f"not a time: {text!r}") from None


def parse_time(text: str | None) -> datetime | None:
    """A time typed into a filter (``2026-11-29T08:00``, ISO 8601, UTC unless it says
    otherwise); ``None`` when empty. Raises ``ValueError`` when it is not a time."""
    if not text or not text.strip():
        return None
    stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def seconds(value: float | int | None) -> str:
    """A duration: ``95 s (1:35)``."""
    if value is None:
        return "-"
    total = int(value)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    shown = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{total} s ({shown})"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
