"""crm's settings: the keys it declares, and the check they need together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core import Key, positive


def _url(value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")


KEYS = {
    "webhook_url": Key(str, None, "where call records are POSTed (none: record only)", check=_url),
    "webhook_secret": Key(
        str, None, "HMAC key for X-Switchboard-Signature", secret=True, env="SWITCHBOARD_CRM_SECRET"
    ),
    "delivery_timeout": Key(float, 5.0, "seconds per delivery attempt", check=positive),
    "max_attempts": Key(
        int, 8, "attempts before a record goes to the dead-letter table", check=positive
    ),
    "backoff": Key(float, 2.0, "seconds before the first retry; doubles each time", check=positive),
    "max_backoff": Key(float, 600.0, "longest wait between retries", check=positive),
    "poll_interval": Key(float, 1.0, "seconds between outbox checks when idle", check=positive),
    "batch": Key(int, 20, "records attempted in one pass, each claimed on its own", check=positive),
}


def check(config: Mapping[str, Any]) -> None:
    """Refuse a validated ``config`` whose keys do not fit together."""
    if config["webhook_url"] and not config["webhook_secret"]:
        raise ValueError(
            "webhook_url needs webhook_secret (or SWITCHBOARD_CRM_SECRET in the environment)"
        )
