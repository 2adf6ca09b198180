"""The console on a real server: its own listener, started and stopped with the server,
never answering on the callback port; a refused reload shows on its Overview."""

from __future__ import annotations

import hashlib
import http.cookiejar
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tests.conftest import REPO, run_cli
from tests.helpers import KEY, SECRET, ice, wait_for

TOKEN = "console-admin-token-0123456789"


def config(
    console: str = "127.0.0.1:0",
    extra: str = "",
    store: str = "sqlite:///console.db",
    admin: str = "",
    enabled: str = '"allowlist"',
    store_extra: str = "",
    token: str = TOKEN,
) -> str:
    return f"""
[server]
port = 0
shutdown_grace = 3

[[sinch.keys]]
key = "{KEY}"
secret = "{SECRET}"

[admin]
token = "{token}"
console = "{console}"
{admin}
[store]
url = "{store}"
{store_extra}
[plugins]
enabled = [{enabled}]

[plugins.allowlist]
allow = ["+1*"]
{extra}
"""


MONEY = '"allowlist", "credit", "crm"'
MONEY_CONFIG = """
[plugins.credit]
account_from = "fixed"
account = "demo"
rates = { "+1" = "0.02" }
initial_accounts = { "demo" = "5.00" }
"""


def console_url(server: Any) -> str:
    line = server.proc.stdout.readline()
    assert line.startswith("switchboard console on "), line
    return line.split()[3].rstrip("/")


