"""The operator console in-process: off unless configured, login and sessions, CSRF on
every change (refused with 403 and nothing changed), the audit log, secrets never
shown, plugin pages through the hook, and the inbox's retry button."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
import webtest

from core import ConsolePage, ConsoleRequest, Decision, Key, hookimpl
from core.app import make_app
from core.config import ConfigError, console_address
from core.console import audit, schema
from core.console import sessions as sessions_mod
from core.console.app import make_console
from core.console.auth import (
    LoginTokens,
    Throttle,
    credential,
    device_cookie,
    device_key,
    hash_password,
    known_device,
    verify_password,
)
from core.console.health import Fixed
from core.console.sessions import Sessions
from core.svaml import ConnectPstn
from plugins.allowlist import Allowlist
from plugins.credit import Credit
from plugins.crm import Crm
from tests.cli_runner import cli as run_cli
from tests.helpers import (
    SECRET,
    _build,
    ace,
    dice,
    ice,
    post,
    runtime,
    settings,
    wait_for,
    webapp,
)

TOKEN = "console-admin-token-0123456789"
PASSWORD = "alice's long password"
CRM_SECRET = "crm-webhook-secret-value"
ADMIN = {"token": TOKEN, "console": "127.0.0.1:0"}
PLUGINS = {
    "allowlist": {"allow": ["+1*"], "max_duration": 600},
    "credit": {
        "account_from": "fixed",
        "account": "demo",
        "rates": {"+1": "0.02"},
        "initial_accounts": {"demo": "5.00"},
    },
}


def money_runtime(make_rt: Any = runtime, **admin: Any) -> Any:
    return make_rt(
        {"allowlist": Allowlist(), "credit": Credit(), "crm": Crm()},
        admin={**ADMIN, **admin},
        plugins=PLUGINS,
    )


def console_of(rt: Any) -> webtest.TestApp:
    rt.start()
    return webtest.TestApp(
        make_console(Fixed(rt)), extra_environ={"REMOTE_ADDR": "192.0.2.7"}
    )


def login(app: webtest.TestApp, password: str = TOKEN, name: str = "", status: int = 303) -> Any:
    form = app.get("/login").forms[0]
    if "name" in form.fields and form["name"].attrs.get("type") != "hidden":
        form["name"] = name
    form["password"] = password
    return form.submit(status=status)


def session_cookie(response: Any) -> str:
    [cookie] = [c for c in response.headers.getall("Set-Cookie") if "switchboard_console=" in c]
    return cookie


def csrf_of(page: Any) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', page.text)
    assert found, "no CSRF field on the page"
    return found.group(1)


def once_of(page: Any) -> str:
    found = re.search(r'name="_once" value="([^"]+)"', page.text)
    assert found, "no one-time token on the top-up form"
    return found.group(1)


def balance(rt: Any, account: str = "demo") -> int:
    rows = rt.store.query("SELECT balance FROM credit_accounts WHERE account = ?", (account,))
    return int(rows[0][0]) if rows else -1


def audit_rows(rt: Any) -> list[tuple[Any, ...]]:
    return rt.store.query(
        "SELECT actor, action, target, outcome, detail, address FROM console_audit ORDER BY at"
    )


# ---------------------------------------------------------------------------- configuration


def test_the_console_is_off_unless_configured_and_never_on_the_callback_app():
    rt = runtime({}, admin={"token": TOKEN})
    try:
        assert rt.settings.admin["console"] is None
        callbacks = webapp(rt)
        for path in ("/", "/login", "/calls", "/plugins", "/inbox", "/static/console.css"):
            assert callbacks.get(path, status=404).json["error"].startswith("no such path")
    finally:
        rt.close()
    rt = money_runtime()  # on: still nothing of it on the callback listener's app
    try:
        callbacks = webapp(rt)
        for path in ("/", "/login", "/calls", "/plugins/credit/accounts", "/audit"):
            callbacks.get(path, status=404)
        callbacks.post("/login", {"password": TOKEN}, status=404)
    finally:
        rt.close()


def test_console_settings_are_checked():
    assert console_address("8081") == ("127.0.0.1", 8081)  # loopback unless told otherwise
    assert console_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert console_address("[::1]:8081") == ("::1", 8081)
    with pytest.raises(ConfigError, match="admin.console: expected HOST:PORT"):
        settings(admin={"token": TOKEN, "console": "localhost"})
    with pytest.raises(ConfigError, match="admin.console: nobody could log in"):
        settings(admin={"console": "8081"})
    with pytest.raises(ConfigError, match=r"admin.users: \[0\].password_hash: not a hash"):
        settings(admin={"console": "8081", "users": [{"name": "a", "password_hash": "pw"}]})
    with pytest.raises(ConfigError, match=r"admin.users: \[1\].name"):
        good = {"name": "a", "password_hash": hash_password("x" * 12)}
        settings(admin={"console": "8081", "users": [good, good]})
    s = settings(admin={"console": "8081", "users": [good]})
    assert s.describe()["admin"]["users"] == "<redacted>"  # hashes are never shown


def test_hash_password_command_makes_a_hash_that_verifies(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("")
    ran = run_cli(config, "console", "hash-password", "--stdin", "--name", "alice")
    assert ran.returncode == 2 and "at least 12 characters" in ran.stdout  # empty stdin
    from click.testing import CliRunner

    from core.cli.main import make_cli

    result = CliRunner().invoke(
        make_cli(), ["console", "hash-password", "--stdin", "--name", "alice"], input=PASSWORD
    )
    assert result.exit_code == 0, result.output
    stored = re.search(r'password_hash = "([^"]+)"', result.output).group(1)
    assert 'name = "alice"' in result.output and PASSWORD not in result.output
    assert verify_password(PASSWORD, stored) and not verify_password("wrong", stored)
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted


# ---------------------------------------------------------------------------- logging in


def test_pages_need_a_login_and_the_token_logs_in():
    rt = money_runtime()
    try:
        app = console_of(rt)
        assert app.get("/calls?outcome=hangup", status=303).location.endswith(
            "/login?next=/calls%3Foutcome%3Dhangup"
        )
        app.post("/inbox/retry", {"all": "1"}, status=403)  # no session: refused, not run
        wrong = login(app, "not the token", status=401)
        assert "Wrong name or password" in wrong.text
        done = login(app)
        cookie = session_cookie(done)
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain HTTP on loopback
        page = app.get("/")
        assert "Plugin health" in page.text and "(token)" in page.text
        actions = [(a, o, who) for who, a, _, o, _, _ in audit_rows(rt)]
        assert actions == [("login", "refused", "token"), ("login", "ok", "token")]
        assert audit_rows(rt)[-1][5] == "192.0.2.7"
    finally:
        rt.close()


def test_the_cookie_is_secure_behind_tls():
    rt = money_runtime()
    try:
        app = console_of(rt)
        plain = app.get("/login").headers["Set-Cookie"]
        assert "HttpOnly" in plain and "Secure" not in plain
        proxied = app.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "; Secure" in proxied.headers["Set-Cookie"]
        over_tls = webtest.TestApp(app.app, extra_environ={"wsgi.url_scheme": "https"})
        assert "; Secure" in session_cookie(login(over_tls))
    finally:
        rt.close()
    rt = money_runtime(console_https=True)
    try:
        assert "; Secure" in console_of(rt).get("/login").headers["Set-Cookie"]
    finally:
        rt.close()


def test_after_login_only_the_consoles_own_pages_are_redirected_to():
    rt = money_runtime()
    try:
        app = console_of(rt)
        for target, expected in [
            ("/calls?outcome=hangup", "/calls?outcome=hangup"),
            ("/plugins/credit/accounts?account=demo", "/plugins/credit/accounts?account=demo"),
            ("/%09/evil.host/x", "/"),  # browsers strip the tab: //evil.host/x
            ("/%0a/evil.host/x", "/"),
            ("/%0d%0aSet-Cookie:%20x=1", "/"),
            ("//evil.host/x", "/"),
            ("/%5Cevil.host", "/"),
            ("/%20/evil.host", "/"),
            ("https://evil.host/", "/"),
            ("/evil", "/"),
            ("/calls/../../elsewhere", "/"),
        ]:
            app.reset()
            form = app.get("/login?next=" + target).forms[0]
            form["password"] = TOKEN
            done = form.submit(status=303)
            assert done.location == expected, target
            assert app.get("/login?next=" + target, status=303).location == expected
    finally:
        rt.close()


def test_operators_log_in_with_their_password_and_are_audited_by_name():
    users = [{"name": "alice", "password_hash": hash_password(PASSWORD)}]
    rt = money_runtime(users=users)
    try:
        app = console_of(rt)
        login(app, PASSWORD, name="bob", status=401)  # unknown user
        login(app, "wrong password", name="alice", status=401)
        login(app, PASSWORD, name="alice")
        assert "(alice)" in app.get("/").text
        assert [(who, o) for who, a, _, o, _, _ in audit_rows(rt)] == [
            ("bob", "refused"),
            ("alice", "refused"),
            ("alice", "ok"),
        ]
    finally:
        rt.close()


def test_the_login_form_needs_its_csrf_token_and_failures_are_throttled():
    rt = money_runtime()
    try:
        app = console_of(rt)
        app.get("/login")
        app.post("/login", {"name": "", "password": TOKEN}, status=403)  # no token
        for _ in range(10):
            login(app, "guess", status=401)
        throttled = login(app, TOKEN, status=429)  # a new browser: even the right one
        assert "Too many failed logins" in throttled.text
    finally:
        rt.close()


def test_others_failures_from_the_same_address_never_lock_a_known_operator_out():
    """Everyone comes from 127.0.0.1 (an SSH tunnel): failures on other names lock no
    one; failures on the token's own name lock only browsers that never logged in with
    it, and an operator's browser that did still logs in; its own failures are counted
    for it alone."""
    users = [{"name": "alice", "password_hash": hash_password(PASSWORD)}]
    rt = money_runtime(users=users)
    try:
        rt.start()
        console = make_console(Fixed(rt))

        def browser() -> webtest.TestApp:
            return webtest.TestApp(console, extra_environ={"REMOTE_ADDR": "127.0.0.1"})

        operator, attacker = browser(), browser()
        login(operator)  # earlier: the operator's browser is known from now on
        operator.post("/logout", {"_csrf": csrf_of(operator.get("/"))}, status=303)
        for i in range(20):  # other names, one address: nobody is locked out for that
            login(attacker, "guess", name=f"someone-{i}", status=401)
        login(browser())  # a browser that never logged in, from the same address
        for _ in range(12):  # the token's own name, from the same address
            login(attacker, "guess", status=(401, 429))
        assert "Too many failed logins" in login(browser(), TOKEN, status=429).text
        login(operator)  # known: the attacker's failures do not count for it
        assert operator.get("/").status_int == 200
        login(browser(), PASSWORD, name="alice")  # another name: its own count
        forged = browser()
        forged.set_cookie("switchboard_console_device", "1.x." + "0" * 64)
        login(forged, TOKEN, status=429)  # a made-up device cookie is no device cookie
    finally:
        rt.close()


def test_the_throttle_bounds_each_lane_and_its_memory():
    throttle = Throttle(window=300, per_name=10, in_all=20, per_device=5, keys=50)
    for i in range(20):  # unknown clients: 20 failures in all, on as many names
        assert throttle.allows(f"name-{i}", now=1000.0)
        throttle.failed(f"name-{i}", now=1000.0)
    assert not throttle.allows("fresh", now=1001.0)  # 20 in all
    assert throttle.allows("fresh", device="known", now=1001.0)  # a known client's lane
    assert throttle.allows("fresh", now=1301.0)  # the window has passed
    for _ in range(10):
        throttle.failed("alice", now=2000.0)
    assert not throttle.allows("alice", now=2001.0)
    for _ in range(5):  # a known client of alice: its own count, five at most
        assert throttle.allows("alice", device="d1", now=2001.0)
        throttle.failed("alice", device="d1", now=2001.0)
    assert not throttle.allows("alice", device="d1", now=2002.0)
    assert throttle.allows("alice", device="d2", now=2002.0)
    for i in range(5000):  # bounded, however many names and devices fail
        throttle.failed("x" * 64 + str(i), now=3000.0)
        throttle.failed("alice", device=f"d-{i}", now=3000.0)
    assert len(throttle) <= 50


def test_a_device_cookie_is_good_for_its_login_only_and_for_a_while():
    digest = hash_password(PASSWORD)
    users = [{"name": "alice", "password_hash": digest}]
    key = device_key("", "the-admin-token-0123", users)
    cookie = device_cookie(key, now=1000.0)
    nonce = cookie.split(".")[1]
    assert known_device(cookie, key, now=1000.0 + 29 * 86400) == nonce
    assert known_device(cookie, key, now=1000.0 + 31 * 86400) is None  # too old
    for other in (
        device_key("", "a-rotated-token-0123", users),  # the token rotated
        device_key("alice", "the-admin-token-0123", users),  # another name
        device_key("alice", None, [{"name": "alice", "password_hash": hash_password("x")}]),
        device_key("nobody", "the-admin-token-0123", users),  # no such login: None
    ):
        assert known_device(cookie, other, now=1001.0) is None
    issued, nonce, mac = cookie.split(".")
    for forged in (f"{issued}.other.{mac}", f"999999999.{nonce}.{mac}", "", "a.b", "x" * 500):
        assert known_device(forged, key, now=1001.0) is None, forged
    # what the store keeps of a login (its credential's digests) makes no device cookie
    stored = credential("", True, "the-admin-token-0123", users) or ""
    made_from_store = hashlib.sha256(b"switchboard console device\0" + stored.encode()).digest()
    assert known_device(device_cookie(made_from_store, now=1000.0), key, now=1001.0) is None


def test_the_login_name_is_capped_and_the_login_form_is_good_once_and_for_a_while():
    rt = money_runtime(users=[{"name": "alice", "password_hash": hash_password(PASSWORD)}])
    try:
        app = console_of(rt)
        long = login(app, "guess", name="n" * 100_000, status=400)
        assert "at most 64 characters" in long.text and "n" * 65 not in long.text
        assert audit_rows(rt) == []
        form = app.get("/login").forms[0]
        form["password"] = "guess"
        form.submit(status=401)
        form["password"] = TOKEN
        form.submit(status=403)  # the same form again: its token is used up
    finally:
        rt.close()
    tokens = LoginTokens(ttl=600)
    nonce, token = tokens.issue(now=1000.0)
    assert not tokens.check(nonce, token + "x", now=1001.0)  # a wrong token uses it up too
    nonce, token = tokens.issue(now=1000.0)
    assert tokens.check(nonce, token, now=1599.0) and not tokens.check(nonce, token, now=1599.0)
    nonce, token = tokens.issue(now=1000.0)
    assert not tokens.check(nonce, token, now=1601.0)  # too old
    assert not tokens.check("made-up", tokens.token("made-up"), now=1000.0)  # not issued here
    small = LoginTokens(limit=10)
    for _ in range(1000):
        small.issue()
    assert len(small._issued) == 10


def test_the_audit_log_keeps_64_characters_of_a_name():
    rt = money_runtime()
    try:
        rt.start()
        schema.migrate(rt.store)
        audit.record(rt.store, "a" * 10_000, "login", None, "192.0.2.1", "refused")
        audit.begin(rt.store, "b" * 10_000, "x", None, "192.0.2.1")
        assert sorted(len(row[0]) for row in audit_rows(rt)) == [64, 64]
    finally:
        rt.close()


def test_logout_ends_the_session_and_needs_the_csrf_token():
    rt = money_runtime()
    try:
        app = console_of(rt)
        login(app)
        page = app.get("/")
        app.post("/logout", {}, status=403)  # no token: still logged in
        assert app.get("/").status_int == 200
        out = app.post("/logout", {"_csrf": csrf_of(page)}, status=303)
        assert out.location.endswith("/login?out=1")
        assert app.get("/", status=303).location.endswith("/login")
        assert [a for _, a, _, o, _, _ in audit_rows(rt)] == ["login", "logout"]
    finally:
        rt.close()


@pytest.fixture
def session_store(backend):
    """A scratch store of the test's backend with the console's tables."""
    store = backend.store()
    schema.migrate(store)
    yield store
    store.close()


def test_sessions_end_when_idle(session_store):
    store, sessions = session_store, Sessions(idle=60)
    session = sessions.new(store, "alice", "token x", now=1000.0)
    assert sessions.get(store, session.sid, now=1050.0).user == "alice"  # last use: 1050
    assert sessions.get(store, session.sid, now=1109.0).csrf == session.csrf
    assert sessions.get(store, session.sid, now=1170.0) is None
    assert sessions.get(store, session.sid, now=1171.0) is None and sessions.count(store) == 0
    assert sessions.get(store, "made-up", now=1000.0) is None
    assert sessions.get(store, "x" * 100_000, now=1000.0) is None


def test_sessions_end_after_their_lifetime_even_when_used(session_store):
    store, sessions = session_store, Sessions(idle=60, lifetime=600)
    session = sessions.new(store, "alice", "token x", now=1000.0)
    for now in range(1050, 1600, 50):
        assert sessions.get(store, session.sid, now=float(now)) is not None
    assert sessions.get(store, session.sid, now=1601.0) is None and sessions.count(store) == 0
    assert Sessions(idle=480 * 60).lifetime == 12 * 3600


def test_a_session_is_stored_as_a_digest_and_its_last_use_written_seldom(session_store):
    store, sessions = session_store, Sessions(idle=600)
    session = sessions.new(store, "alice", "user d alice", now=1000.0)
    rows = store.query(
        "SELECT id, actor, credential, csrf, created_at, seen_at FROM console_sessions"
    )
    assert rows == [
        (sessions_mod.digest(session.sid), "alice", "user d alice", session.csrf, 1000.0, 1000.0)
    ]
    assert session.sid not in repr(store.query("SELECT * FROM console_sessions"))
    for now in (1001.0, 1010.0, 1029.0):  # within SEEN_EVERY: a read, no write
        sessions.get(store, session.sid, now=now)
    assert store.query("SELECT seen_at FROM console_sessions") == [(1000.0,)]
    sessions.get(store, session.sid, now=1031.0)
    assert store.query("SELECT seen_at FROM console_sessions") == [(1031.0,)]
    sessions.end(store, session.sid)
    assert sessions.get(store, session.sid, now=1032.0) is None


def test_logins_prune_ended_sessions_and_keep_the_table_bounded(session_store, monkeypatch):
    monkeypatch.setattr(sessions_mod, "MAX_SESSIONS", 20)
    store, sessions = session_store, Sessions(idle=60)
    old = sessions.new(store, "old", "token x", now=1000.0)
    made = [sessions.new(store, f"op-{i}", "token x", now=2000.0 + i) for i in range(50)]
    assert sessions.count(store) == 20  # the ended one, and the least recently used, gone
    assert sessions.get(store, old.sid, now=2050.0) is None
    assert sessions.get(store, made[-1].sid, now=2050.0) is not None
    assert sessions.get(store, made[0].sid, now=2050.0) is None


def test_sessions_end_when_their_credential_changes_at_a_reload():
    alice = {"name": "alice", "password_hash": hash_password(PASSWORD)}
    bob = {"name": "bob", "password_hash": hash_password(PASSWORD)}
    rt = money_runtime(users=[alice, bob])
    reloaded: list[Any] = []
    try:
        host = Fixed(rt)
        rt.start()
        console = make_console(host)
        as_token, as_alice, as_bob = (
            webtest.TestApp(console, extra_environ={"REMOTE_ADDR": "192.0.2.7"})
            for _ in range(3)
        )
        login(as_token)
        login(as_alice, PASSWORD, name="alice")
        login(as_bob, PASSWORD, name="bob")
        url = "/plugins/credit/accounts?account=demo"
        pages = {app: app.get(url) for app in (as_token, as_alice, as_bob)}
        # reload: the token rotated, alice removed, bob's password changed
        bob2 = {"name": "bob", "password_hash": hash_password("bob's new password")}
        def same_store(given: Any, **sections: Any) -> Any:  # a reload keeps its store
            return _build(rt.store, given, sections)

        reloaded.append(
            money_runtime(same_store, token="a-new-admin-token-0123456789", users=[bob2])
        )
        host.runtime = reloaded[0]
        reloaded[0].start()
        for app, page in pages.items():
            form = {"_action": "topup", "account": "demo", "amount": "10.00"}
            app.post(url, {**form, "_csrf": csrf_of(page)}, status=403)
            assert app.get("/", status=303).location.startswith("/login")
        assert balance(reloaded[0]) == 500
        assert not any(a == "credit.topup" for _, a, _, _, _, _ in audit_rows(reloaded[0]))
        login(as_token, "a-new-admin-token-0123456789")  # the new credentials log in
        assert as_token.get("/").status_int == 200
        host.runtime = rt  # and an unchanged credential keeps its session
        login(as_alice, PASSWORD, name="alice")
        assert as_alice.get("/").status_int == 200
    finally:
        rt.close()
        for other in reloaded:
            other.close(close_store=False)


# ---------------------------------------------------------------------------- changes


def _traffic(rt: Any) -> webtest.TestApp:
    callbacks = webtest.TestApp(make_app(rt))
    post(callbacks, ice("call-ok"))
    post(callbacks, ace("call-ok"))
    post(callbacks, dice("call-ok", duration=95))
    post(callbacks, ice("call-denied", to="+4420123456"))
    rt.pipeline.wait_idle()
    return callbacks


def test_a_top_up_needs_the_csrf_token_and_is_audited(backend):
    rt = money_runtime(backend.runtime)
    try:
        app = console_of(rt)
        login(app)
        page = app.get("/plugins/credit/accounts?account=demo")
        token = csrf_of(page)
        before = balance(rt)
        url = "/plugins/credit/accounts?account=demo"
        fields = {"_action": "topup", "account": "demo", "amount": "10.00"}
        refused = app.post(url, fields, status=403)
        assert "Nothing was changed" in refused.text
        app.post(url, {**fields, "_csrf": "forged"}, status=403)
        app.post(url, {**fields, "_csrf": token + "x"}, status=403)
        assert balance(rt) == before
        assert [a for _, a, _, _, _, _ in audit_rows(rt)] == ["login"]  # nothing ran

        done = app.post(url, {**fields, "_csrf": token, "_once": once_of(page)}, status=303)
        assert done.location.endswith(url)
        assert balance(rt) == before + 1000
        shown = done.follow()
        assert "topped up demo by 10.00 USD: balance 15.00 USD" in shown.text
        actor, action, target, outcome, detail, _ = audit_rows(rt)[-1]
        assert (actor, action, outcome) == ("token", "credit.topup", "ok")
        assert target == "account=demo, amount=10.00" and "balance 15.00" in detail
        [entry] = rt.store.query(
            "SELECT details FROM credit_ledger WHERE account = 'demo' AND kind = 'topup'"
        )
        assert '"source": "console"' in entry[0] and '"by": "token"' in entry[0]

        once = once_of(app.get(url))
        bad = app.post(url, {**fields, "amount": "-3", "_csrf": token, "_once": once}, status=303)
        bad = bad.follow()
        assert "amount must be greater than 0" in bad.text
        assert audit_rows(rt)[-1][3] == "refused" and balance(rt) == before + 1000
        app.post(url, {**fields, "_action": "nope", "_csrf": token}, status=400)
    finally:
        rt.close()


def test_a_top_up_takes_plain_amounts_in_the_accounts_currency_and_books_once(backend):
    rt = money_runtime(backend.runtime)
    try:
        app = console_of(rt)
        login(app)
        url = "/plugins/credit/accounts?account=demo"
        before = balance(rt)

        def top_up(amount: str, **extra: str) -> Any:
            page = app.get(url)
            fields = {"_action": "topup", "account": "demo", "amount": amount}
            fields.update({"_csrf": csrf_of(page), "_once": once_of(page), **extra})
            return app.post(url, fields, status=303).follow()

        for amount in ("1e3", "1_000", "\u0661\u0662", "１２", "12.345", ".5", "5.", "+5",
                       "1" * 13, "9" * 4000, "NaN", "Infinity", " 1 2", "0x10"):
            shown = top_up(amount)
            assert "amount must be" in shown.text, amount
        assert balance(rt) == before and "Traceback" not in shown.text
        assert "topped up demo by 7.50 USD" in top_up("7.5").text
        assert "topped up demo by 999999999999.99 USD" in top_up("999999999999.99").text
        with rt.store.transaction() as tx:  # near what an account can hold
            tx.execute("UPDATE credit_accounts SET balance = ? WHERE account = 'demo'", (10**18,))
        full = top_up("1")
        assert "more than it can hold" in full.text and "failed" not in full.text
        with rt.store.transaction() as tx:
            tx.execute("UPDATE credit_accounts SET balance = ? WHERE account = 'demo'", (before,))
        wrong = top_up("5", currency="EUR")
        assert "account" in wrong.text and "is in" in wrong.text and balance(rt) == before
        assert "topped up demo by 5.00 USD" in top_up("5", currency="USD").text
        # the same form twice: booked once
        page = app.get(url)
        fields = {"_action": "topup", "account": "demo", "amount": "2.00"}
        fields.update({"_csrf": csrf_of(page), "_once": once_of(page)})
        app.post(url, fields, status=303)
        again = app.post(url, fields, status=303).follow()
        assert "sent already" in again.text and balance(rt) == before + 700
        missing = {k: v for k, v in fields.items() if k != "_once"}
        assert "sent already" in app.post(url, missing, status=303).follow().text
        assert balance(rt) == before + 700
        assert all("_once" not in (row[2] or "") for row in audit_rows(rt))
    finally:
        rt.close()


def test_nothing_runs_when_the_audit_log_cannot_be_written(monkeypatch):
    rt = money_runtime()
    try:
        app = console_of(rt)
        login(app)
        token = csrf_of(app.get("/"))

        def broken(*args: Any) -> str:
            raise RuntimeError("disk full")

        monkeypatch.setattr(audit, "begin", broken)
        before = balance(rt)
        res = app.post(
            "/plugins/credit/accounts",
            {"_action": "topup", "account": "demo", "amount": "1", "_csrf": token},
            status=303,
        ).follow()
        assert "audit log cannot be written" in res.text and balance(rt) == before
    finally:
        rt.close()


def test_every_page_renders_and_none_shows_a_secret(backend):
    """The admin token, the Sinch secret, the CRM webhook secret, the store URL's
    password, a plugin setting marked secret, the users' hashes: on no page."""
    secret_setting = "third-party-api-key-42"

    class Vault:
        @hookimpl
        def switchboard_config_keys(self):
            return {"api_key": Key(str, None, "the vault's key", secret=True)}

        @hookimpl
        def switchboard_ice(self, event, ctx):
            return None

    digest = hash_password(PASSWORD)
    store_password = "pg-password-xyz"
    rt = backend.runtime(
        {"allowlist": Allowlist(), "credit": Credit(), "crm": Crm(), "vault": Vault()},
        admin={**ADMIN, "users": [{"name": "alice", "password_hash": digest}]},
        store={
            "url": f"postgresql://switchboard:{store_password}@db.example:5432/sb"
            "?password=pg-query-password&sslpassword=pg-key-passphrase&sslmode=require"
        },
        plugins={
            **PLUGINS,
            "crm": {
                "webhook_url": "http://crm-user-token:url-password-77@127.0.0.1:9/crm"
                "?token=url-query-token&id=1",
                "webhook_secret": CRM_SECRET,
            },
            "vault": {"api_key": secret_setting},
        },
    )
    try:
        app = console_of(rt)
        _traffic(rt)
        login(app, PASSWORD, name="alice")
        secrets = [TOKEN, SECRET, CRM_SECRET, store_password, secret_setting, digest, PASSWORD]
        secrets.append("url-password-77")  # in a URL whose key is not marked secret
        secrets += ["pg-query-password", "pg-key-passphrase", "crm-user-token", "url-query-token"]
        paths = [
            "/",
            "/?hours=24",
            "/calls",
            "/calls?outcome=hangup&number=%2B44",
            "/calls/call-ok",
            "/calls/call-denied",
            "/plugins",
            "/inbox",
            "/audit",
            "/plugins/credit/accounts",
            "/plugins/credit/accounts?account=demo",
            "/plugins/crm/outbox",
        ]
        for path in paths:
            page = app.get(path)
            assert page.status_int == 200, path
            assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
            for secret in secrets:
                assert secret not in page.text, (path, secret)
        plugins_page = app.get("/plugins").text
        assert "&lt;redacted&gt;" in plugins_page and "switchboard:***@db.example" in plugins_page
        assert "?password=***&amp;sslpassword=***&amp;sslmode=require" in plugins_page
    finally:
        rt.close()


# ---------------------------------------------------------------------------- pages


def test_calls_are_listed_filtered_and_each_has_its_page():
    rt = money_runtime()
    try:
        app = console_of(rt)
        _traffic(rt)
        login(app)
        listed = app.get("/calls").text
        assert "/calls/call-ok" in listed and "/calls/call-denied" in listed
        assert "0.04 USD" in listed  # the charge, from credit's call details
        denied = app.get("/calls?outcome=hangup").text
        assert "/calls/call-denied" in denied and "/calls/call-ok" not in denied
        by_number = app.get("/calls?number=%2B1561").text
        assert "/calls/call-ok" in by_number and "/calls/call-denied" not in by_number
        bad = app.get("/calls?since=yesterday", status=400).text
        assert "since: not a time" in bad
        one = app.get("/calls/call-ok").text
        for shown in ("ICE", "ACE", "DICE", "allowlist", "credit", "settled", "0.04 USD"):
            assert shown in one, shown
        assert app.get("/calls/no-such-call", status=404)
        overview = app.get("/").text
        assert "answer time p99" in overview and "open reservation" in overview
        assert 'href="/calls?outcome=hangup' in overview  # a figure links to its calls
    finally:
        rt.close()


def test_a_calls_page_that_stops_looking_says_where_and_goes_on(monkeypatch):
    """Filters that no index narrows are looked for a bounded number of calls at a time:
    the page says how far back it looked and links to the calls before."""
    from core import calls

    rt = money_runtime()
    try:
        app = console_of(rt)
        _traffic(rt)
        login(app)
        monkeypatch.setattr(calls, "NARROW", 1)  # every filter counts as broad: walked
        monkeypatch.setattr(calls, "FIRST_STEP", 1)
        monkeypatch.setattr(calls, "SCAN_ROWS", 1)
        page = app.get("/calls?outcome=hangup&number=%2B1")
        assert "Looked through the calls back to" in page.text
        assert page.html.find(id="scanned").find("time")["datetime"]
        on = page.click("Look further back", index=0)
        seen = on.text
        while "Look further back" in on.text:
            on = on.click("Look further back", index=0)
            seen += on.text
        assert "/calls/call-denied" in page.text + seen and "/calls/call-ok" not in seen
    finally:
        rt.close()


def test_accounts_are_listed_a_page_at_a_time_and_found_by_prefix(backend):
    rt = money_runtime(backend.runtime)
    try:
        app = console_of(rt)
        login(app)
        names = [f"+4420{i:04d}" for i in range(70)] + ["+45", "100%_x", "100_y", "zürich"]
        with rt.store.transaction() as tx:
            for i, name in enumerate(names):
                tx.execute(
                    "INSERT INTO credit_accounts (account, currency, balance, updated_at) "
                    "VALUES (?, 'USD', ?, 0)",
                    (name, 100 * i),
                )
            tx.execute(
                "INSERT INTO credit_reservations (callid, account, amount, rate, "
                "first_increment, next_increment, minimum_charge, max_duration, status, "
                "created_at, expires_at) VALUES ('r1', '+44200003', 250, '0.02', 60, 60, 0, "
                "600, 'open', 0, 9e9)"
            )

        def listed(page):
            return re.findall(r'<th scope="row"><a href="[^"]*">([^<]*)</a>', page.text)

        first = app.get("/plugins/credit/accounts")
        shown = listed(first)
        every = sorted([*names, "demo"])
        assert shown == every[:50]
        row = re.search(r"\+44200003</a></th>(.*?)</tr>", first.text).group(1)
        assert re.findall(r">([^<]*)</td>", row) == ["3.00 USD", "2.50", "0.50", "1"]
        second = first.click("More accounts")
        assert listed(second) == every[50:] and "More accounts" not in second.text
        assert listed(second.click("First accounts")) == shown
        found = app.get("/plugins/credit/accounts", {"q": "+44200"})
        assert listed(found) == [n for n in names if n.startswith("+44200")][:50]
        assert listed(found.click("More accounts")) == names[50:70]
        assert listed(app.get("/plugins/credit/accounts", {"q": "+4420006"})) == names[60:70]
        assert listed(app.get("/plugins/credit/accounts", {"q": "100%"})) == ["100%_x"]  # no LIKE
        assert listed(app.get("/plugins/credit/accounts", {"q": "100_"})) == ["100_y"]
        assert listed(app.get("/plugins/credit/accounts", {"q": "zü"})) == ["zürich"]
        none = app.get("/plugins/credit/accounts", {"q": "+999"})
        assert listed(none) == [] and "No accounts starting with +999." in none.text
    finally:
        rt.close()


