"""The console's bottle app: login and sessions, CSRF checks, the core's pages, the
plugins' pages and actions, and the audit log of every change.

``make_console(host)`` returns the WSGI app for a ``core.console.health.Host`` (the
server's ``Switch``, whose runtime a reload replaces; ``Fixed(runtime)`` in tests).

* Every page needs a session; without one a ``GET`` is sent to ``/login``, anything
  else gets 403.
* Every ``POST`` (login, logout, retry, a replay, a plugin's action) must carry the form's CSRF
  token; a request without it, or with a wrong one, is refused with 403 before
  anything runs.
* Every change is audited before it runs (``core.console.audit``).
* A parameter a page cannot take is a ``400`` that names it, never a ``500``: a number
  or a position out of range or not one (``BadParameter``), and any parameter or form
  field holding a NUL character (PostgreSQL takes none in text).
* Nothing shown comes from a setting marked secret: settings are shown as
  ``Settings.describe()`` redacts them, the store's URL without its password; the
  admin token and the users' hashes are never shown at all.
* Pages read the store with ``Store.inspect`` (the operators' reads: never on the
  connection the callbacks read with), on indexed columns, a page at a time.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote
from weakref import WeakKeyDictionary, WeakSet

import bottle

from core.console import audit, policy, schema, views
from core.console.auth import (
    DEVICE_COOKIE,
    DEVICE_LIFETIME,
    NAME_LIMIT,
    LoginTokens,
    Session,
    Throttle,
    authenticate,
    credential,
    csrf_ok,
    device_cookie,
    device_key,
    known_device,
)
from core.console.health import Host
from core.console.page import BadParameter, ConsolePage, ConsoleRequest
from core.console.sessions import Sessions
from core.runtime import Runtime
from core.store import InspectTimeout, Store

log = logging.getLogger("switchboard.console")

COOKIE = "switchboard_console"
LOGIN_COOKIE = "switchboard_console_login"
STATIC = Path(__file__).resolve().parent / "static"
HOOK = "switchboard_console_pages"
PAGE_PATH = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
RETRY_ALL_LIMIT = 50  # waiting callbacks one "retry all" runs
INTERNAL = ("_csrf", "_action")
HEADERS = {
    # no script, nothing from elsewhere, never framed
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ---------------------------------------------------------------------------- plugin pages


@dataclass(frozen=True)
class Mounted:
    """A plugin's page where the console serves it."""

    plugin: str
    page: ConsolePage

    @property
    def path(self) -> str:
        return f"/plugins/{self.plugin}" + (f"/{self.page.path}" if self.page.path else "")


@dataclass(frozen=True)
class PluginPages:
    pages: tuple[Mounted, ...] = ()
    problems: tuple[str, ...] = ()  # plugins whose pages could not be used, and why

    def find(self, plugin: str, path: str) -> Mounted | None:
        return next(
            (m for m in self.pages if m.plugin == plugin and m.page.path == path.strip("/")),
            None,
        )


def collect_pages(runtime: Runtime) -> PluginPages:
    """Every enabled plugin's ``switchboard_console_pages()``, in precedence order. A
    plugin whose hook fails or returns something else loses its pages (logged, and
    shown on the Plugins page); the console and the other plugins' pages go on."""
    pages: list[Mounted] = []
    problems: list[str] = []
    for impl in runtime.plugins.impls(HOOK):
        try:
            found = impl()
        except Exception as exc:
            log.exception("plugin %r failed in %s", impl.plugin, HOOK)
            problems.append(f"{impl.plugin}: {HOOK} raised {type(exc).__name__}")
            continue
        problem = _page_problem(found)
        if problem is not None:
            log.error("plugin %r: %s: %s", impl.plugin, HOOK, problem)
            problems.append(f"{impl.plugin}: {problem}")
            continue
        pages += [Mounted(impl.plugin, page) for page in found or ()]
    return PluginPages(tuple(pages), tuple(problems))


def _page_problem(found: Any) -> str | None:
    if found is None:
        return None
    if not isinstance(found, Sequence) or not all(isinstance(p, ConsolePage) for p in found):
        return "must return a list of core.ConsolePage"
    paths = [p.path for p in found]
    for page in found:
        if page.path and not PAGE_PATH.fullmatch(page.path):
            return f"page path {page.path[:40]!r}: letters, digits, -, _ and / only"
        if paths.count(page.path) > 1:
            return f"page path {page.path!r} is used twice"
        if not callable(page.render) or not all(callable(a) for a in page.actions.values()):
            return f"page {page.path!r}: render and actions must be functions"
    return None


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Req:
    """What a console request works with."""

    runtime: Runtime
    session: Session
    base: str
    pages: PluginPages
    sessions: Sessions

    @property
    def store(self) -> Store:
        return self.runtime.store

    def take_flash(self) -> tuple[tuple[str, str], ...]:
        """The messages waiting for this page (an action's outcome), now shown."""
        return self.sessions.take_flash(self.store, self.session)


