"""The console's pages: what each one reads, rendered from ``templates/`` with bottle's
SimpleTemplate (``{{value}}`` is escaped; only HTML built here or by a plugin's page is
inserted raw).

Every read goes through ``Store.inspect`` (the operators' reads, apart from the
callbacks' own), on indexed columns, a page at a time; the figures of the running server come from its memory
(``core.console.health``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bottle

from core import calls as calls_mod
from core.console import audit, health
from core.console import html as h
from core.console.page import BadParameter, ConsoleRequest, integer
from core.metrics import FALLBACK_RULES
from core.plugins import list_installed
from core.store import InspectTimeout, redact_url

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
END_NAV = (
    ("/replay", "Replay"),
    ("/revisions", "Revisions"),
    ("/plugins", "Plugins"),
    ("/audit", "Audit log"),
)


def chrome(req: Req, *, wide: bool = False) -> Chrome:
    here = bottle.request.path
    items = [*CORE_NAV, *((m.path, m.page.title) for m in req.pages.pages), *END_NAV]

    def current(path: str) -> bool:
        if path == "/":
            return here == "/"
        return here == path or (path == "/calls" and here.startswith("/calls/"))

    flash = req.take_flash()
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

WINDOWS = (1, 3, 6, 24)  # hours the Overview can cover
DEFAULT_WINDOW = 3


class Overviews:
    """The Overview reads every call of its window, on the callbacks' CPU: one is computed
    at a time (operators asking at once wait for it and share it), and one that took
    longer than ``slow`` seconds is shown again for ``fresh`` seconds instead of being
    computed anew, so operators refreshing it cannot multiply that work. A quick one (a
    small store) is always fresh."""

    def __init__(self, fresh: float = 15.0, slow: float = 0.05) -> None:
        self.fresh, self.slow = fresh, slow
        self._lock = threading.Lock()
        self._kept: dict[tuple[int, float, float], tuple[float, calls_mod.Overview]] = {}

    def get(self, store: Any, since: float, until: float) -> calls_mod.Overview:
        key = (id(store), since, until)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and time.monotonic() < kept[0]:
                return kept[1]
            began = time.monotonic()
            ov = calls_mod.overview(store, since, until)
            took = time.monotonic() - began
            self._kept = {k: v for k, v in self._kept.items() if v[0] > began}  # drop stale
            if took > self.slow:
                self._kept[key] = (began + took + self.fresh, ov)
            return ov


OVERVIEWS = Overviews()


def overview(req: Req, host: health.Host, panels: list[tuple[Mounted, str | None]]) -> str:
    hours = integer("hours", bottle.request.query.getunicode("hours"), minimum=1, maximum=24)
    if hours is None:
        hours = DEFAULT_WINDOW
    elif hours not in WINDOWS:
        raise BadParameter("hours", f"one of {', '.join(map(str, WINDOWS))}")
    now = time.time()
    until = (now // 60 + 1) * 60  # to the end of this minute
    since = until - hours * 3600
    ov = OVERVIEWS.get(req.store, since, until)
    window = {"since": h.form_time(since), "until": h.form_time(until)}
    return render(
        "overview",
        c=chrome(req),
        title="Overview",
        ov=ov,
        hours=hours,
        windows=WINDOWS,
        window=window,
        chart=chart(req.base, ov),
        health=health.plugins(req.runtime),
        config=health.configuration(host),
        panels=panels,
    )


def chart(base: str, ov: calls_mod.Overview) -> str:
    """Calls per minute as an SVG bar chart (no script): each bar links to that
    minute's calls (out of the tab order: the table under the chart has the same links)."""
    minutes = ov.per_minute
    if not minutes:
        return ""
    width, height, bar = len(minutes) * 4, 100, 3
    top = max((n for _, n in minutes), default=0) or 1
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height + 2}" preserveAspectRatio="none" '
        f'role="img" aria-label="Calls per minute, {h.when(ov.since)} to {h.when(ov.until)}, '
        f'at most {top} a minute">',
        f'<line class="axis" x1="0" y1="{height}" x2="{width}" y2="{height}"/>',
    ]
    for i, (minute, n) in enumerate(minutes):
        if not n:
            continue
        tall = max(1.0, n / top * (height - 4))
        href = h.esc(
            h.link(base, "/calls", since=h.form_time(minute), until=h.form_time(minute + 60))
        )
        parts.append(
            f'<a href="{href}" tabindex="-1"><title>{h.esc(h.when(minute))}: {n} call(s)</title>'
            f'<rect class="bar" x="{i * 4}" y="{height - tall:.1f}" width="{bar}" '
            f'height="{tall:.1f}"/></a>'
        )
    parts.append("</svg>")
    parts.append(
        f'<p class="chart-axis"><span>{h.esc(h.when(ov.since))}</span>'
        f"<span>calls per minute, at most {top}</span>"
        f"<span>{h.esc(h.when(ov.until))}</span></p>"
    )
    return "".join(parts)


