"""The console's Replay and Revisions pages on a real server, on both stores: a
candidate configuration replayed from the console after traffic, never echoed, refused
without the CSRF token or when it is wrong, audited; the revisions loaded by a start
and a reload, and what changed between them."""

from __future__ import annotations

import base64
import html
import json
import re
import signal

import pytest

from tests.helpers import KEY, SECRET, dice, ice, wait_for
from tests.test_console_server import TOKEN, Browser, console_url

pytestmark = pytest.mark.usefixtures("backend")

UK = "+4420794600"  # + two digits
US = "+1561260068"  # + one digit
# a secret only the pasted candidate holds: no response may show it
PASTED_SECRET = base64.b64encode(b"crep-pasted-candidate-secret").decode()
MARKER = "crep-pasted-comment-marker"


def _config(url: str, allow: str = '"+1561260068*", "+4420794600*"', extra: str = "") -> str:
    return (
        f'[server]\nport = 0\nshutdown_grace = 3\n'
        f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[admin]\ntoken = "{TOKEN}"\nconsole = "127.0.0.1:0"\n'
        f'[store]\nurl = "{url}"\n'
        '[plugins]\nenabled = ["allowlist"]\n'
        f"[plugins.allowlist]\nallow = [{allow}]\nmax_duration = 600\n{extra}"
    )


def _candidate(extra: str = 'deny = ["+44207946001*"]\n', sinch: bool = False) -> str:
    """A candidate as an operator pastes it: no [server], [admin] or [store] needed."""
    text = f"# {MARKER}\n"
    if sinch:
        text += f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{PASTED_SECRET}" }}]\n'
    return text + (
        '[plugins]\nenabled = ["allowlist"]\n'
        '[plugins.allowlist]\nallow = ["+1561260068*", "+4420794600*"]\nmax_duration = 600\n'
        + extra
    )


def _traffic(server, calls: int = 24) -> dict[str, str]:
    sent = {}
    for n in range(calls):
        callid = f"call-{n:03d}"
        to = f"{UK}{n % 100:02d}" if n % 4 == 0 else f"{US}{n % 10}"
        status, _, body = server.post(ice(callid, to=to))
        assert status == 200, body
        assert server.post(dice(callid, to=to, duration=30))[0] == 200
        sent[callid] = to
    return sent