def _text(forms: Any, name: str) -> str:
    value = forms.getunicode(name)
    return "" if value is None else str(value)


def _fields(forms: Any) -> dict[str, str]:
    return {k: _text(forms, k) for k in forms.keys()}


def _refuse_nul(*sources: Any) -> None:
    """Refuse (400, naming it) a parameter or form field holding a NUL character: no
    operator types one, and PostgreSQL cannot take one in a text value, so it would
    fail the page's query (a 500) or the audit log's write."""
    for fields in sources:
        for name in fields:
            if "\x00" in name or "\x00" in _text(fields, name):
                shown = name.replace("\x00", "\\0")[:40]
                raise Refused(400, f"Refused: {shown}: a NUL character, which no page takes.")


# the console's own pages (a redirect's path must be one of them)
ROUTES = re.compile(r"/(calls(/[^?#]*)?|plugins(/[^?#]*)?|inbox|audit|replay|revisions)?/?")
# printable ASCII but the space: no control character, no whitespace, nothing a browser
# strips or rewrites before it resolves the URL
SAFE_TARGET = re.compile(r"/(?:[^/\\\x00-\x20\x7f-\uffff][\x21-\x7e]*)?")


def _local(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path of this console's own pages (for redirects), else
    ``default``: one "/" then neither "/" nor "\\", no control characters or whitespace
    (browsers strip tabs and newlines: ``/\t/evil.host`` is ``//evil.host``), no
    backslash anywhere, and the path one of the console's routes."""
    if not target or not SAFE_TARGET.fullmatch(target) or "\\" in target:
        return default
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not ROUTES.fullmatch(path) or "/." in path:
        return default
    return target


class Refused(Exception):
    """A request is refused: ``status`` and the text of the page that says why."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class Console:
    """The console of one server process: its view of the sessions (kept in the store),
    its login throttle, and the pages of each runtime."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.sessions = Sessions(idle=host.runtime.settings.admin["session_minutes"] * 60.0)
        self.login_tokens = LoginTokens()
        self.throttle = Throttle()
        self._lock = threading.Lock()
        self._pages: WeakKeyDictionary[Runtime, PluginPages] = WeakKeyDictionary()
        self._migrated: WeakSet[Store] = WeakSet()

    # ------------------------------------------------------------------ the runtime

    def prepare(self, runtime: Runtime | None = None) -> PluginPages:
        """The console's tables on the runtime's store (``core.console.schema``), and the
        runtime's plugin pages (both once per store and runtime)."""
        runtime = runtime or self.host.runtime
        with self._lock:
            if runtime.store not in self._migrated:
                schema.migrate(runtime.store)
                self._migrated.add(runtime.store)
            pages = self._pages.get(runtime)
            if pages is None:
                pages = self._pages[runtime] = collect_pages(runtime)
        return pages

    # ------------------------------------------------------------------ sessions

    @staticmethod
    def _base() -> str:
        return str(bottle.request.script_name).rstrip("/")

    def _secure(self, runtime: Runtime) -> bool:
        proto = bottle.request.get_header("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return bool(
            runtime.settings.admin["console_https"]
            or proto == "https"
            or bottle.request.environ.get("wsgi.url_scheme") == "https"
        )

    def _cookie(self, runtime: Runtime, name: str, value: str, **extra: Any) -> None:
        bottle.response.set_cookie(
            name,
            value,
            path=self._base() + "/",
            httponly=True,
            samesite="strict",
            secure=self._secure(runtime),
            **extra,
        )

    def _session(self, runtime: Runtime) -> Session | None:
        admin = runtime.settings.admin
        self.sessions.idle = admin["session_minutes"] * 60.0
        session = self.sessions.get(runtime.store, bottle.request.get_cookie(COOKIE))
        if session is not None and not session.still_valid(admin["token"], admin["users"]):
            # logged in with a token or password the settings no longer hold (rotated,
            # removed, then reloaded): the session ends with its credential
            log.info("console: the session of %s ended: its credential changed", session.user)
            self.sessions.end(runtime.store, session.sid)
            return None
        return session

    def _begin(self, *, post: bool = False) -> Req:
        """The request's runtime and session; for a ``POST``, its CSRF token checked.
        Raises a redirect to the login page (a ``GET`` without a session) or ``Refused``."""
        runtime = self.host.runtime
        pages = self.prepare(runtime)
        session = self._session(runtime)
        if session is None:
            if post:
                raise Refused(403, "Refused: you are not logged in (or your session ended).")
            here = bottle.request.fullpath + (
                "?" + bottle.request.query_string if bottle.request.query_string else ""
            )
            raise bottle.HTTPResponse(
                status=303, headers={"Location": self._base() + "/login" + _next(here)}
            )
        if "\x00" in bottle.request.path:
            raise Refused(400, "Refused: the address holds a NUL character.")
        _refuse_nul(bottle.request.query, *((bottle.request.forms,) if post else ()))
        if post and not csrf_ok(session, bottle.request.forms.getunicode("_csrf")):
            log.warning(
                "console: %s %s by %s refused: missing or wrong CSRF token",
                bottle.request.method,
                bottle.request.path,
                session.user,
            )
            raise Refused(
                403,
                "Refused: this form's security token is missing or out of date. Nothing was "
                "changed. Reload the page and try again.",
            )
        return Req(runtime, session, self._base(), pages, self.sessions)

    # ------------------------------------------------------------------ changes

    def perform(
        self, req: Req, action: str, target: str | None, run: Callable[[], str]
    ) -> tuple[str, str]:
        """Run a change for the logged-in operator, audited: ``("ok", what it did)`` or
        ``("error", why not)``. When the audit log cannot be written, nothing runs."""
        address = bottle.request.environ.get("REMOTE_ADDR")
        store = req.store
        try:
            entry = audit.begin(store, req.session.user, action, target, address)
        except Exception as exc:
            log.error("console: %s not run: the audit log cannot be written: %s", action, exc)
            return "error", f"{action} was not run: the audit log cannot be written now."
        try:
            text = run()
        except ValueError as exc:
            outcome, kind, text = "refused", "error", str(exc)
        except InspectTimeout as exc:
            outcome, kind, text = "failed", "error", f"{action} failed: {exc}"
        except Exception as exc:
            log.exception("console: %s by %s failed", action, req.session.user)
            outcome, kind = "failed", "error"
            text = f"{action} failed ({type(exc).__name__}); the server log has the details."
        else:
            outcome, kind = "ok", "ok"
        try:
            audit.finish(store, entry, outcome, text)
        except Exception as exc:  # the row stays 'started': the attempt is still on record
            log.error("console: cannot record the outcome of %s: %s", action, exc)
        log.info("console: %s by %s on %s: %s", action, req.session.user, target, outcome)
        return kind, text

    def _back(self, req: Req, kind: str, text: str, to: str) -> bottle.HTTPResponse:
        try:
            self.sessions.flash(req.store, req.session, kind, text)
        except Exception as exc:  # noqa: BLE001 - the change is made and audited: its text lost
            log.error("console: cannot keep the message %r for the next page: %s", text, exc)
        return bottle.HTTPResponse(status=303, headers={"Location": req.base + _local(to)})

    # ------------------------------------------------------------------ the app

    def wsgi(self) -> bottle.Bottle:
        app = bottle.Bottle(catchall=True)
        app.config["json.enable"] = False
        console = self

        def guarded(view: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return view(*args, **kwargs)
                except Refused as refused:
                    bottle.response.status = refused.status
                    return views.message_page(console._base(), refused.text, refused.status)
                except BadParameter as bad:
                    bottle.response.status = 400
                    return views.message_page(console._base(), f"Refused: {bad}.", 400)
                except InspectTimeout as slow:  # stopped: the connection is free again
                    log.warning("console: %s stopped: %s", bottle.request.path, slow)
                    bottle.response.status = 503
                    text = str(slow)
                    return views.message_page(console._base(), text[:1].upper() + text[1:], 503)

            return wrapper

        @app.hook("after_request")
        def headers() -> None:
            for name, value in HEADERS.items():
                bottle.response.set_header(name, value)
            if bottle.request.path.startswith("/static/"):  # the stylesheet, not a page
                bottle.response.set_header("Cache-Control", "max-age=3600")

        @app.get("/static/<name>")
        def static(name: str) -> Any:
            return bottle.static_file(name, root=str(STATIC))

        # ------------------------------------------------------------ login, logout

        @app.get("/login")
        def login_form() -> Any:
            runtime = self.host.runtime
            self.prepare(runtime)
            target = _local(bottle.request.query.getunicode("next"))
            if self._session(runtime) is not None:
                return bottle.HTTPResponse(status=303, headers={"Location": self._base() + target})
            return self._login_page(runtime, target)

        @app.post("/login")
        @guarded
        def login() -> Any:
            runtime = self.host.runtime
            self.prepare(runtime)
            forms = bottle.request.forms
            _refuse_nul(forms)
            target = _local(forms.getunicode("next"))
            nonce = bottle.request.get_cookie(LOGIN_COOKIE)
            if not self.login_tokens.check(nonce, forms.getunicode("_csrf")):
                raise Refused(
                    403,
                    "Refused: the login form's security token is missing or out of date. "
                    "Reload the login page and try again.",
                )
            name = _text(forms, "name").strip()
            address = str(bottle.request.environ.get("REMOTE_ADDR") or "?")[:64]
            if len(name) > NAME_LIMIT:  # no such operator: refused without the hashing
                self.throttle.failed(name[:NAME_LIMIT])
                bottle.response.status = 400
                return self._login_page(
                    runtime, target, f"A name has at most {NAME_LIMIT} characters."
                )
            admin = runtime.settings.admin
            # the key of the name tried, if there is such a login: what a device cookie
            # of this browser's earlier login of that name is made with
            key = device_key(name, admin["token"], admin["users"])
            device = known_device(bottle.request.get_cookie(DEVICE_COOKIE), key)
            if not self.throttle.allows(name, device):
                bottle.response.status = 429
                return self._login_page(
                    runtime, target, "Too many failed logins: wait a few minutes.", name
                )
            user = authenticate(name, _text(forms, "password"), admin["token"], admin["users"])
            if user is None:
                self.throttle.failed(name, device)
                _audit_quietly(runtime.store, name or "token", "login", None, address, "refused")
                bottle.response.status = 401
                return self._login_page(runtime, target, "Wrong name or password.", name)
            self.throttle.succeeded(name, device)
            session = self.sessions.new(
                runtime.store,
                user,
                credential(user, not name, admin["token"], admin["users"]) or "",
            )
            _audit_quietly(runtime.store, user, "login", None, address, "ok")
            log.info("console: %s logged in from %s", user, address)
            self._cookie(runtime, COOKIE, session.sid)
            if key is not None:  # this browser is known from now on (see core.console.auth)
                self._cookie(runtime, DEVICE_COOKIE, device_cookie(key), max_age=DEVICE_LIFETIME)
            bottle.response.delete_cookie(LOGIN_COOKIE, path=self._base() + "/")
            bottle.response.status = 303
            bottle.response.set_header("Location", self._base() + target)
            return ""

        @app.post("/logout")
        @guarded
        def logout() -> Any:
            req = self._begin(post=True)
            self.sessions.end(req.store, req.session.sid)
            address = bottle.request.environ.get("REMOTE_ADDR")
            _audit_quietly(req.store, req.session.user, "logout", None, address, "ok")
            bottle.response.delete_cookie(COOKIE, path=req.base + "/")
            bottle.response.status = 303
            bottle.response.set_header("Location", req.base + "/login?out=1")
            return ""

        # ------------------------------------------------------------ the core's pages

        @app.get("/")
        @guarded
        def overview() -> Any:
            req = self._begin()
            return views.overview(req, self.host, self._panels(req))

        @app.get("/calls")
        @guarded
        def calls() -> Any:
            return views.calls(self._begin())

        @app.get("/calls/<callid:path>")
        @guarded
        def call(callid: str) -> Any:
            return views.call(self._begin(), callid)

        @app.get("/plugins")
        @guarded
        def plugins() -> Any:
            return views.plugins(self._begin())

        @app.get("/inbox")
        @guarded
        def inbox() -> Any:
            return views.inbox(self._begin())

        @app.post("/inbox/retry")
        @guarded
        def inbox_retry() -> Any:
            req = self._begin(post=True)
            forms = bottle.request.forms
            callid, event, sub = _text(forms, "callid"), _text(forms, "event"), _text(forms, "sub")
            if forms.getunicode("all"):
                kind, text = self.perform(
                    req, "inbox.retry-all", None, lambda: views.retry_all(req, RETRY_ALL_LIMIT)
                )
            else:
                kind, text = self.perform(
                    req,
                    "inbox.retry",
                    f"{callid} {event}",
                    lambda: views.retry_one(req, callid, event, sub),
                )
            return self._back(req, kind, text, "/inbox")

        @app.get("/audit")
        @guarded
        def audit_log() -> Any:
            return views.audit_log(self._begin())

        @app.get("/replay")
        @guarded
        def replay_form() -> Any:
            return policy.replay_page(self._begin())

        @app.post("/replay")
        @guarded
        def replay() -> Any:
            req = self._begin(post=True)
            return policy.run_replay(req, bottle.request.forms, self.perform)

        @app.get("/revisions")
        @guarded
        def revisions() -> Any:
            return policy.revisions_page(self._begin())

        # ------------------------------------------------------------ plugins' pages

        @app.route("/plugins/<plugin>", method=["GET", "POST"])
        @app.route("/plugins/<plugin>/<path:path>", method=["GET", "POST"])
        @guarded
        def plugin_page(plugin: str, path: str = "") -> Any:
            post = bottle.request.method == "POST"
            req = self._begin(post=post)
            mounted = req.pages.find(plugin, path)
            if mounted is None:
                raise Refused(404, "There is no such page.")
            request = self._plugin_request(req, mounted)
            if post:
                return self._plugin_action(req, mounted, request)
            return views.plugin_page(req, mounted, request)

        def _error(err: bottle.HTTPError) -> str:
            if err.status_code == 500 and err.exception is not None:
                log.error("console: error on %s", bottle.request.path, exc_info=err.exception)
            text = {
                404: "There is no such page.",
                405: "That is not something this page does.",
            }.get(err.status_code, "Something went wrong; the server log has the details.")
            return views.message_page(self._base(), text, err.status_code)

        for code in (400, 404, 405, 500):
            app.error(code)(_error)
        return app

    # ------------------------------------------------------------------ helpers

    def _login_page(
        self, runtime: Runtime, target: str, error: str | None = None, name: str = ""
    ) -> str:
        nonce, token = self.login_tokens.issue()
        self._cookie(runtime, LOGIN_COOKIE, nonce)
        out = bottle.request.query.getunicode("out") is not None
        admin = runtime.settings.admin
        return views.login_page(
            self._base(), token, target, error, name, bool(admin["users"]), bool(admin["token"]), out
        )

    def _plugin_request(self, req: Req, mounted: Mounted) -> ConsoleRequest:
        query = bottle.request.query
        return ConsoleRequest(
            user=req.session.user,
            plugin=mounted.plugin,
            store=req.store,
            config=req.runtime.settings.plugins.get(mounted.plugin, MappingProxyType({})),
            params=MappingProxyType(_fields(query)),
            csrf_token=req.session.csrf,
            base=req.base,
            page_path=mounted.page.path,
        )

    def _plugin_action(self, req: Req, mounted: Mounted, request: ConsoleRequest) -> Any:
        forms = bottle.request.forms
        action = _text(forms, "_action")
        run = mounted.page.actions.get(action)
        if run is None:
            raise Refused(400, "This page has no such action.")
        form = {k: v for k, v in _fields(forms).items() if k not in INTERNAL}
        request = replace(request, form=MappingProxyType(form))
        # fields named "_..." are the page's own (a one-time form token): not audited
        shown = {k: v for k, v in form.items() if not k.startswith("_")}
        target = ", ".join(f"{k}={v}" for k, v in shown.items()) or None
        kind, text = self.perform(req, f"{mounted.plugin}.{action}", target, lambda: run(request))
        here = bottle.request.path + (
            "?" + bottle.request.query_string if bottle.request.query_string else ""
        )
        return self._back(req, kind, text, here)

    def _panels(self, req: Req) -> list[tuple[Mounted, str | None]]:
        """Each plugin page's Overview panel: its HTML, or None when it failed."""
        out: list[tuple[Mounted, str | None]] = []
        for mounted in req.pages.pages:
            if mounted.page.panel is None:
                continue
            try:
                out.append((mounted, mounted.page.panel(self._plugin_request(req, mounted))))
            except Exception:
                log.exception("console: the panel of %s failed", mounted.path)
                out.append((mounted, None))
        return out


def _next(target: str) -> str:
    return "" if target == "/" else "?next=" + quote(target, safe="/")


def _audit_quietly(
    store: Store, actor: str, action: str, target: str | None, address: Any, outcome: str
) -> None:
    try:
        audit.record(store, actor, action, target, str(address), outcome)
    except Exception as exc:
        log.error("console: cannot audit %s of %s: %s", action, actor, exc)


def make_console(host: Host) -> bottle.Bottle:
    """The console's WSGI app for ``host`` (see the module docstring)."""
    return Console(host).wsgi()