# ---------------------------------------------------------------------------- calls

PAGE = 50
OUTCOMES = (
    "connectPstn",
    "connectSip",
    "connectMxp",
    "connectConf",
    "connectStream",
    "runMenu",
    "park",
    "continue",
    "hangup",
)
RULES = ("deny", "proposal", "allow-default", "event-default", "cap-unenforceable")
FIELDS = ("number", "caller", "destination", "outcome", "rule", "plugin", "since", "until")


def filters_of(query: Any) -> tuple[calls_mod.Filters, dict[str, str], list[str]]:
    """The filters of the Calls form (a GET query), the values to show in it again, and
    what was wrong with them (a time that is not one is ignored, and said)."""
    values = {name: (query.getunicode(name) or "").strip()[:64] for name in FIELDS}
    flags = {name: bool(query.getunicode(name)) for name in ("duplicates", "fallbacks")}
    problems = []
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            times[name] = h.parse_epoch(values[name])
        except ValueError:
            problems.append(f"{name}: not a time (use 2026-11-29T08:00, UTC)")
            values[name] = ""
            times[name] = None
    filters = calls_mod.Filters(
        number=values["number"] or None,
        caller=values["caller"] or None,
        destination=values["destination"] or None,
        outcome=values["outcome"] or None,
        rule=values["rule"] or None,
        plugin=values["plugin"] or None,
        duplicates=flags["duplicates"],
        fallbacks=flags["fallbacks"],
        since=times["since"],
        until=times["until"],
    )
    shown = {**values, **{k: "1" if v else "" for k, v in flags.items()}}
    return filters, shown, problems


def calls(req: Req) -> str:
    query = bottle.request.query
    filters, shown, problems = filters_of(query)
    after = query.getunicode("after") or None
    try:
        page = calls_mod.recent_calls(
            req.store, filters, limit=PAGE, after=after, plugins=req.runtime.plugins
        )
    except ValueError as exc:  # a cursor that is not one
        problems.append(f"after: {exc}")
        page = calls_mod.recent_calls(req.store, filters, limit=PAGE, plugins=req.runtime.plugins)
        after = None
    if problems:  # the form again, saying what was wrong: the request's fault
        bottle.response.status = 400
    filtered = any(shown.values())
    return render(
        "calls",
        c=chrome(req, wide=True),
        title="Calls",
        page=page,
        shown=shown,
        problems=problems,
        filtered=filtered,
        first=after is None,
        outcomes=OUTCOMES,
        rules=(*RULES, *sorted(FALLBACK_RULES)),
        plugin_names=req.runtime.plugins.order,
    )


def call(req: Req, callid: str) -> str:
    found = calls_mod.timeline(req.store, callid, plugins=req.runtime.plugins)
    if found is None:
        bottle.response.status = 404
        return render(
            "message",
            c=chrome(req),
            title="No such call",
            text=f"Nothing is recorded for the call id {callid}.",
        )
    capping = None
    row = found.row
    if row is not None and row.capped_by:
        ice = next((cb for cb in found.callbacks if cb.event == "ice" and cb.trace), None)
        if ice is not None and ice.trace is not None:
            try:
                capping = ice.trace.plugin(row.capped_by)
            except KeyError:
                capping = None
    return render(
        "call",
        c=chrome(req, wide=True),
        title=f"Call {callid}",
        tl=found,
        row=row,
        capping=capping,
        pretty=pretty,
        link=bottle.request.url,
    )