def _csrf(page: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def _replays(browser: Browser) -> int:
    return browser.get("/audit")[1].count("<code>replay</code>")


def test_a_candidate_is_replayed_from_the_console(serve, tmp_path, backend):
    server = serve(_config(backend.url(tmp_path, "console-policy")), name="live")
    browser = Browser(console_url(server))
    browser.login()
    sent = _traffic(server)
    uk = sorted(c for c, to in sent.items() if to.startswith("+44207946001"))
    assert uk == ["call-012", "call-016"]  # 4420794600 + 12, + 16

    status, form = browser.get("/replay")
    assert status == 200 and 'name="config"' in form and 'href="/replay"' in form
    assert 'aria-current="page">Replay' in form
    token = _csrf(form)
    responses: list[str] = []

    def post(fields: dict[str, str]) -> tuple[int, str]:
        status, page = browser.post("/replay", fields)
        responses.append(page)
        return status, page

    # without the CSRF token (or with a wrong one): refused, nothing run, nothing audited
    assert post({"config": _candidate()})[0] == 403
    assert post({"config": _candidate(), "_csrf": "wrong"})[0] == 403
    assert _replays(browser) == 0

    # a candidate without [sinch]: the running file's is used
    status, page = post({"_csrf": token, "config": _candidate(), "limit": "500"})
    assert status == 200, page
    text = html.unescape(page)
    assert (
        "2 calls to +44207946001* now denied by allowlist: <number> denied by rule "
        "'+44207946001*'" in text
    )
    assert re.search(r'id="changed-count">2<', page)
    changed = re.search(r'<table class="stack" id="replay-changed">.*?</table>', page, re.S)
    assert changed is not None
    for callid in uk:
        assert f'href="/calls/{callid}"' in changed.group(0)
    assert 'href="/calls/call-004"' not in changed.group(0)  # to the UK, not denied
    assert "connectPstn" in changed.group(0) and "hangup" in changed.group(0)
    running = re.search(r'revision <a href="/revisions\?show=([0-9a-f]{12})"', page).group(1)
    assert f'href="/revisions?show={running}"' in page  # the recorded answers' revision
    assert "Limits of a replay" in page and "sandbox" in page
    assert '<textarea id="r-config" name="config" rows="16" spellcheck="false" ' in page
    assert re.search(r'name="config"[^>]*></textarea>', page)  # empty: never echoed

    # the window and the limit pick the calls
    status, page = post({"_csrf": token, "config": _candidate(), "limit": "5"})
    assert status == 200 and re.search(r'id="changed-count">0<', page)
    status, page = post({"_csrf": token, "config": _candidate(), "callid": "call-016"})
    assert status == 200 and re.search(r'id="changed-count">1<', page)
    status, page = post(
        {"_csrf": token, "config": _candidate(), "until": "2000-01-01T00:00"}
    )
    assert status == 200 and "No answer would change" in page

    # a candidate with its own [sinch] and a secret: neither is shown again
    status, page = post({"_csrf": token, "config": _candidate(sinch=True)})
    assert status == 200 and re.search(r'id="changed-count">2<', page)

    # a bad candidate: 400, the key named, nothing run
    status, page = post(
        {"_csrf": token, "config": _candidate('caller_limit = "many"\n', sinch=True)}
    )
    assert status == 400, page
    assert "plugins.allowlist.caller_limit" in html.unescape(page)
    status, page = post({"_csrf": token, "config": "[plugins\nenabled = ["})
    assert status == 400 and "not valid TOML" in page
    status, page = post({"_csrf": token, "config": _candidate(), "limit": "5001"})
    assert status == 400 and "limit: from 1 to 5000" in page
    status, page = post({"_csrf": token, "config": _candidate(), "since": "yesterday"})
    assert status == 400 and "since: not a time" in page
    status, page = post({"_csrf": token, "config": _candidate(), "until": "0001-01-01T00:00+14:00"})
    assert status == 400 and "until: not a time" in page  # no epoch holds it
    status, page = post({"_csrf": token, "config": "  "})
    assert status == 400 and "paste a candidate configuration" in page

    # every run and every refused candidate is in the audit log, no forged one
    audit = html.unescape(browser.get("/audit")[1])
    responses.append(audit)
    assert _replays(browser) == 7  # 5 runs, 2 refused candidates
    assert "candidate revision" in audit and "2 of 24 answer(s) would change" in audit
    assert "at most 500 calls" in audit and "call call-016" in audit
    assert "refused" in audit and "plugins.allowlist.caller_limit" in audit

    for page in responses:
        assert PASTED_SECRET not in page and MARKER not in page and SECRET not in page
    assert server.stop() == 0


def test_the_revisions_page_lists_the_loads_and_what_changed(serve, tmp_path, backend):
    url = backend.url(tmp_path, "console-revisions")
    server = serve(_config(url, allow='"+1561260068*"'), name="live")
    browser = Browser(console_url(server))
    browser.login()
    assert server.post(ice("before", to="+15612600684"))[0] == 200
    server.config.write_text(_config(url, allow='"+1561260068*", "+44*"'))
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in server.log, timeout=10)
    assert server.post(ice("after", to="+442079460000"))[0] == 200

    status, page = browser.get("/revisions")
    assert status == 200, page
    assert 'aria-current="page">Revisions' in page
    loads = re.findall(r'<td data-label="Revision"><span><a href="/revisions\?show=([0-9a-f]{12})"', page)
    assert len(loads) == 2 and loads[0] != loads[1]
    new, old = loads
    hows = re.findall(r'<td data-label="How">(\w+)</td>', page)
    assert hows == ["reload", "start"]
    assert page.count('<span class="badge ok">running</span>') == 1
    assert re.search(rf"show={new}\" class=\"mono\">{new}</a>\s*<span class=\"badge ok\">running", page)
    assert f'href="/revisions?old={old}&amp;new={new}"' in page

    status, page = browser.get(f"/revisions?old={old}&new={new}")
    assert status == 200
    assert (
        'plugins.allowlist.allow: ["+1561260068*"] -> ["+1561260068*", "+44*"]'
        in html.unescape(page)
    )
    status, page = browser.get(f"/revisions?show={old[:6]}")
    assert status == 200 and f"Revision <span class=\"mono\">{old}</span>" in page
    shown = re.search(r'<pre class="json">(.*?)</pre>', page, re.S)
    assert shown is not None
    content = json.loads(html.unescape(shown.group(1)))
    assert content["plugins"]["allowlist"]["allow"] == ["+1561260068*"]
    assert SECRET not in page and TOKEN not in page

    assert browser.get("/revisions?show=abcdef")[0] == 404
    status, page = browser.get("/revisions?show=not-hex")
    assert status == 400 and "not a revision id" in page

    # each call's trace links the revision that decided it
    for callid, revision in (("before", old), ("after", new)):
        page = browser.get(f"/calls/{callid}")[1]
        assert f'href="/revisions?show={revision}"' in page, callid
    assert server.stop() == 0
