"""The operator console in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium, against a real server with the console on,
after simulated traffic.

An operator logs in, sees the calls just made, filters them, opens one call's timeline
and trace, tops up an account (a POST without the CSRF token is refused and changes
nothing), replays a CRM dead letter, reads the audit log, replays a candidate
configuration through the Replay form, reads the Revisions page and logs out. No page may show
a configured secret. A screenshot of every page is saved under the test run's base
temporary directory, in ``console-screenshots/`` (the path is printed).

Skipped when selenium or Chromium is missing, unless ``SWITCHBOARD_TEST_BROWSER`` is
set (as ``.ci/run`` does, after installing them): then it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.console.auth import hash_password
from tests.helpers import KEY, SECRET, ace, dice, ice

TOKEN = "browser-admin-token-0123456789"
PASSWORD = "alice's very long password"
CRM_SECRET = "crm-webhook-secret-for-the-browser"
STORE_PASSWORD = "store-password-in-the-url"
MANDATORY = "SWITCHBOARD_TEST_BROWSER"


def _missing(what: str) -> None:
    if os.environ.get(MANDATORY):
        pytest.fail(f"${MANDATORY} is set but {what}")
    pytest.skip(what)


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory, capsys: Any) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not os.path.exists(driver_path):
        _missing("Chromium is not installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    shots = tmp_path_factory.getbasetemp() / "console-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    driver.shots = shots  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()
        with capsys.disabled():  # in the test run's output, whatever the capture
            print(f"\nconsole screenshots: {shots}")


class FakeCrm:
    """A CRM webhook on a given port: accepts every record, remembers its call id."""

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                crm.received.append(self.headers["Idempotency-Key"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(store_url: str, crm_port: int) -> str:
    digest = hash_password(PASSWORD)
    return f"""
[server]
port = 0
shutdown_grace = 3

[[sinch.keys]]
key = "{KEY}"
secret = "{SECRET}"

[admin]
token = "{TOKEN}"
console = "127.0.0.1:0"

[[admin.users]]
name = "alice"
password_hash = "{digest}"

[store]
url = "{store_url}"

[plugins]
enabled = ["allowlist", "credit", "crm"]

[plugins.allowlist]
allow = ["+1*"]
max_duration = 600

[plugins.credit]
account_from = "fixed"
account = "demo"
rates = {{ "+1" = "0.02", "+44" = "0.05" }}
initial_accounts = {{ demo = "5.00" }}
max_duration = 300

[plugins.crm]
webhook_url = "http://127.0.0.1:{crm_port}/calls"
webhook_secret = "{CRM_SECRET}"
max_attempts = 1
poll_interval = 0.05
delivery_timeout = 2
"""


def _with_password(url: str) -> str:
    """The PostgreSQL test URL with a password in it (trust authentication ignores it):
    the console must never show it."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{STORE_PASSWORD}@{host}"


class Operator:
    """The browser as an operator uses it, checking every page it sees."""

    SECRETS = (TOKEN, PASSWORD, SECRET, CRM_SECRET, STORE_PASSWORD)

    def __init__(self, driver: Any, base: str, name: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.base, self.by = driver, base, By
        self.shots: Path = driver.shots / name
        self.shots.mkdir(exist_ok=True)
        self.seen = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.check()

    def check(self) -> None:
        source = self.driver.page_source
        for secret in self.SECRETS:
            assert secret not in source, f"a secret is shown on {self.driver.current_url}"
        assert "password_hash" not in source and "scrypt$" not in source

    def shot(self, name: str) -> None:
        self.check()
        self.seen += 1
        path = self.shots / f"{self.seen:02d}-{name}.png"
        try:  # the whole page, not just the window
            width = self.driver.get_window_size()["width"]
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(width, max(600, min(int(height) + 120, 6000)))
        except Exception:  # noqa: BLE001 - a window-sized shot is still a shot
            pass
        self.driver.save_screenshot(str(path))

    def text(self) -> str:
        return str(self.driver.find_element(self.by.TAG_NAME, "main").text)

    def click_link(self, text: str) -> None:
        self.driver.find_element(self.by.LINK_TEXT, text).click()
        self.check()

    def until(self, predicate: Any, timeout: float = 15.0, refresh: bool = False) -> None:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        def holds() -> bool:
            try:
                return bool(predicate())
            except (StaleElementReferenceException, NoSuchElementException):
                return False  # the page was being replaced

        end = time.monotonic() + timeout
        while not holds():
            if time.monotonic() > end:
                raise AssertionError(f"timed out on {self.driver.current_url}:\n{self.text()}")
            time.sleep(0.2)
            if refresh:
                self.driver.refresh()
                self.check()


def post_without_browser(base: str, path: str, cookie: str, fields: dict[str, str]) -> int:
    """POST a form with the operator's session cookie but outside the browser."""
    request = urllib.request.Request(
        base + path,
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Cookie": f"switchboard_console={cookie}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code)


def test_an_operator_uses_the_console_in_a_browser(serve, backend, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    store_url = backend.url(tmp_path, "browser")
    if backend.name == "postgres":
        store_url = _with_password(store_url)
    crm_port = free_port()  # closed: the first delivery fails, and is a dead letter
    server = serve(config(store_url, crm_port))
    line = server.proc.stdout.readline()
    assert line.startswith("switchboard console on "), line
    base = line.split()[3].rstrip("/")

    for event in (  # simulated traffic
        ice("web-1"),
        ace("web-1"),
        dice("web-1", duration=95),
        ice("web-2", to="+442071234567"),
        dice("web-2", duration=0, result="NOANSWER"),
        ice("web-3", to="+15612600685"),
    ):
        status, _, body = server.post(event)
        assert status == 200, body

    op = Operator(browser, base, backend.name)
    by = op.by

    # log in
    op.open("/calls")
    assert browser.current_url.startswith(base + "/login")
    op.shot("login")
    browser.find_element(by.ID, "name").send_keys("alice")
    browser.find_element(by.ID, "password").send_keys(PASSWORD + Keys.ENTER)
    op.until(lambda: browser.current_url == base + "/calls")
    op.check()

    # the calls just made, newest first
    listed = op.text()
    for callid in ("web-1", "web-2", "web-3"):
        assert browser.find_elements(by.CSS_SELECTOR, f'a[href="/calls/{callid}"]'), callid
    assert "0.04 USD" in listed  # what web-1 cost
    op.shot("calls")

    # filter them: the denied call
    Select(browser.find_element(by.ID, "f-outcome")).select_by_value("hangup")
    browser.find_element(by.XPATH, "//button[text()='Show calls']").click()
    op.until(lambda: "outcome=hangup" in browser.current_url)
    op.check()
    assert browser.find_elements(by.CSS_SELECTOR, 'a[href="/calls/web-2"]')
    assert not browser.find_elements(by.CSS_SELECTOR, 'a[href="/calls/web-1"]')
    op.shot("calls-denied")
    op.click_link("Clear the filters")
    browser.find_element(by.ID, "f-number").send_keys("+1561" + Keys.ENTER)
    op.until(lambda: "number=%2B1561" in browser.current_url)
    op.check()
    assert not browser.find_elements(by.CSS_SELECTOR, 'a[href="/calls/web-2"]')
    op.shot("calls-by-number")

    # one call: its timeline and traces, why it was capped, what it cost
    browser.find_element(by.CSS_SELECTOR, 'a[href="/calls/web-1"]').click()
    op.until(lambda: browser.current_url == base + "/calls/web-1")
    op.check()
    page = op.text()
    assert re.search(r"Capped at\s+300 s \(5:00\)\s+by credit", page), page
    for shown in ("ICE", "ACE", "DICE", "allowlist", "credit", "decided", "0.04 USD"):
        assert shown in page, shown
    assert "settled: 0.10 USD for 300 s" in page  # the reservation, from credit
    op.shot("call")

    # the overview, and the keyboard: the first Tab reaches the skip link
    op.click_link("Overview")
    assert "calls" in op.text() and "Plugin health" in op.text()
    browser.find_element(by.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to the content"
    op.shot("overview")

    # top up an account
    op.click_link("Accounts")
    op.click_link("demo")
    assert "billed 120 s at 0.02/min; granted 300 s" in op.text()  # web-1 on the ledger
    op.shot("account")
    balance = browser.find_element(by.CSS_SELECTOR, ".figures .figure").text
    browser.find_element(by.ID, "topup-amount").send_keys("10.00")
    browser.find_element(by.XPATH, "//button[text()='Top up']").click()
    op.until(lambda: "topped up demo by 10.00 USD" in op.text())
    after = browser.find_element(by.CSS_SELECTOR, ".figures .figure").text
    assert float(after) == pytest.approx(float(balance) + 10)
    op.shot("account-topped-up")

    # a POST without the CSRF token (or with a wrong one) is refused and changes nothing
    cookie = browser.get_cookie("switchboard_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    target = "/plugins/credit/accounts?account=demo"
    forged = {"_action": "topup", "account": "demo", "amount": "50.00"}
    assert post_without_browser(base, target, cookie["value"], forged) == 403
    assert post_without_browser(base, target, cookie["value"], {**forged, "_csrf": "x"}) == 403
    browser.refresh()
    op.check()
    assert browser.find_element(by.CSS_SELECTOR, ".figures .figure").text == after

    # retry a dead letter: its delivery failed (closed port, max_attempts 1)
    op.click_link("CRM outbox")
    op.until(lambda: "web-1" in op.text() and "No dead letters" not in op.text(), refresh=True)
    op.shot("crm-dead-letter")
    replay_web_1 = "//form[input[@name='callid'][@value='web-1']]//button[text()='Replay']"
    crm = FakeCrm(crm_port)  # the CRM is back
    try:
        browser.find_element(by.XPATH, replay_web_1).click()
        op.until(lambda: "replayed 1 dead letter(s) into the outbox" in op.text())
        op.until(lambda: "web-1" in crm.received)
        op.until(
            lambda: "Nothing is waiting" in op.text()
            and not browser.find_elements(by.XPATH, replay_web_1),
            refresh=True,
        )
        assert "web-2" in op.text()  # still a dead letter
        op.shot("crm-replayed")
    finally:
        crm.close()
    op.open("/calls/web-1")
    assert "delivered" in op.text()

    # the other pages
    op.click_link("Inbox")
    assert "Nothing is waiting" in op.text()
    op.shot("inbox")
    op.click_link("Plugins")
    browser.find_element(by.XPATH, "//section[@aria-labelledby='plugin-crm']//summary").click()
    row = browser.find_element(by.XPATH, "//tr[th/code[text()='webhook_secret']]").text
    assert "<redacted>" in row, row
    op.shot("plugins")
    op.click_link("Audit log")
    audit = op.text()
    assert "credit.topup" in audit and "crm.replay" in audit and "alice" in audit
    assert "amount=50.00" not in audit  # the forged POSTs never ran
    op.shot("audit")

    # replay a candidate that denies web-3's number, through the form
    op.click_link("Replay")
    op.shot("replay-form")
    candidate = (
        '[plugins]\nenabled = ["allowlist", "credit"]\n'
        '[plugins.allowlist]\nallow = ["+1*"]\ndeny = ["+15612600685"]\nmax_duration = 600\n'
        '[plugins.credit]\naccount_from = "fixed"\naccount = "demo"\n'
        'rates = { "+1" = "0.02", "+44" = "0.05" }\nmax_duration = 300\n'
    )
    browser.find_element(by.ID, "r-config").send_keys(candidate)
    browser.find_element(by.XPATH, "//button[text()='Replay']").click()
    op.until(lambda: browser.find_elements(by.ID, "replay-report"))
    op.check()
    report = op.text()
    assert "now denied by allowlist" in report, report
    changed = browser.find_element(by.ID, "replay-changed")
    assert changed.find_elements(by.CSS_SELECTOR, 'a[href="/calls/web-3"]')
    assert browser.find_element(by.ID, "r-config").get_attribute("value") == ""  # not echoed
    assert "deny" not in browser.page_source
    op.shot("replay-report")
    op.click_link("Revisions")
    assert "running" in op.text() and "start" in op.text()
    op.shot("revisions")
    browser.find_element(by.CSS_SELECTOR, "#loads a.mono").click()
    op.until(lambda: browser.find_elements(by.ID, "revision-content"))
    op.check()
    op.shot("revision-content")
    op.click_link("Audit log")
    assert "replay" in op.text() and "would change" in op.text()

    # readable on a phone
    browser.set_window_size(390, 844)
    for path, name in (("/", "phone-overview"), ("/calls", "phone-calls"),
                       ("/calls/web-1", "phone-call"), ("/replay", "phone-replay"),
                       ("/revisions", "phone-revisions")):
        op.open(path)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, f"{path} is {width}px wide on a phone"
        op.shot(name)
        browser.set_window_size(390, 844)
    browser.set_window_size(1280, 1000)

    # log out
    op.open("/")
    browser.find_element(by.XPATH, "//button[starts-with(normalize-space(.), 'Log out')]").click()
    op.until(lambda: "You are logged out" in op.text())
    op.shot("logged-out")
    op.open("/calls")
    assert browser.current_url.startswith(base + "/login")
    assert server.stop() == 0