def test_the_accounts_list_reads_a_page_through_indexes():
    """A page of accounts is a range of their primary key and one index lookup of the
    open reservations per account shown: no scan, no grouping of every account."""
    from plugins.credit import console as credit_console

    rt = money_runtime()
    try:
        rt.start()
        reads = []

        class Seen:
            def inspect(self, sql, params=()):
                reads.append((sql, params))
                return rt.store.inspect(sql, params)

        settings = rt.plugins.pm.get_plugin("credit").settings
        for params in ({}, {"after": "a", "q": "d"}, {"q": "+1"}):
            request = ConsoleRequest(
                user="t", plugin="credit", store=Seen(), config={}, params=params
            )
            credit_console.account_list(settings, request)
        for sql, params in reads:
            plan = [r[-1] for r in rt.store.query("EXPLAIN QUERY PLAN " + sql, params)]
            assert all(step.startswith("SEARCH") for step in plan), (sql, plan)
            if "substr(account" in sql:  # a prefix: a range of the key, both ends
                assert "(account>? AND account<?)" in plan[0], (sql, plan)
    finally:
        rt.close()


class Pages:
    """A third-party plugin's console pages: a good one, one whose page fails, one
    whose action refuses or fails."""

    def __init__(self) -> None:
        self.done: list[str] = []

    @hookimpl
    def switchboard_console_pages(self):
        def fine(request):
            return f"<p>hello {request.user}</p>" + request.action_form("poke", "Poke")

        def poke(request):
            self.done.append(request.user)
            return "poked"

        def refuse(request):
            raise ValueError("not today")

        def explode(request):
            raise RuntimeError("the secret is 42")

        return [
            ConsolePage("", "Pages", fine, {"poke": poke, "refuse": refuse, "boom": explode}),
            ConsolePage("broken", "Broken", explode, panel=explode),
        ]