def pretty(value: Any) -> str:
    """JSON of a (possibly frozen) answer or decision, indented, for a ``<pre>``."""
    return json.dumps(_thaw(value), indent=2, ensure_ascii=False, default=str)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


# ---------------------------------------------------------------------------- plugins


@dataclass(frozen=True)
class PluginView:
    name: str
    precedence: int | None  # None: a shadow plugin
    version: str | None
    builtin: bool
    origin: str
    hooks: tuple[str, ...]
    settings: list[tuple[str, str, str]]  # key, value as JSON, where it came from
    health: health.PluginHealth
    pages: list[Mounted] = field(default_factory=list)


def scrubbed(value: Any, keep_user: bool) -> Any:
    """``value`` with the secrets of any URL in it removed (see ``_shown``)."""
    if isinstance(value, str):
        return redact_url(value, keep_user=keep_user)
    if isinstance(value, Mapping):
        return {k: scrubbed(v, keep_user) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(v, keep_user) for v in value]
    return value


def _shown(value: Any, keep_user: bool = False) -> str:
    """A setting as JSON, with the secrets of any URL in it removed (a webhook URL may
    carry some even though its key is not marked secret): its whole userinfo (or only
    the password, ``keep_user``: the store's URL) and parameters named like secrets."""
    return json.dumps(scrubbed(value, keep_user), default=str, ensure_ascii=False)


def plugins(req: Req) -> str:
    runtime = req.runtime
    settings = runtime.settings
    described = settings.describe()
    healthy = {p.plugin: p for p in health.plugins(runtime)}
    rows = []
    ranked: list[tuple[int | None, str]] = list(enumerate(runtime.plugins.order, 1))
    for rank, name in [*ranked, *((None, name) for name in runtime.plugins.shadow)]:
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
    loaded = {*runtime.plugins.order, *runtime.plugins.shadow}
    others = [info for info in list_installed() if info.name not in loaded]
    core = {k: v for k, v in described.items() if k not in ("plugins", "enabled", "shadow")}
    return render(
        "plugins",
        c=chrome(req),
        title="Plugins",
        rows=rows,
        others=others,
        problems=req.pages.problems,
        core=[(section, _shown(values, keep_user=True)) for section, values in core.items()],
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
    rows = req.store.inspect(
        "SELECT callid, event, sub, state, attempts, progress, lease_until, last_error "
        "FROM callbacks WHERE state IN ('pending', 'retry', 'parked') "
        f"AND event IN ('dice', 'notify') ORDER BY lease_until LIMIT {INBOX_PAGE + 1}"
    )
    items = [
        WaitingRow(c, e, s, st, a, tuple(n for n in (p or "").split(",") if n), lu, le)
        for c, e, s, st, a, p, lu, le in rows[:INBOX_PAGE]
    ]
    counts = dict(
        req.store.inspect(
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
    rows = req.store.inspect(
        "SELECT callid FROM callbacks WHERE state IN ('retry', 'parked') "
        f"AND event IN ('dice', 'notify') ORDER BY lease_until LIMIT {int(limit)}"
    )
    items = [w for (callid,) in rows for w in req.store.waiting(callid)]
    results = _retry(req, items)
    done = sum(1 for _, outcome, _ in results if outcome == "done")
    return f"retried {len(results)} waiting callback(s): {done} done, {len(results) - done} not"


# ---------------------------------------------------------------------------- audit


def audit_log(req: Req) -> str:
    before = h.epoch_param("before", bottle.request.query.getunicode("before"))
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
    except (BadParameter, InspectTimeout):
        raise  # the console says so: a parameter it cannot take, a query that took too long
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

