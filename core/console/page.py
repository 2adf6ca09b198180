"""What a plugin adds to the operator console: pages, panels on the Overview, and the
actions their forms post.

A plugin returns ``ConsolePage`` objects from ``switchboard_console_pages()``; the
console serves each at ``/plugins/<plugin>/<path>``, lists it in its navigation, draws
its ``panel`` on the Overview, and runs its ``actions`` for the forms the page posts,
after checking the session and the CSRF token and writing the audit log. A page's
functions receive a ``ConsoleRequest`` and return HTML (the plugin escapes what it
shows: ``html.escape``). Both types are public (``from core import ConsolePage,
ConsoleRequest``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode

from core.store import Store

_EMPTY: Mapping[str, Any] = MappingProxyType({})
MAX_INTEGER = 2**63 - 1  # the largest integer either store holds


class BadParameter(ValueError):
    """A query parameter a page cannot take (not a number, out of range, a NUL
    character): the console answers ``400`` with this message, which names it."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name[:40]}: {why}")
        self.name = name


@dataclass(frozen=True)
class ConsoleRequest:
    """One request to a plugin's page, panel or action.

    ``user``: who is logged in. ``params``: the query string, one value per name.
    ``form``: the posted fields of an action (without the console's own ``_csrf`` and
    ``_action``); empty for a page. ``store``: the shared store; read with
    ``store.inspect`` (the operators' reads, which never hold up the callbacks' own),
    on indexed columns, a page at a time. ``config``: the plugin's own settings
    (read-only). ``plugin``: the plugin's name. ``base``: the console's URL prefix (behind a proxy).
    """

    user: str
    plugin: str
    store: Store
    config: Mapping[str, Any]
    params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    form: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    csrf_token: str = ""
    base: str = ""
    page_path: str = ""

    def integer(self, name: str, *, minimum: int = 0, maximum: int = MAX_INTEGER) -> int | None:
        """The query parameter ``name`` as a whole number from ``minimum`` to ``maximum``
        (ASCII digits, a sign before them); ``None`` when it is absent or empty. Any
        other value raises ``BadParameter``: the console answers ``400`` naming it,
        rather than letting the number reach the store (where one past 2**63 fails)."""
        return integer(name, self.params.get(name), minimum=minimum, maximum=maximum)

    def url(self, path: str | None = None, **params: Any) -> str:
        """The URL of one of this plugin's pages (``path`` as in its ``ConsolePage``;
        default: the page being shown), with a query string of the ``params`` that are
        not ``None``."""
        path = self.page_path if path is None else path
        target = f"{self.base}/plugins/{quote(self.plugin)}" + (f"/{path}" if path else "")
        return target + _query(params)

    def call_url(self, callid: str) -> str:
        """The console's page of one call (its timeline and traces)."""
        return f"{self.base}/calls/{quote(callid, safe='')}"

    def calls_url(self, **filters: Any) -> str:
        """The console's list of calls with these filters (``number``, ``caller``,
        ``destination``, ``outcome``, ``rule``, ``plugin``, ...)."""
        return f"{self.base}/calls" + _query(filters)

    def csrf_field(self) -> str:
        """The hidden input every form that changes something must carry."""
        return f'<input type="hidden" name="_csrf" value="{html.escape(self.csrf_token)}">'

    def action_form(
        self,
        action: str,
        button: str,
        *,
        hidden: Mapping[str, str] = _EMPTY,
        fields: str = "",
        path: str | None = None,
        css: str = "inline",
    ) -> str:
        """A form that posts ``action`` (a key of the page's ``actions``) to a page of
        this plugin (default: this page, with its query string, where the console
        returns after the action): the CSRF field, ``hidden`` values, ``fields`` (HTML of
        labelled inputs, escaped by the caller) and a submit button."""
        target = self.url(None, **self.params) if path is None else self.url(path)
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(str(v))}">'
            for k, v in hidden.items()
        )
        return (
            f'<form method="post" action="{html.escape(target)}" '
            f'class="{html.escape(css)}">{self.csrf_field()}'
            f'<input type="hidden" name="_action" value="{html.escape(action)}">{inputs}'
            f'{fields}<button type="submit">{html.escape(button)}</button></form>'
        )


Render = Callable[[ConsoleRequest], str]


@dataclass(frozen=True)
class ConsolePage:
    """A page of a plugin in the operator console.

    ``path``: where it is served, below ``/plugins/<plugin>/`` (``"accounts"``; ``""``
    for the plugin's own address); letters, digits, ``-``, ``_`` and ``/``.
    ``title``: its heading and its link in the navigation.
    ``render(request) -> str``: the page's HTML (the content under its heading).
    ``actions``: name -> ``function(request) -> str``, run for a form posting
    ``_action=<name>`` to this page (``ConsoleRequest.action_form`` builds one). The
    console checks the session and the CSRF token first (403 and nothing run when
    either is wrong), writes the audit log (who, when, the action, and the text the
    function returns, which should say what changed), then redirects back to the
    page showing that text. Raise ``ValueError`` to refuse: its message is shown and
    audited, nothing else happens.
    ``panel(request) -> str``: optional HTML drawn on the Overview (a few figures, each
    linking to where they come from).
    """

    path: str
    title: str
    render: Render
    actions: Mapping[str, Render] = field(default_factory=dict)
    panel: Render | None = None


_INTEGER = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)


def integer(
    name: str, text: str | None, *, minimum: int = 0, maximum: int = MAX_INTEGER
) -> int | None:
    """``text`` (the value of the parameter ``name``) as a whole number within
    ``[minimum, maximum]``, ``None`` when empty; raises ``BadParameter`` otherwise."""
    if text is None or not text.strip():
        return None
    shown = f"{minimum} to {maximum}"
    if not _INTEGER.fullmatch(text.strip()):
        raise BadParameter(name, f"not a whole number (use {shown})")
    value = int(text.strip())
    if not minimum <= value <= maximum:
        raise BadParameter(name, f"out of range (use {shown})")
    return value


def _query(params: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v is not None and v != ""}
    return "?" + urlencode(kept) if kept else ""
