"""credit in the operator console: the Accounts page (balances, open reservations, the
ledger, a top-up form) and its Overview panel. What each call cost is shown beside the
call by ``ledger.call_details`` (``switchboard_call_details``).

Built with the console hook like any plugin's pages (``core.ConsolePage``). Every read
is one ``store.inspect`` (the operators' reads) on an indexed column (the account, the call id, the ledger's
``(account, seq)`` key), a page at a time.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

from core import ConsolePage, ConsoleRequest
from plugins.credit import ledger
from plugins.credit.rating import fmt, parse_amount
from plugins.credit.settings import CreditSettings

if TYPE_CHECKING:
    from plugins.credit.plugin import Credit

PAGE = 50
MAX_TOPUP_DIGITS = 12  # major units: a typo of a few zeros is refused, not booked
ACCOUNT_CHARS = 64
FORM_TTL = 3600.0  # seconds a top-up form is good for
FORMS = 10_000  # top-up forms outstanding (the oldest are forgotten)


class FormTokens:
    """One-time tokens, one per top-up form shown: a top-up needs one, and uses it up,
    so a form sent twice (a double click, a reload that posts again) books once."""

    def __init__(self, ttl: float = FORM_TTL, limit: int = FORMS) -> None:
        self.ttl, self.limit = ttl, limit
        self._lock = threading.Lock()
        self._issued: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._issued[token] = time.time()
            while len(self._issued) > self.limit:
                self._issued.popitem(last=False)
        return token

    def use(self, token: str) -> bool:
        with self._lock:
            issued = self._issued.pop(token, None) if token else None
        return issued is not None and time.time() - issued <= self.ttl


FORM_TOKENS = FormTokens()


def _amount_pattern(decimals: int) -> re.Pattern[str]:
    fraction = rf"(\.[0-9]{{1,{decimals}}})?" if decimals else ""
    return re.compile(rf"[0-9]{{1,{MAX_TOPUP_DIGITS}}}{fraction}", re.ASCII)


def pages(plugin: Credit) -> list[ConsolePage]:
    return [
        ConsolePage(
            path="accounts",
            title="Accounts",
            render=lambda request: accounts_page(plugin.settings, request),
            actions={"topup": lambda request: topup(plugin.settings, request)},
            panel=lambda request: panel(plugin, request),
        )
    ]


# ---------------------------------------------------------------------------- the page


def accounts_page(s: CreditSettings, request: ConsoleRequest) -> str:
    account = request.params.get("account", "").strip()
    if account:
        return account_page(s, request, account)
    return account_list(s, request)


def _money(minor: int | None, s: CreditSettings) -> str:
    return "-" if minor is None else f"{fmt(int(minor), s.decimals)} {s.currency}"


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(moment))


def _topup_form(s: CreditSettings, request: ConsoleRequest, account: str | None) -> str:
    fields = ""
    hidden: dict[str, str] = {}
    if account is None:
        fields += (
            '<p><label for="topup-account">Account</label>'
            f'<input id="topup-account" name="account" type="text" required '
            f'maxlength="{ACCOUNT_CHARS}" autocomplete="off"></p>'
        )
    else:
        hidden["account"] = account
    hidden["currency"] = s.currency
    hidden["_once"] = FORM_TOKENS.issue()
    fields += (
        f'<p><label for="topup-amount">Amount ({escape(s.currency)})</label>'
        '<input id="topup-amount" name="amount" type="text" inputmode="decimal" required '
        'placeholder="10.00" autocomplete="off"></p>'
    )
    return request.action_form("topup", "Top up", hidden=hidden, fields=fields, css="stack card")


def account_list(s: CreditSettings, request: ConsoleRequest) -> str:
    """A page of accounts in name order, after the account ``after`` (the previous
    page's last), those starting with ``q`` only: a range of the accounts' primary key,
    then one lookup of the open reservations per account shown (their ``(account,
    status)`` index), so a page costs the same however many accounts and ledger entries
    there are."""
    after = request.params.get("after", "")
    prefix = request.params.get("q", "").strip()[:ACCOUNT_CHARS]
    # one lower bound (the planner takes one): past ``after``, from the prefix on
    where, params = ["account > ?"], [after]
    if prefix:
        if after < prefix:
            where, params = ["account >= ?"], [prefix]
        upper = _above(prefix)
        if upper is not None:
            where.append("account < ?")
            params.append(upper)
        # the range is exact for a binary collation; the check keeps it exact for others
        where.append(f"substr(account, 1, {len(prefix)}) = ?")
        params.append(prefix)
    rows = request.store.inspect(
        "SELECT account, currency, balance FROM credit_accounts "
        f"WHERE {' AND '.join(where)} ORDER BY account LIMIT {PAGE + 1}",
        params,
    )
    held = _held(request, [account for account, _, _ in rows[:PAGE]])
    out = [
        f'<form method="get" action="{escape(request.url())}" class="filters card" role="search">'
        '<p><label for="q">Account starts with</label>'
        f'<input id="q" name="q" type="search" value="{escape(prefix)}"></p>'
        '<p><button type="submit">Find</button></p></form>'
    ]
    if not rows:
        out.append(
            '<p class="empty">No accounts'
            + (f" starting with {escape(prefix)}" if prefix else "")
            + (" after this one" if after else "")
            + ".</p>"
        )
    else:
        out.append(
            '<div class="scroll"><table><thead><tr><th scope="col">Account</th>'
            '<th scope="col" class="num">Balance</th><th scope="col" class="num">Reserved</th>'
            '<th scope="col" class="num">Available</th><th scope="col" class="num">Open calls</th>'
            "</tr></thead><tbody>"
        )
        for account, currency, balance in rows[:PAGE]:
            reserved, open_calls = held.get(account, (0, 0))
            out.append(
                f'<tr><th scope="row"><a href="{escape(request.url(account=account))}">'
                f"{escape(account)}</a></th>"
                f'<td class="num">{fmt(int(balance), s.decimals)} {escape(currency)}</td>'
                f'<td class="num">{fmt(int(reserved), s.decimals)}</td>'
                f'<td class="num">{fmt(int(balance) - int(reserved), s.decimals)}</td>'
                f'<td class="num">{int(open_calls)}</td></tr>'
            )
        out.append("</tbody></table></div>")
    pager = []
    if after:
        pager.append(f'<a href="{escape(request.url(q=prefix or None))}">First accounts</a>')
    if len(rows) > PAGE:
        last = rows[PAGE - 1][0]
        pager.append(
            f'<a rel="next" href="{escape(request.url(after=last, q=prefix or None))}">'
            "More accounts</a>"
        )
    if pager:
        out.append(f'<nav class="pager" aria-label="Pages">{"".join(pager)}</nav>')
    out.append("<h2>Top up an account</h2><p>A new account is created with this amount.</p>")
    out.append(_topup_form(s, request, None))
    return "".join(out)


def _above(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (its last
    character that can be, the next one up); None when there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i]) + 1
        code = 0xE000 if 0xD800 <= code <= 0xDFFF else code  # past the surrogates
        if code <= 0x10FFFF:
            return prefix[:i] + chr(code)
    return None


def _held(request: ConsoleRequest, accounts: list[str]) -> dict[str, tuple[int, int]]:
    """What the open reservations of these accounts hold: account -> (amount, calls)."""
    if not accounts:
        return {}
    marks = ", ".join("?" for _ in accounts)
    return {
        account: (int(amount), int(calls))
        for account, amount, calls in request.store.inspect(
            "SELECT account, SUM(amount), COUNT(*) FROM credit_reservations "
            f"WHERE account IN ({marks}) AND status = 'open' GROUP BY account",
            accounts,
        )
    }


def account_page(s: CreditSettings, request: ConsoleRequest, account: str) -> str:
    store = request.store
    info = ledger.show(store, account)
    out = [f'<p><a href="{escape(request.url())}">All accounts</a></p>']
    if info is None:
        out.append(f'<p class="empty">There is no account {escape(account)} yet.</p>')
        out.append("<h2>Create it with a top-up</h2>")
        out.append(_topup_form(s, request, account))
        return "".join(out)
    out.append(f'<h2 class="mono">{escape(account)}</h2><ul class="figures">')
    for label, value in (
        ("balance", info["balance"]),
        ("reserved", info["reserved"]),
        ("available", info["available"]),
    ):
        out.append(
            f'<li><span class="figure">{fmt(int(value), s.decimals)}</span>'
            f'<span class="label">{label} ({escape(info["currency"])})</span></li>'
        )
    out.append(
        f'<li><span class="figure">{int(info["open_calls"])}</span>'
        '<span class="label">calls holding a reservation</span></li></ul>'
    )
    out.append("<h2>Top up</h2>")
    out.append(_topup_form(s, request, account))

    reservations = store.inspect(
        "SELECT callid, amount, rate, max_duration, created_at, expires_at "
        "FROM credit_reservations WHERE account = ? AND status = 'open' "
        f"ORDER BY created_at LIMIT {PAGE}",
        (account,),
    )
    out.append("<h2>Open reservations</h2>")
    if not reservations:
        out.append('<p class="empty">None: no call of this account is running.</p>')
    else:
        out.append(
            '<div class="scroll"><table><thead><tr><th scope="col">Call</th>'
            '<th scope="col" class="num">Held</th><th scope="col">Rate</th>'
            '<th scope="col" class="num">Granted</th><th scope="col">Since</th>'
            '<th scope="col">Expires</th></tr></thead><tbody>'
        )
        for callid, amount, rate, seconds, created, expires in reservations:
            out.append(
                f'<tr><td><a href="{escape(request.call_url(callid))}">{escape(callid)}</a></td>'
                f'<td class="num">{fmt(int(amount), s.decimals)}</td><td>{escape(rate)}/min</td>'
                f'<td class="num">{int(seconds)} s</td><td>{_when(created)}</td>'
                f"<td>{_when(expires)}</td></tr>"
            )
        out.append("</tbody></table></div>")

    before = request.integer("before", minimum=1)  # a ledger position: 400 unless one
    where, params = "account = ?", [account]
    if before is not None:
        where += " AND seq < ?"
        params.append(before)  # type: ignore[arg-type]
    entries = store.inspect(
        "SELECT seq, at, kind, amount, balance_after, callid, details FROM credit_ledger "
        f"WHERE {where} ORDER BY seq DESC LIMIT {PAGE + 1}",
        params,
    )
    out.append("<h2>Ledger</h2><p>Every booking, newest first: what each call cost.</p>")
    if not entries:
        out.append('<p class="empty">No bookings.</p>')
    else:
        out.append(
            '<div class="scroll"><table><thead><tr><th scope="col" class="num">#</th>'
            '<th scope="col">When</th><th scope="col">Kind</th><th scope="col" class="num">Amount</th>'
            '<th scope="col" class="num">Balance after</th><th scope="col">Call</th>'
            '<th scope="col">Details</th></tr></thead><tbody>'
        )
        for seq, at, kind, amount, after, callid, details in entries[:PAGE]:
            call = (
                f'<a href="{escape(request.call_url(callid))}">{escape(callid)}</a>'
                if callid
                else "-"
            )
            out.append(
                f'<tr><td class="num">{int(seq)}</td><td>{_when(at)}</td><td>{escape(kind)}</td>'
                f'<td class="num">{fmt(int(amount), s.decimals)}</td>'
                f'<td class="num">{fmt(int(after), s.decimals)}</td><td>{call}</td>'
                f"<td>{escape(_ledger_details(details))}</td></tr>"
            )
        out.append("</tbody></table></div>")
        if len(entries) > PAGE:
            last = entries[PAGE - 1][0]
            out.append(
                f'<nav class="pager" aria-label="Pages"><a rel="next" href="'
                f'{escape(request.url(account=account, before=last))}">Older bookings</a></nav>'
            )
    return "".join(out)


def _ledger_details(text: str | None) -> str:
    try:
        details = json.loads(text) if text else {}
    except ValueError:
        return ""
    if not isinstance(details, dict):
        return ""
    if "source" in details:
        by = f" by {details['by']}" if details.get("by") else ""
        return f"{details['source']}{by}"
    return settlement_text(details)


def settlement_text(details: Mapping[str, Any]) -> str:
    """A settlement's details as a sentence: what was billed and why."""
    parts = []
    if details.get("billed_seconds") is not None:
        parts.append(f"billed {details['billed_seconds']} s at {details.get('rate')}/min")
    if details.get("cap") is not None:
        parts.append(f"granted {details['cap']} s")
    if details.get("settled_by") == "debit":
        parts.append("settled by Sinch's debit")
    overrun = details.get("overrun")
    if isinstance(overrun, Mapping):
        parts.append(
            f"overrun: {overrun.get('reported_seconds')} s reported, charged the grant only"
        )
    if details.get("uncollected"):
        parts.append(f"uncollected {details['uncollected']} (minor units)")
    if details.get("note"):
        parts.append(str(details["note"]))
    return "; ".join(parts)


# ---------------------------------------------------------------------------- the action


def topup(s: CreditSettings, request: ConsoleRequest) -> str:
    if not FORM_TOKENS.use(request.form.get("_once", "")):
        raise ValueError(
            "this top-up form was sent already (or is out of date): nothing was booked. "
            "Check the balance, then top up from a fresh form if still needed."
        )
    account = request.form.get("account", "").strip()
    amount = request.form.get("amount", "").strip()
    if not account or len(account) > ACCOUNT_CHARS or not account.isprintable():
        raise ValueError(f"the account must be 1 to {ACCOUNT_CHARS} printable characters")
    if amount.startswith("-"):
        raise ValueError(f"amount must be greater than 0, got {amount[:40]!r}")
    if not _amount_pattern(s.decimals).fullmatch(amount):
        raise ValueError(
            f"amount must be up to {MAX_TOPUP_DIGITS} digits"
            + (f" and at most {s.decimals} decimals, like 10.00" if s.decimals else "")
            + f", got {amount[:40]!r}"
        )
    minor = parse_amount(amount, s.decimals)
    (known,) = request.store.inspect(
        "SELECT currency FROM credit_accounts WHERE account = ?", (account,)
    ) or [(s.currency,)]
    currency = request.form.get("currency", "").strip()
    if currency and currency != known[0]:
        raise ValueError(
            f"the form is in {currency[:8]!r} but account {account!r} is in {known[0]!r}: "
            "nothing was booked"
        )
    balance = ledger.topup(
        request.store, s, account, amount, {"source": "console", "by": request.user}
    )
    return (
        f"topped up {account} by {fmt(minor, s.decimals)} {s.currency}: "
        f"balance {fmt(balance, s.decimals)} {s.currency}"
    )


# ---------------------------------------------------------------------------- the panel


def panel(plugin: Credit, request: ConsoleRequest) -> str:
    s = plugin.settings
    (count, held), = request.store.inspect(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM credit_reservations WHERE status = 'open'"
    )
    overruns = _counted(getattr(plugin, "_overruns", None))
    url = escape(request.url())
    return (
        '<ul class="plain">'
        f'<li><a href="{url}">{int(count)} open reservation(s)</a>, holding '
        f"{fmt(int(held), s.decimals)} {escape(s.currency)}</li>"
        f"<li>{overruns} call(s) reported past their grant since the configuration was loaded "
        "(charged the grant only)</li></ul>"
    )


def _counted(counter: Any) -> int:
    """A prometheus_client counter's value (0 before the metrics are registered)."""
    if counter is None:
        return 0
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )
