"""crm in the operator console: the CRM outbox page (records waiting for delivery, dead
letters, with retry and replay buttons) and its Overview panel. Each call's delivery
state is shown beside the call by ``record.delivery`` (``switchboard_call_details``).

Built with the console hook like any plugin's pages (``core.ConsolePage``). Reads are
one ``store.inspect`` each (the operators' reads), on the outbox's due index or the tables' call-id keys, a page
at a time. The buttons only move records and wake the outbox worker: the delivery runs
in the worker, never on the console's request.
"""

from __future__ import annotations

import re
import time
from html import escape
from typing import TYPE_CHECKING

from core import ConsolePage, ConsoleRequest

if TYPE_CHECKING:
    from plugins.crm.outbox import Outbox
    from plugins.crm.plugin import Crm

PAGE = 50


def pages(plugin: Crm) -> list[ConsolePage]:
    return [
        ConsolePage(
            path="outbox",
            title="CRM outbox",
            render=lambda request: outbox_page(plugin, request),
            actions={
                "replay": lambda request: replay(plugin, request),
                "retry": lambda request: retry(plugin, request),
            },
            panel=lambda request: panel(plugin, request),
        )
    ]


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(moment))


def _call(request: ConsoleRequest, callid: str) -> str:
    return f'<a href="{escape(request.call_url(callid))}">{escape(callid)}</a>'


# ---------------------------------------------------------------------------- the page


_SECRET_PARAM = re.compile(
    r"(?i)([?&;][\w.-]*(?:pass|pwd|secret|token|key|auth|cred|sig)[\w.-]*=)([^&;#]*)"
)