class BadPages:
    @hookimpl
    def switchboard_console_pages(self):
        return ["not a page"]


def test_plugin_pages_come_from_the_hook_and_their_failures_stay_theirs():
    plugin = Pages()
    rt = runtime({"pages": plugin, "bad": BadPages()}, admin=ADMIN)
    try:
        app = console_of(rt)
        login(app)
        page = app.get("/plugins/pages")
        assert "hello token" in page.text
        token = csrf_of(page)
        app.post("/plugins/pages", {"_action": "poke"}, status=403)
        assert plugin.done == []
        ok = app.post("/plugins/pages", {"_action": "poke", "_csrf": token}, status=303)
        assert plugin.done == ["token"] and "poked" in ok.follow().text
        refused = app.post("/plugins/pages", {"_action": "refuse", "_csrf": token}).follow()
        assert "not today" in refused.text
        failed = app.post("/plugins/pages", {"_action": "boom", "_csrf": token}).follow()
        assert "pages.boom failed (RuntimeError)" in failed.text and "42" not in failed.text
        assert [(a, o) for _, a, _, o, _, _ in audit_rows(rt)][1:] == [
            ("pages.poke", "ok"),
            ("pages.refuse", "refused"),
            ("pages.boom", "failed"),
        ]
        broken = app.get("/plugins/pages/broken", status=500)
        assert "This page of the plugin pages failed" in broken.text and "42" not in broken.text
        assert "This panel failed" in app.get("/").text  # the Overview still renders
        assert "bad: must return a list of core.ConsolePage" in app.get("/plugins").text
        app.get("/plugins/bad/anything", status=404)
    finally:
        rt.close()


