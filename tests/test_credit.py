"""credit alone: tariffs, reservations at ICE, exactly-once settlement at DiCE, sweeper, CLI."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from core.decisions import Decision
from core.plugins import PluginError
from plugins.credit import Credit, Tariff, fmt, parse_amount
from tests.cli_runner import cli as run_cli
from tests.helpers import KEY, SECRET, Fixed, dice, ice, post, webapp

pytestmark = pytest.mark.usefixtures("backend")

BASE = {
    "account_from": "fixed",
    "account": "acme",
    "rates": {"+1": Decimal("0.60"), "+44": Decimal("1.20")},
    "increments": "60/60",
    "minimum_seconds": 60,
}


@pytest.fixture
def credit_app(backend):
    made = []

    def _make(balance="10.00", extra_plugins=None, **config):
        plugin = Credit()
        rt = backend.runtime(
            {"credit": plugin, **(extra_plugins or {})},
            plugins={"credit": {**BASE, **config}},
            policy={"ice_default": "connect"},
        )
        rt.start()
        if balance is not None:
            plugin.topup(rt.store, config.get("account", "acme"), balance)
        made.append(rt)
        return rt, webapp(rt), plugin

    yield _make
    for rt in made:
        rt.close()


def balance(rt, account="acme"):
    return rt.store.query("SELECT balance FROM credit_accounts WHERE account = ?", (account,))[0][0]


def ledger_sum(rt, account="acme"):
    return rt.store.query(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE account = ?", (account,)
    )[0][0]


def reservation(rt, callid):
    rows = rt.store.query(
        "SELECT amount, max_duration, status FROM credit_reservations WHERE callid = ?", (callid,)
    )
    return rows[0] if rows else None


# ---------------------------------------------------------------- tariff arithmetic


def test_tariff_increments_and_rounding():
    per_minute = Tariff(Decimal("0.60"), 60, 60, 0, 100)
    assert [per_minute.billed_seconds(s) for s in (0, 1, 60, 61, 120, 121)] == [
        0,
        60,
        60,
        120,
        120,
        180,
    ]
    assert [per_minute.cost(s) for s in (0, 1, 60, 61)] == [0, 60, 60, 120]
    per_second = Tariff(Decimal("0.60"), 1, 1, 0, 100)
    assert [per_second.cost(s) for s in (1, 59, 60)] == [1, 59, 60]
    fraction = Tariff(Decimal("0.0095"), 1, 1, 0, 100)  # a fraction of a cent rounds up
    assert fraction.cost(1) == 1 and fraction.cost(60) == 1 and fraction.cost(632) == 11
    minimum = Tariff(Decimal("0.01"), 1, 1, 25, 100)
    assert minimum.cost(1) == 25 and minimum.cost(0) == 0


def test_tariff_affordable_is_the_longest_call_that_fits():
    t = Tariff(Decimal("0.60"), 60, 60, 0, 100)
    assert t.affordable(1000, 14400) == 1000 // 60 * 60  # 16 whole minutes
    assert t.affordable(59, 14400) == 0
    assert t.affordable(10**9, 14400) == 14400
    s = Tariff(Decimal("0.60"), 30, 6, 0, 100)
    for available in range(0, 400, 7):
        seconds = s.affordable(available, 14400)
        assert s.cost(seconds) <= available
        assert seconds == 14400 or s.cost(seconds + 1) > available


def test_amounts_are_exact():
    assert parse_amount("12.50", 2) == 1250 and parse_amount(Decimal("0.1"), 2) == 10
    assert fmt(1250, 2) == "12.50" and fmt(-5, 2) == "-0.05"
    for bad, words in (
        ("1.234", "more than 2 decimals"),
        ("ten", "must be a number"),
        ("NaN", "must be a number"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_amount(bad, 2)


# ---------------------------------------------------------------- ICE


def test_ice_caps_at_what_the_balance_buys_and_reserves_it(credit_app):
    rt, app, _ = credit_app("10.00")
    r = post(app, ice("c1", to="+14155550000"))
    assert r.json == {
        "action": {"name": "connectPstn", "maxDuration": 960}
    }  # 10.00 / 0.60 -> 16 min
    assert reservation(rt, "c1") == (960, 960, "open")
    r = post(app, ice("c2", to="+14155550000"))  # only 0.40 left available
    assert r.json == {"action": {"name": "hangup"}}
    assert reservation(rt, "c2") is None


def test_longest_prefix_rate(credit_app):
    rates = {"+4": "0.10", "+44": "1.20", "+1": "0.60"}
    _, app, _ = credit_app("12.00", rates=rates)
    assert post(app, ice("c3", to="+442071234567")).json["action"]["maxDuration"] == 600  # 1.20/min
    _, app, _ = credit_app("12.00", rates=rates)
    assert post(app, ice("c4", to="+4930123456")).json["action"]["maxDuration"] == 7200  # 0.10/min
    _, app, _ = credit_app("30.00", rates=rates)
    assert (
        post(app, ice("c4", to="+4930123456")).json["action"]["maxDuration"] == 14400
    )  # Sinch's limit


def test_denials_with_prompt(credit_app):
    rt, app, _ = credit_app("0.50", deny_prompt="Please top up.")
    assert post(app, ice("c5", to="+14155550000")).json == {
        "instructions": [
            {"name": "answer"},  # Sinch: answer before say, or the prompt may go unheard
            {"name": "say", "text": "Please top up.", "locale": "en-US"},
        ],
        "action": {"name": "hangup"},
    }
    rt, app, _ = credit_app("5.00")
    assert post(app, ice("c6", to="+33123456789")).json["action"]["name"] == "hangup"  # no rate
    trace = json.loads(rt.store.traces("c6")[0]["trace"])
    assert trace["plugins"][0]["decision"]["reason"] == "no rate for this destination"


@pytest.mark.parametrize(
    ("config", "event_extra", "account"),
    [
        ({"account_from": "cli"}, {"cli": "12015550100"}, "+12015550100"),
        ({"account_from": "custom"}, {"custom": "customer-7"}, "customer-7"),
        (
            {"account_from": "header:x-account"},
            {"callHeaders": [{"key": "x-account", "value": "team-3"}]},
            "team-3",
        ),
    ],
)
def test_account_rules(credit_app, config, event_extra, account):
    rt, app, plugin = credit_app(None, **config)
    plugin.topup(rt.store, account, "6.00")
    assert (
        post(app, ice("c7", to="+14155550000", **event_extra)).json["action"]["maxDuration"] == 600
    )
    assert rt.store.query("SELECT account FROM credit_reservations WHERE callid = 'c7'") == [
        (account,)
    ]
    assert (
        post(app, ice("c8", to="+14155550000")).json["action"]["name"] == "hangup"
    )  # no/unknown account


def test_user_rate_with_markup(credit_app):
    rt, app, _ = credit_app("6.00", rate_source="user_rate", markup_percent=Decimal(20))
    event = ice(
        "c9", to="+14155550000", userRate={"currencyId": "USD", "amount": 0.5}
    )  # 0.60 with markup
    assert post(app, event).json["action"]["maxDuration"] == 600


def test_announce_minutes(credit_app):
    _, app, _ = credit_app("1.80", announce=True)
    assert post(app, ice("c10", to="+14155550000")).json == {
        "instructions": [
            {"name": "answer"},
            {"name": "say", "text": "You have 3 minutes of credit.", "locale": "en-US"},
        ],
        "action": {"name": "connectPstn", "maxDuration": 180},
    }


def test_reservation_fits_the_answer_sent(credit_app):
    from core.decisions import Decision

    rt, app, _ = credit_app("10.00", extra_plugins={"short": Fixed(Decision.cap(120))})
    assert post(app, ice("c11", to="+14155550000")).json["action"]["maxDuration"] == 120
    rt.pipeline.wait_idle()
    assert reservation(rt, "c11") == (120, 120, "open")
    rt, app, _ = credit_app("10.00", extra_plugins={"no": Fixed(Decision.denied("blocked"))})
    post(app, ice("c12", to="+14155550000"))
    rt.pipeline.wait_idle()
    assert reservation(rt, "c12")[2] == "released"


# ---------------------------------------------------------------- DiCE


def test_dice_settles_once(credit_app):
    rt, app, _ = credit_app("10.00")
    post(app, ice("c13", to="+14155550000"))
    for _ in range(3):  # the first settles; replays change nothing
        assert post(app, dice("c13", duration=125)).body == b""
    assert balance(rt) == 1000 - 180  # 125 s billed as 3 minutes at 0.60
    assert reservation(rt, "c13")[2] == "settled"
    assert balance(rt) == ledger_sum(rt)
    entries = rt.store.query(
        "SELECT kind, amount, balance_after, callid FROM credit_ledger ORDER BY seq"
    )
    assert entries == [("topup", 1000, 1000, None), ("call", -180, 820, "c13")]


def test_replay_after_core_dedupe_is_lost_still_settles_once(credit_app):
    rt, app, plugin = credit_app("10.00")
    post(app, ice("c14", to="+14155550000"))
    post(app, dice("c14", duration=60))
    with rt.store.transaction() as tx:  # even if the core's dedupe row vanished...
        tx.execute("DELETE FROM callbacks WHERE callid = 'c14' AND event = 'dice'")
    post(app, dice("c14", duration=60))
    assert balance(rt) == 940 and ledger_sum(rt) == 940


def test_unanswered_call_costs_nothing(credit_app):
    rt, app, _ = credit_app("10.00", minimum_charge=Decimal("0.25"))
    post(app, ice("c15", to="+14155550000"))
    post(app, dice("c15", duration=0, result="NOANSWER", reason="TIMEOUT"))
    assert balance(rt) == 1000 and reservation(rt, "c15")[2] == "settled"


def test_settle_with_sinch_debit(credit_app):
    rt, app, _ = credit_app("10.00", settle_with="debit")
    post(app, ice("c16", to="+14155550000"))
    post(app, dice("c16", duration=42, debit={"currencyId": "USD", "amount": 0.0731}))
    assert balance(rt) == 1000 - 8  # 7.31 cents rounds up to 8


def test_dice_for_a_call_never_reserved_is_recorded(credit_app, caplog):
    rt, app, _ = credit_app("10.00")
    post(app, dice("ghost", duration=30))
    assert rt.store.query(
        "SELECT account, amount, status FROM credit_settled WHERE callid = 'ghost'"
    ) == [(None, 0, "unreserved")]
    assert balance(rt) == 1000
    assert any("never reserved" in r.getMessage() for r in caplog.records)


def test_a_debit_above_the_reservation_is_charged_the_reservation(credit_app):
    rt, app, _ = credit_app("10.00", settle_with="debit")
    post(app, ice("c17", to="+14155550000"))  # 960 s reserved: 9.60 at 0.60/min
    post(app, dice("c17", duration=900, debit={"currencyId": "USD", "amount": 25}))
    assert balance(rt) == 40 and ledger_sum(rt) == 40
    details = json.loads(
        rt.store.query("SELECT details FROM credit_settled WHERE callid = 'c17'")[0][0]
    )
    assert details["overrun"] == {
        "reported_seconds": 900,
        "granted_seconds": 960,
        "asked": 2500,
        "limit": 960,
    }


def test_a_duration_past_the_grant_is_charged_the_grant(credit_app, caplog):
    rt, app, _ = credit_app("10.00", max_duration=600)
    post(app, ice("c20", to="+14155550000"))  # 600 s: 6.00 reserved
    post(app, dice("c20", duration=3600))
    assert balance(rt) == 400 and ledger_sum(rt) == 400
    assert reservation(rt, "c20")[2] == "settled"
    details = json.loads(
        rt.store.query("SELECT details FROM credit_settled WHERE callid = 'c20'")[0][0]
    )
    assert details["billed_seconds"] == 600
    assert details["overrun"]["reported_seconds"] == 3600
    assert any("3600 s reported against a grant of 600 s" in r.getMessage() for r in caplog.records)
    metrics = app.get("/metrics").text
    assert "switchboard_credit_overruns_total 1.0" in metrics


def test_a_call_never_adds_credit(credit_app):
    """A negative debit is refused by the parser (a 400 naming the field, so Sinch's
    callback can be corrected and sent again); the plugin's own refusal to credit a
    negative charge stays as a second guard."""
    rt, app, _ = credit_app("10.00", settle_with="debit")
    post(app, ice("c21", to="+14155550000"))
    resp = post(
        app, dice("c21", duration=60, debit={"currencyId": "USD", "amount": -5}), status=400
    )
    assert resp.json["field"] == "debit.amount"
    assert balance(rt) == 1000 and ledger_sum(rt) == 1000
    assert rt.store.query("SELECT COUNT(*) FROM credit_settled WHERE callid = 'c21'") == [(0,)]


def test_a_call_answered_hangup_is_never_charged(credit_app):
    rt, app, _ = credit_app("10.00", extra_plugins={"no": Fixed(Decision.denied("no"))})
    post(app, ice("c22", to="+14155550000"))
    rt.pipeline.wait_idle()
    assert reservation(rt, "c22")[2] == "released"
    post(app, dice("c22", duration=120))
    assert balance(rt) == 1000


def test_balance_never_goes_below_zero(credit_app):
    rt, app, plugin = credit_app("10.00", grace=10)
    post(app, ice("c17", to="+14155550000"))  # reserves all 10.00 (1000 s at 0.60/min)
    assert plugin.sweep(now=time.time() + 2000) == ["c17"]  # its DiCE is late
    post(app, ice("c19", to="+14155550000"))
    post(app, dice("c19", duration=900))  # spends 9.00 of the released 10.00
    post(app, dice("c17", duration=900))  # 9.00 asked, 1.00 left
    assert balance(rt) == 0 and ledger_sum(rt) == 0
    details = json.loads(
        rt.store.query("SELECT details FROM credit_settled WHERE callid = 'c17'")[0][0]
    )
    assert details["uncollected"] == 800


def test_sweeper_expires_reservations_without_dice(credit_app, caplog):
    rt, app, plugin = credit_app("10.00", grace=10)
    post(app, ice("c18", to="+14155550000"))
    assert plugin.sweep(now=time.time() + 60) == []
    assert plugin.sweep(now=time.time() + 960 + 11) == ["c18"]
    assert reservation(rt, "c18")[2] == "expired"
    assert plugin.show(rt.store, "acme")["available"] == 1000
    assert any("expired (no DiCE)" in r.getMessage() for r in caplog.records)
    post(app, dice("c18", duration=60))  # a late DiCE still settles at the reserved rate
    assert balance(rt) == 940


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rates": {}}, "rates is empty"),
        ({"rates": {"+1": "cheap"}}, "rates['+1'] must be a price per minute"),
        ({"rates": {"+1x": "1"}}, "is not a number pattern"),
        ({"increments": "60"}, "increments must look like 60/60"),
        ({"account_from": "ani"}, "account_from must be cli, custom, header:NAME or fixed"),
        ({"account": ""}, "account_from = 'fixed' needs account"),
        ({"initial_accounts": {"a": "1.001"}}, "initial_accounts.a has more than 2 decimals"),
    ],
)
def test_bad_configuration_is_named(config, message, backend):
    with pytest.raises(PluginError) as err:
        backend.runtime({"credit": Credit()}, plugins={"credit": {**BASE, **config}})
    assert message in str(err.value)


# ---------------------------------------------------------------- CLI


def test_credit_commands(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        '[plugins]\nenabled = ["credit"]\n'
        '[plugins.credit]\nrates = { "+1" = 0.60 }\ninitial_accounts = { demo = "1.00" }\n'
    )

    def cli(*args):
        return run_cli(config, "credit", *args)

    run = cli("topup", "+12015550100", "12.50")
    assert run.returncode == 0, run.stderr
    assert "+12015550100: +12.50, balance 12.50 USD" in run.stdout
    assert cli("topup", "+12015550100", "0.25").returncode == 0
    show = cli("show", "+12015550100")
    assert "balance   12.75" in show.stdout and "available 12.75" in show.stdout
    ledger = cli("ledger", "+12015550100")
    assert ledger.returncode == 0 and "2 entries" in ledger.stdout and "topup" in ledger.stdout
    assert "initial" in cli("ledger", "demo").stdout
    bad = cli("topup", "x", "1.999")
    assert bad.returncode == 2 and "more than 2 decimals" in bad.stdout
    assert "minus" not in bad.stdout and cli("topup", "x", "-5").returncode == 2
    assert cli("show", "nobody").returncode == 1
    assert "no account 'nobody'" in cli("ledger", "nobody").stdout