def masked(url: str) -> str:
    """A webhook URL as shown: everything between "://" and the last "@" of its
    authority masked, and the values of query parameters named like secrets."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return _SECRET_PARAM.sub(r"\1***", f"{scheme}{sep}{rest}")


def outbox_page(plugin: Crm, request: ConsoleRequest) -> str:
    store = request.store
    url = plugin.config.get("webhook_url")
    out = []
    if not url:
        out.append(
            '<p class="flash error">No <code>webhook_url</code> is configured: call records are '
            "kept in the store only, nothing is delivered.</p>"
        )
    else:
        shown = masked(url)
        out.append(f"<p>Records are delivered to <code>{escape(shown)}</code>.</p>")
    (pending,), = store.inspect("SELECT COUNT(*) FROM crm_outbox")
    (dead,), = store.inspect("SELECT COUNT(*) FROM crm_dead")
    out.append(
        '<ul class="figures">'
        f'<li><a href="#pending"><span class="figure">{int(pending)}</span>'
        '<span class="label">waiting for delivery</span></a></li>'
        f'<li><a href="#dead"><span class="figure">{int(dead)}</span>'
        '<span class="label">dead letters</span></a></li></ul>'
    )

    rows = store.inspect(
        "SELECT callid, attempts, next_attempt_at, last_error, created_at FROM crm_outbox "
        f"ORDER BY next_attempt_at LIMIT {PAGE}"
    )
    out.append('<h2 id="pending">Waiting for delivery</h2>')
    if not rows:
        out.append('<p class="empty">Nothing is waiting.</p>')
    else:
        out.append(
            '<div class="scroll"><table><thead><tr><th scope="col">Call</th>'
            '<th scope="col" class="num">Attempts</th><th scope="col">Next attempt</th>'
            '<th scope="col">Last error</th><th scope="col">Recorded</th>'
            '<th scope="col"><span class="sr">Action</span></th></tr></thead><tbody>'
        )
        now = time.time()
        for callid, attempts, due, error, created in rows:
            button = ""
            if url and due > now:
                button = request.action_form(
                    "retry", "Retry now", hidden={"callid": callid}
                )
            out.append(
                f"<tr><td>{_call(request, callid)}</td><td class=\"num\">{int(attempts)}</td>"
                f"<td>{_when(due)}</td><td class=\"error-text\">{escape(error or '-')}</td>"
                f"<td>{_when(created)}</td><td>{button}</td></tr>"
            )
        out.append("</tbody></table></div>")
        if int(pending) > len(rows):
            out.append(f"<p>The first {len(rows)} of {int(pending)}, next due first.</p>")

    rows = store.inspect(
        "SELECT callid, attempts, failed_at, last_error FROM crm_dead "
        f"ORDER BY failed_at DESC LIMIT {PAGE}"
    )
    out.append('<h2 id="dead">Dead letters</h2>')
    out.append(
        "<p>Records whose delivery failed <code>max_attempts</code> times. Replaying one puts "
        "it back in the outbox, due now.</p>"
    )
    if not rows:
        out.append('<p class="empty">No dead letters.</p>')
    else:
        if url:
            out.append(request.action_form("replay", "Replay all dead letters"))
        out.append(
            '<div class="scroll"><table><thead><tr><th scope="col">Call</th>'
            '<th scope="col" class="num">Attempts</th><th scope="col">Failed</th>'
            '<th scope="col">Last error</th><th scope="col"><span class="sr">Action</span></th>'
            "</tr></thead><tbody>"
        )
        for callid, attempts, failed, error in rows:
            button = ""
            if url:
                button = request.action_form(
                    "replay", "Replay", hidden={"callid": callid}
                )
            out.append(
                f"<tr><td>{_call(request, callid)}</td><td class=\"num\">{int(attempts)}</td>"
                f"<td>{_when(failed)}</td><td class=\"error-text\">{escape(error or '-')}</td>"
                f"<td>{button}</td></tr>"
            )
        out.append("</tbody></table></div>")
        if int(dead) > len(rows):
            out.append(f"<p>The newest {len(rows)} of {int(dead)}.</p>")
    return "".join(out)


# ---------------------------------------------------------------------------- the actions


def _outbox(plugin: Crm) -> Outbox:
    if not plugin.config.get("webhook_url"):
        raise ValueError("no webhook_url is configured for the crm plugin: nothing to deliver to")
    if plugin.outbox is None:
        raise ValueError("the crm plugin is not started")
    return plugin.outbox


def replay(plugin: Crm, request: ConsoleRequest) -> str:
    """Move a dead letter (or all) back to the outbox, due now, and wake the worker."""
    outbox = _outbox(plugin)
    callid = request.form.get("callid") or None
    moved = outbox.replay(callid)
    if not moved:
        raise ValueError(
            f"no dead letter for call {callid}" if callid else "there are no dead letters"
        )
    outbox.wake()
    shown = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
    return f"replayed {len(moved)} dead letter(s) into the outbox, due now: {shown}"


def retry(plugin: Crm, request: ConsoleRequest) -> str:
    """Make a waiting record due now (unless a delivery of it is under way)."""
    outbox = _outbox(plugin)
    callid = request.form.get("callid", "")
    now = time.time()
    changed = request.store.write(
        "UPDATE crm_outbox SET next_attempt_at = ? "
        "WHERE callid = ? AND next_attempt_at > ? AND claim IS NULL",
        (now, callid, now),
    )
    if not changed:
        raise ValueError(
            f"the record of call {callid} is not waiting (delivered, or being delivered now)"
        )
    outbox.wake()
    return f"the record of call {callid} is due now"


# ---------------------------------------------------------------------------- the panel


def panel(plugin: Crm, request: ConsoleRequest) -> str:
    (pending, oldest, dead), = request.store.inspect(
        "SELECT (SELECT COUNT(*) FROM crm_outbox), (SELECT MIN(created_at) FROM crm_outbox), "
        "(SELECT COUNT(*) FROM crm_dead)"
    )
    url = request.url()
    age = f", the oldest since {_when(oldest)}" if oldest is not None else ""
    delivery = "" if plugin.config.get("webhook_url") else " (no webhook_url: records kept only)"
    return (
        '<ul class="plain">'
        f'<li><a href="{escape(url)}#pending">{int(pending)} record(s) waiting for delivery</a>'
        f"{escape(age)}{delivery}</li>"
        f'<li><a href="{escape(url)}#dead">{int(dead)} dead letter(s)</a></li></ul>'
    )