class Flaky:
    """A DiCE observer that fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = True

    @hookimpl
    def switchboard_dice(self, event, ctx):
        if self.failing:
            raise RuntimeError("ledger database is down")


def test_parked_work_is_listed_and_retried_from_the_inbox():
    flaky = Flaky()
    rt = runtime(
        {"router": _Router(), "flaky": flaky},
        admin=ADMIN,
        policy={"retry_attempts": 1, "retry_backoff": 0.05},
    )
    try:
        app = console_of(rt)
        callbacks = webtest.TestApp(make_app(rt))
        post(callbacks, ice("parked-1"))
        post(callbacks, dice("parked-1"))
        assert wait_for(lambda: [w.state for w in rt.store.waiting("parked-1")] == ["parked"])
        login(app)
        inbox = app.get("/inbox")
        assert "parked-1" in inbox.text and "ledger database is down" in inbox.text
        token = csrf_of(inbox)
        fields = {"callid": "parked-1", "event": "dice", "sub": ""}
        app.post("/inbox/retry", fields, status=403)
        assert [w.state for w in rt.store.waiting("parked-1")] == ["parked"]
        flaky.failing = False
        done = app.post("/inbox/retry", {**fields, "_csrf": token}, status=303).follow()
        assert "retried dice of call parked-1: done" in done.text
        assert rt.store.waiting("parked-1") == []
        assert audit_rows(rt)[-1][1:4] == ("inbox.retry", "parked-1 dice", "ok")
    finally:
        rt.close()


class _Router:
    @hookimpl
    def switchboard_ice(self, event, ctx):
        return Decision.propose(ConnectPstn(number="+15612600684", max_duration=300), "route")


def test_the_audit_log_pages():
    rt = money_runtime()
    try:
        app = console_of(rt)
        login(app)
        rt.start()
        for i in range(60):
            audit.record(rt.store, "alice", "test.action", f"item-{i}", "127.0.0.1", "ok")
        first = app.get("/audit")
        assert "item-59" in first.text and "item-9<" not in first.text
        older = first.click(description="Older")
        assert "item-9<" in older.text and "item-59" not in older.text
    finally:
        rt.close()


def test_a_slow_overview_is_computed_once_for_operators_asking_together(monkeypatch):
    """Operators refreshing the Overview share one computation; a quick one stays fresh."""
    import threading as _threading
    import time as _time

    from core.console import views

    made: list[float] = []

    def slow_overview(store, since, until):
        made.append(since)
        _time.sleep(0.1)
        return ("overview", since)

    monkeypatch.setattr(views.calls_mod, "overview", slow_overview)
    cache = views.Overviews(fresh=5.0, slow=0.05)
    store = object()
    got: list[object] = []
    workers = [
        _threading.Thread(target=lambda: got.append(cache.get(store, 60.0, 120.0)))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert made == [60.0] and got == [("overview", 60.0)] * 4
    monkeypatch.setattr(views.calls_mod, "overview", lambda store, since, until: ("quick", since))
    quick = views.Overviews(fresh=5.0, slow=0.05)
    assert quick.get(store, 0.0, 60.0) == ("quick", 0.0)
    monkeypatch.setattr(views.calls_mod, "overview", lambda store, since, until: ("again", since))
    assert quick.get(store, 0.0, 60.0) == ("again", 0.0)  # quick ones are not kept


class SlowPage:
    """A plugin page whose read runs for seconds."""

    @hookimpl
    def switchboard_console_pages(self):
        def slow(request):
            (count,), = request.store.inspect(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 30000000) SELECT COUNT(*) FROM n"
            )
            return f"<p>{count}</p>"

        return [ConsolePage("", "Slow", slow)]


def test_a_page_whose_read_runs_too_long_says_so(backend):
    rt = backend.runtime({"slow": SlowPage()}, admin=ADMIN)
    try:
        app = console_of(rt)
        login(app)
        rt.store.inspect_timeout = 0.2
        page = app.get("/plugins/slow", status=503)
        assert "The query took longer than 0.2 s; narrow the filters" in page.text
        assert "Plugin health" in app.get("/").text  # the store is free again
    finally:
        rt.close()


OPERATOR_TABLES = re.compile(r"\b(credit_\w+|crm_\w+|console_\w+)\b")


def test_operators_reads_of_the_plugins_tables_are_store_inspect(backend, tmp_path, monkeypatch):
    """Every console page and every plugin command reads with ``Store.inspect`` (the
    operators' reads, with their time limit), never ``Store.query`` (the callbacks')."""
    read: list[str] = []
    kind = type(backend.store())
    plain = kind.query

    def spied(self: Any, sql: str, params: Any = ()) -> Any:
        read.append(sql)
        return plain(self, sql, params)

    rt = money_runtime(backend.runtime)
    try:
        app = console_of(rt)
        _traffic(rt)
        login(app)
        monkeypatch.setattr(kind, "query", spied)
        for path in (
            "/",
            "/calls",
            "/calls/call-ok",
            "/inbox",
            "/audit",
            "/plugins/credit/accounts",
            "/plugins/credit/accounts?account=demo",
            "/plugins/crm/outbox",
        ):
            assert app.get(path).status_int == 200, path
        assert [sql for sql in read if OPERATOR_TABLES.search(sql)] == []
    finally:
        rt.close()

    config = tmp_path / "config.toml"
    url = backend.url(tmp_path, "commands")
    config.write_text(
        f'[store]\nurl = "{url}"\n[[sinch.keys]]\nkey = "k"\nsecret = "{SECRET}"\n'
        '[plugins]\nenabled = ["credit", "crm"]\n'
        '[plugins.credit]\naccount_from = "fixed"\naccount = "demo"\n'
        'rates = { "+1" = "0.02" }\ninitial_accounts = { "demo" = "5.00" }\n'
    )
    for args in (
        ("credit", "show", "demo"),
        ("credit", "ledger", "demo"),
        ("crm", "outbox"),
        ("crm", "dead"),
        ("crm", "export", "--format", "csv"),
    ):
        ran = run_cli(config, *args)
        assert ran.returncode == 0, (args, ran.stdout, ran.stderr)
    assert [sql for sql in read if OPERATOR_TABLES.search(sql)] == []


def test_an_actions_message_shows_on_whichever_process_serves_the_next_page(backend):
    """Two consoles on one store (two server processes behind one address): a session
    made by one is known to the other, and the message of an action posted to one is
    shown once, by the other."""
    rt = money_runtime(backend.runtime)
    try:
        one = console_of(rt)
        two = webtest.TestApp(make_console(Fixed(rt)), extra_environ={"REMOTE_ADDR": "192.0.2.8"})
        login(one)
        two.set_cookie("switchboard_console", one.cookies["switchboard_console"])
        url = "/plugins/credit/accounts?account=demo"
        page = two.get(url)
        fields = {"_action": "topup", "account": "demo", "amount": "1.00", "_once": once_of(page)}
        done = one.post(url, {**fields, "_csrf": csrf_of(page)}, status=303)
        assert "topped up demo by 1.00 USD" in two.get(done.location).text
        assert "topped up demo" not in two.get(url).text  # shown once
    finally:
        rt.close()