class Browser:
    """urllib with cookies: enough to log in and read pages."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read().decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read().decode()

    def login(
        self, target: str = "/", shows: str = "Plugin health", password: str = TOKEN
    ) -> None:
        _, page = self.get("/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
        status, page = self.post(
            "/login", {"_csrf": token, "name": "", "password": password, "next": target}
        )
        assert status == 200 and shows in page, page[:500]

    def logged_in(self) -> bool:
        """Whether a page is shown (else the login form, after the redirect)."""
        status, page = self.get("/plugins")
        assert status == 200, page[:300]
        return "Log out" in page

    def logout(self) -> None:
        _, page = self.get("/plugins")
        token = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
        status, page = self.post("/logout", {"_csrf": token})
        assert status == 200 and "Log in" in page, page[:300]


def test_the_console_has_its_own_listener_and_stops_with_the_server(serve):
    server = serve(config())
    url = console_url(server)
    callback_port = int(server.url.split(":")[2].split("/")[0])
    console_port = int(url.rsplit(":", 1)[1])
    assert console_port != callback_port
    base = f"http://127.0.0.1:{callback_port}"
    for path in ("/", "/login", "/calls", "/static/console.css", "/plugins"):
        try:
            urllib.request.urlopen(base + path, timeout=5)
            raise AssertionError(f"{path} answered on the callback port")
        except urllib.error.HTTPError as err:
            assert err.code == 404, path
    browser = Browser(url)
    assert browser.get("/static/console.css")[0] == 200
    browser.login()
    assert server.post(ice("console-call-1"))[0] == 200
    status, page = browser.get("/calls")
    assert status == 200 and "console-call-1" in page
    assert server.stop() == 0
    with socket.socket() as s:  # the console's port is closed with the server
        assert s.connect_ex(("127.0.0.1", console_port)) != 0
    assert "operator console stopped" in server.log


def test_a_refused_reload_shows_on_the_overview(serve):
    server = serve(config())
    browser = Browser(console_url(server))
    browser.login()
    assert "no reload refused" in browser.get("/")[1]
    server.config.write_text(config(extra="unknown_key = 1"))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in server.log, timeout=10)
    page = browser.get("/")[1]
    assert "refused" in page and "plugins.allowlist.unknown_key" in page
    server.config.write_text(config())
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in server.log, timeout=10)
    assert wait_for(lambda: "no reload refused" in browser.get("/")[1], timeout=5)
    assert "(token)" in browser.get("/")[1]  # the session outlives the reload


def test_a_console_address_in_use_stops_the_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "config.toml"
        path.write_text(config(f"127.0.0.1:{port}"))
        started = time.monotonic()
        ran = run_cli(path, "serve")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"error: admin.console: cannot listen on 127.0.0.1:{port}: address already in use" in (
        ran.stderr
    )
    assert time.monotonic() - started < 60


def test_a_console_page_past_the_read_time_limit_says_so(serve, tmp_path, backend):
    """Over many calls, with a tiny ``store.inspect_timeout``: a Calls page filtered on
    two broad filters that no call matches together (walked) is stopped, and says to
    narrow the filters; other pages work."""
    url = backend.url(tmp_path, "slow")
    server = serve(config(store=url, enabled=MONEY, extra=MONEY_CONFIG))  # the schema
    console_url(server)
    assert server.stop() == 0
    sys.path.insert(0, str(REPO / "bench"))
    import console  # bench/console.py: its bulk loaders

    if backend.name == "sqlite":
        console.load_sqlite(str(tmp_path / "slow.db"), 60_000, 86400.0)
    else:
        console.load_postgres(url, 60_000, 86400.0)
    server = serve(
        config(store=url, enabled=MONEY, extra=MONEY_CONFIG, store_extra="inspect_timeout = 0.001")
    )
    browser = Browser(console_url(server))
    browser.login("/plugins", shows="plugin-allowlist")
    status, page = browser.get("/calls?outcome=connectPstn&rule=deny")  # none together
    assert status == 503, page[:300]
    assert "The query took longer than 0.001 s; narrow the filters" in page
    assert browser.get("/plugins")[0] == 200
    assert "stopped: the query took longer" in server.log


def _cursor(value: Any) -> str:
    import base64
    import json

    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HOSTILE = {
    "not a number": "abc",
    "negative": "-1",
    "2**63": str(2**63),
    "2**64": str(2**64),
    "10**30": "9" * 31,
    "5000 digits": "9" * 5000,
    "NaN": "nan",
    "infinity": "inf",
    "-infinity": "-inf",
    "1e400": "1e400",
    "superscript two": "\u00b2",
    "Arabic-Indic digits": "\u0661\u0662",
    "a NUL": "a\x00b",
    "overlong": "x" * 3000,
    "past the header limit": "x" * 20000,
    "a formula": "=HYPERLINK(\"http://evil.example\")",
    "cursor 1e300": _cursor([1e300, "x"]),
    "cursor NaN": _cursor(["NaN", "x"]),
    "cursor 2**70": _cursor([2**70, "x"]),
    "cursor with a NUL": _cursor([1.0, "a\x00"]),
    "cursor of -1": _cursor([-1, "x"]),
}
# every console page, and each of its query parameters; the numeric ones (positions,
# windows) must answer 400 naming the parameter for a value they cannot take
PAGES = {
    "/?hours=": "hours",
    "/calls?after=": "after",
    "/calls?since=": "since",
    "/calls?until=": "until",
    "/calls?number=": None,
    "/calls?caller=": None,
    "/calls?destination=": None,
    "/calls?outcome=": None,
    "/calls?rule=": None,
    "/calls?plugin=": None,
    "/calls?duplicates=1&fallbacks=": None,
    "/calls/": None,
    "/inbox?page=": None,
    "/audit?before=": "before",
    "/plugins?x=": None,
    "/plugins/credit/accounts?after=": None,
    "/plugins/credit/accounts?q=": None,
    "/plugins/credit/accounts?account=": None,
    "/plugins/credit/accounts?account=demo&before=": "before",
    "/plugins/crm/outbox?x=": None,
    "/replay?x=": None,
    "/revisions?show=": None,
    "/revisions?old=": None,
    "/revisions?new=": None,
}


def test_hostile_parameters_never_make_a_page_fail(serve, tmp_path, backend, subtests):
    """Every page, every parameter, hostile values: never a 500; a number or position
    a page cannot take is a 400 that names the parameter."""
    server = serve(
        config(store=backend.url(tmp_path, "hostile"), enabled=MONEY, extra=MONEY_CONFIG)
    )
    browser = Browser(console_url(server))
    browser.login()
    assert server.post(ice("hostile-1"))[0] == 200
    for path, numeric in PAGES.items():
        with subtests.test(page=path):
            wrong = []
            for label, value in HOSTILE.items():
                status, page = browser.get(path + urllib.parse.quote(value, safe=""))
                checked = numeric and label not in ("a formula", "past the header limit")
                if status == 500 or (checked and (status != 400 or f"{numeric}: " not in page)):
                    wrong.append((label, status))
            assert wrong == []
    assert browser.get("/calls")[0] == 200  # and the console goes on
    assert "Traceback" not in server.log


def test_sessions_outlive_a_restart_and_are_shared_by_the_processes_on_a_store(
    serve, tmp_path, backend
):
    """Sessions are kept in the store: a restarted server knows the cookie it gave, a
    second server on the same store knows it too, and a logout on one ends it on both."""
    url = backend.url(tmp_path, "shared")
    first = serve(config(store=url), name="first")
    browser = Browser(console_url(first))
    browser.login()
    assert first.stop() == 0

    cookie = next(c for c in browser.jar if c.name == "switchboard_console")

    restarted = serve(config(store=url), name="first")
    browser.base = console_url(restarted)
    assert browser.logged_in()  # the same cookie, a new process
    second = serve(config(store=url), name="second")
    other = Browser(console_url(second))
    other.jar.set_cookie(cookie)  # the cookie the first process gave, to the second
    assert other.logged_in() and other.get("/calls")[0] == 200

    other.logout()  # on the second: the session ends on both
    replayed = Browser(browser.base)
    replayed.jar.set_cookie(cookie)
    assert not replayed.logged_in()
    assert not browser.logged_in()
    for server in (restarted, second):
        assert server.stop() == 0


def test_stored_sessions_end_when_idle_or_when_their_credential_is_gone(
    serve, tmp_path, backend
):
    """A session past its idle time (its last use moved back in the store) is refused,
    and so is one whose token was rotated (a reload); the new token logs in."""
    from core.store import open_store

    url = backend.url(tmp_path, "ending")
    server = serve(config(store=url))
    base = console_url(server)
    idle, revoked = Browser(base), Browser(base)
    idle.login()
    revoked.login()
    store = open_store(url, pool_size=1)
    try:
        assert store.query("SELECT COUNT(*) FROM console_sessions") == [(2,)]
        cookie = next(c for c in idle.jar if c.name == "switchboard_console")
        kept = repr(store.query("SELECT * FROM console_sessions"))
        assert cookie.value not in kept  # a digest of the id, never the id
        assert TOKEN not in kept and hashlib.sha256(TOKEN.encode()).hexdigest() not in kept
        store.write(
            "UPDATE console_sessions SET seen_at = seen_at - 86400 WHERE id = ?",
            (hashlib.sha256(cookie.value.encode()).hexdigest(),),
        )
        assert not idle.logged_in()
        assert revoked.logged_in()
        assert store.query("SELECT COUNT(*) FROM console_sessions") == [(1,)]
    finally:
        store.close()

    server.config.write_text(config(store=url, token="a-rotated-admin-token-9876543210"))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in server.log, timeout=10)
    assert not revoked.logged_in()
    revoked.login(password="a-rotated-admin-token-9876543210")
    assert revoked.logged_in()


def test_failed_logins_from_the_operators_own_address_do_not_lock_them_out(serve):
    """Behind a tunnel every operator comes from 127.0.0.1: someone failing there, on
    other names or on the token itself, cannot lock out an operator whose browser has
    logged in before; a new browser waits only while the token's own name is flooded."""
    server = serve(config())
    base = console_url(server)
    operator = Browser(base)
    operator.login()
    operator.logout()  # the session is over; the browser is still known

    def fail(name: str) -> int:
        attacker = Browser(base)
        _, page = attacker.get("/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
        return attacker.post("/login", {"_csrf": token, "name": name, "password": "guess"})[0]

    assert {fail(f"someone-{i}") for i in range(8)} == {401}
    Browser(base).login()  # a new browser, the same address: not locked out
    assert {fail("") for _ in range(12)} == {401, 429}  # the token's own name flooded
    newcomer = Browser(base)
    _, page = newcomer.get("/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    status, page = newcomer.post("/login", {"_csrf": token, "name": "", "password": TOKEN})
    assert status == 429 and "Too many failed logins" in page  # cannot be told apart
    operator.login()  # known: logs in all the same
    assert operator.logged_in()
