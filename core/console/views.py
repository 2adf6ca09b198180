"""The console's pages: what each one reads, rendered from ``templates/`` with bottle's
SimpleTemplate (``{{value}}`` is escaped; only HTML built here or by a plugin's page is
inserted raw).

Every read goes through ``Store.query`` (the read connection), on indexed columns, a
page at a time; the figures of the running server come from its memory
(``core.console.health``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bottle

from core.console import audit, health
from core.console import html as h
from core.console.page import ConsoleRequest
from core.plugins import list_installed

if TYPE_CHECKING:
    from core.console.app import Mounted, Req

log = logging.getLogger("switchboard.console")
TEMPLATES = Path(__file__).resolve().parent / "templates"
INBOX_PAGE = 100  # waiting callbacks listed
AUDIT_PAGE = 50

_templates: dict[str, bottle.SimpleTemplate] = {}
_templates_lock = threading.Lock()


def render(template_name: str, /, **values: Any) -> str:
    with _templates_lock:
        template = _templates.get(template_name)
        if template is None:
            template = _templates[template_name] = bottle.SimpleTemplate(
                name=template_name, lookup=[str(TEMPLATES)]
            )
    return str(template.render(h=h, **values))


# ---------------------------------------------------------------------------- the frame


@dataclass(frozen=True)
class Chrome:
    """What the layout around every page needs: the prefix of the console's URLs, the
    operator, the CSRF token of the logout form, the navigation, messages to show."""

    base: str
    user: str | None = None
    csrf: str = ""
    nav: tuple[tuple[str, str, bool], ...] = ()
    flash: tuple[tuple[str, str], ...] = ()
    wide: bool = False

    def url(self, path: str, **params: Any) -> str:
        return h.link(self.base, path, **params)


CORE_NAV = (("/", "Overview"), ("/calls", "Calls"), ("/inbox", "Inbox"))
END_NAV = (("/plugins", "Plugins"), ("/audit", "Audit log"))


def chrome(req: Req, *, wide: bool = False) -> Chrome:
    here = bottle.request.path
    items = [*CORE_NAV, *((m.path, m.page.title) for m in req.pages.pages), *END_NAV]

    def current(path: str) -> bool:
        if path == "/":
            return here == "/"
        return here == path or (path == "/calls" and here.startswith("/calls/"))

    flash, req.session.flash[:] = tuple(req.session.flash), []
    return Chrome(
        base=req.base,
        user=req.session.user,
        csrf=req.session.csrf,
        nav=tuple((req.base + path, label, current(path)) for path, label in items),
        flash=flash,
        wide=wide,
    )


def message_page(base: str, text: str, status: int) -> str:
    return render("message", c=Chrome(base=base), title=f"{status}", text=text)


def login_page(
    base: str,
    token: str,
    target: str,
    error: str | None,
    name: str,
    has_users: bool,
    has_token: bool,
    logged_out: bool,
) -> str:
    return render(
        "login",
        c=Chrome(base=base),
        title="Log in",
        token=token,
        target=target,
        error=error,
        name=name,
        has_users=has_users,
        has_token=has_token,
        logged_out=logged_out,
    )


# ---------------------------------------------------------------------------- overview


def overview(req: Req, host: health.Host, panels: list[tuple[Mounted, str | None]]) -> str:
    return render(
        "overview",
        c=chrome(req),
        title="Overview",
        health=health.plugins(req.runtime),
        config=health.configuration(host),
        panels=panels,
        now=time.time(),
    )


# ---------------------------------------------------------------------------- calls


def calls(req: Req) -> str:
    return render(
        "message",
        c=chrome(req),
        title="Calls",
        text="The list of calls comes with the query layer (core.calls).",
    )


def call(req: Req, callid: str) -> str:
    rows = req.store.traces(callid)
    if not rows:
        bottle.response.status = 404
    return render(
        "message",
        c=chrome(req),
        title=f"Call {callid}",
        text="The timeline of a call comes with the query layer (core.calls).",
    )


# ---------------------------------------------------------------------------- plugins


@dataclass(frozen=True)
class PluginView:
    name: str
    precedence: int
    version: str | None
    builtin: bool
    origin: str
    hooks: tuple[str, ...]
    settings: list[tuple[str, str, str]]  # key, value as JSON, where it came from
    health: health.PluginHealth
    pages: list[Mounted] = field(default_factory=list)


def _shown(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def plugins(req: Req) -> str:
    runtime = req.runtime
    settings = runtime.settings
    described = settings.describe()
    healthy = {p.plugin: p for p in health.plugins(runtime)}
    rows = []
    for rank, name in enumerate(runtime.plugins.order, 1):
        info = runtime.plugins.info[name]
        values = described["plugins"].get(name, {})
        rows.append(
            PluginView(
                name=name,
                precedence=rank,
                version=info.version,
                builtin=info.builtin,
                origin=info.origin,
                hooks=info.hooks,
                settings=[
                    (key, _shown(value), settings.source(f"plugins.{name}.{key}"))
                    for key, value in values.items()
                ],
                health=healthy[name],
                pages=[m for m in req.pages.pages if m.plugin == name],
            )
        )
    enabled = set(runtime.plugins.order)
    others = [info for info in list_installed() if info.name not in enabled]
    core = {k: v for k, v in described.items() if k not in ("plugins", "enabled")}
    return render(
        "plugins",
        c=chrome(req),
        title="Plugins",
        rows=rows,
        others=others,
        problems=req.pages.problems,
        core=[(section, _shown(values)) for section, values in core.items()],
    )


# ---------------------------------------------------------------------------- inbox


@dataclass(frozen=True)
class WaitingRow:
    callid: str
    event: str
    sub: str
    state: str
    attempts: int
    done: tuple[str, ...]
    next_at: float
    last_error: str | None

    @property
    def busy(self) -> bool:
        """Being processed right now (a retry would be refused)."""
        return self.state == "pending" and self.next_at >= time.time()


def inbox(req: Req) -> str:
    rows = req.store.query(
        "SELECT callid, event, sub, state, attempts, progress, lease_until, last_error "
        "FROM callbacks WHERE state IN ('pending', 'retry', 'parked') "
        f"AND event IN ('dice', 'notify') ORDER BY lease_until LIMIT {INBOX_PAGE + 1}"
    )
    items = [
        WaitingRow(c, e, s, st, a, tuple(n for n in (p or "").split(",") if n), lu, le)
        for c, e, s, st, a, p, lu, le in rows[:INBOX_PAGE]
    ]
    counts = dict(
        req.store.query(
            "SELECT state, COUNT(*) FROM callbacks WHERE state IN ('pending', 'retry', 'parked') "
            "AND event IN ('dice', 'notify') GROUP BY state"
        )
    )
    return render(
        "inbox",
        c=chrome(req),
        title="Inbox",
        items=items,
        more=len(rows) > INBOX_PAGE,
        counts={k: int(v) for k, v in counts.items()},
        retry_attempts=req.runtime.settings.policy["retry_attempts"],
    )


def _retry(req: Req, items: list[Any]) -> list[tuple[str, str, str | None]]:
    """Run the plugins' work of waiting callbacks again, with the core's retry
    (``Pipeline.retry``, as ``serve.py inbox retry`` does); not those a server is
    processing right now. Returns (call id, outcome, last error)."""
    pipeline = req.runtime.pipeline
    if pipeline is None:
        raise ValueError("the server is stopping: nothing can be retried now")
    now = time.time()
    out: list[tuple[str, str, str | None]] = []
    for item in items:
        if item.state == "pending" and item.lease_until >= now:
            out.append((item.callid, "being processed now", None))
            continue
        outcome = pipeline.retry(item)
        error = None
        if outcome != "done":
            left = req.store.waiting(item.callid)
            error = next((w.last_error for w in left if w.event == item.event), None)
        out.append((item.callid, outcome, error))
    return out


def retry_one(req: Req, callid: str, event: str, sub: str) -> str:
    items = [w for w in req.store.waiting(callid) if w.event == event and w.sub == sub]
    if not items:
        raise ValueError(f"nothing waits for {event} of call {callid} (done meanwhile?)")
    ((cid, outcome, error),) = _retry(req, items)
    if outcome == "being processed now":
        raise ValueError(f"{event} of call {cid} is being processed now; look again shortly")
    return f"retried {event} of call {cid}: {outcome}" + (f" ({error})" if error else "")


def retry_all(req: Req, limit: int) -> str:
    rows = req.store.query(
        "SELECT callid FROM callbacks WHERE state IN ('retry', 'parked') "
        f"AND event IN ('dice', 'notify') ORDER BY lease_until LIMIT {int(limit)}"
    )
    items = [w for (callid,) in rows for w in req.store.waiting(callid)]
    results = _retry(req, items)
    done = sum(1 for _, outcome, _ in results if outcome == "done")
    return f"retried {len(results)} waiting callback(s): {done} done, {len(results) - done} not"


# ---------------------------------------------------------------------------- audit


def audit_log(req: Req) -> str:
    raw = bottle.request.query.getunicode("before")
    try:
        before = float(raw) if raw else None
    except ValueError:
        before = None
    entries, more = audit.recent(req.store, before=before, limit=AUDIT_PAGE)
    return render(
        "audit",
        c=chrome(req),
        title="Audit log",
        entries=entries,
        more=more,
        first=before is None,
    )


# ---------------------------------------------------------------------------- plugins' pages


def plugin_page(req: Req, mounted: Mounted, request: ConsoleRequest) -> str:
    body: str | None
    try:
        body = mounted.page.render(request)
    except Exception:
        log.exception("console: the page %s failed", mounted.path)
        bottle.response.status = 500
        body = None
    return render(
        "plugin_page",
        c=chrome(req),
        title=mounted.page.title,
        plugin=mounted.plugin,
        body=body,
    )

