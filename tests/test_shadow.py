"""Shadow plugins (``[plugins] shadow``): run on live traffic with the enabled ones,
traced and counted, never merged, and nothing they write is kept."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from core.config import ConfigError
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.plugins import PluginError
from core.store import ShadowStore
from core.svaml import ConnectPstn
from tests import strict_plugin, vip_plugin
from tests.cli_runner import cli
from tests.conftest import run_cli
from tests.helpers import (
    KEY,
    SECRET,
    Fixed,
    Hanging,
    Raising,
    Recorder,
    ace,
    dice,
    ice,
    notify,
    pie,
    post,
    runtime,
    settings,
    wait_for,
)
from tests.test_console import console_of, login
from tests.test_plugins import make_dist

PSTN = ConnectPstn(number="+15612600684", max_duration=600)
LINE = ConnectPstn(number="+15550001111")


class Gate:
    """An enabled plugin: denies one caller, allows the rest with ``LINE``."""

    @hookimpl
    def switchboard_ice(self, event):
        if event.cli_e164 == "+12015550005":
            return Decision.denied("blocked caller")
        return Decision.allowed("known", action=LINE)


STRICT = {
    "deny": ["+12015550001", "+12015550002", "+12015550005"],
    "cap": {"+12015550003": 60, "+12015550004": 7200},
    "deny_menu": "9",
}
VIP = {"callers": ["+12015550001", "+12015550004"]}

# (callid, event body); what the shadow plugin's decision does to each answer
TRAFFIC = [
    ("c1", ice("c1", cli="12015550001")),  # vip proposes; strict denies: changed
    ("c1", ace("c1")),  # strict has no opinion: same
    ("c2", ice("c2", cli="12015550002")),  # gate allows; strict denies: changed
    ("c2", pie("c2", "9")),  # strict denies the input: changed
    ("c3", ice("c3", cli="12015550003")),  # strict caps at 60 s: changed
    ("c3", pie("c3", "1")),  # same
    ("c4", ice("c4", cli="12015550004")),  # vip's 3600 s is below strict's cap: same
    ("c5", ice("c5", cli="12015550005")),  # gate denies, and so does strict: same
    ("c6", ice("c6", cli="12015550006")),  # strict has no opinion: same
]


def _policy(make: Any, shadow: bool) -> Any:
    """The enabled vip and gate, with strict in shadow or not loaded at all."""
    plugins: dict[str, Any] = {"vip": vip_plugin, "gate": Gate()}
    config: dict[str, Any] = {"vip": VIP}
    if shadow:
        plugins["strict"] = strict_plugin
        config.update(strict=STRICT, shadow=["strict"])
    return make(plugins, plugins=config)


def _contents(store: Any) -> dict[str, Any]:
    """Every table's rows, sorted; the callbacks by what was answered (their traces
    differ by the shadow plugin's entries and by timings); not the configurations
    loaded (``core.revisions``: with a shadow plugin, another revision)."""
    out: dict[str, Any] = {}
    for table in store.tables():
        if table in ("config_loads", "config_revisions"):
            continue
        if table == "callbacks":
            sql = (
                "SELECT callid, event, sub, state, answer, outcome, rule, decided_by, "
                "capped_at, capped_by, fallback, failed FROM callbacks"
            )
        elif table == "schema_migrations":
            sql = "SELECT owner, version FROM schema_migrations"
        else:
            sql = f"SELECT * FROM {table}"  # noqa: S608 - the store's own table names
        out[table] = sorted(store.query(sql), key=repr)
    return out


def _trace(rt: Any, callid: str, event: str) -> dict[str, Any]:
    [row] = [r for r in rt.store.traces(callid) if r["event"] == event]
    return json.loads(row["trace"])


def _count(rt: Any, plugin: str, event: str, effect: str) -> float:
    value = rt.metrics.registry.get_sample_value(
        "switchboard_shadow_decisions_total", {"plugin": plugin, "event": event, "effect": effect}
    )
    return value or 0.0


def test_a_shadow_plugin_is_traced_and_counted_and_changes_no_answer_and_no_table(
    make, backend
):
    plain, plain_app = _policy(make, shadow=False)
    shadowed, shadowed_app = _policy(make, shadow=True)
    for callid, event in TRAFFIC:
        expected = post(plain_app, event).text
        assert post(shadowed_app, event).text == expected, (callid, event["event"])
    for rt in (plain, shadowed):
        rt.pipeline.wait_idle()
    # every table alike, the shadow plugin's own empty (made by its migration, no more)
    shadowed_tables = _contents(shadowed.store)
    assert shadowed_tables.pop("strict_seen") == []
    assert shadowed_tables.pop("strict_started") == []  # its start-up write too
    shadowed_tables["schema_migrations"].remove(("strict", 1))
    assert shadowed_tables == _contents(plain.store)
    assert len(shadowed_tables["vip_calls"]) == 2  # the enabled plugin's writes are kept

    entries = {}
    for callid, event in TRAFFIC:
        trace = _trace(shadowed, callid, event["event"])
        *enabled, last = trace["plugins"]
        assert last["plugin"] == "strict" and last["shadow"] is True  # after the enabled
        assert all("shadow" not in p and "would_change" not in p for p in enabled)
        assert "on_error" not in last
        assert trace["rule"] == _trace(plain, callid, event["event"])["rule"]
        entries[(callid, event["event"])] = last

    c1 = entries[("c1", "ice")]
    assert c1["status"] == "decided"
    assert c1["decision"] == {"kind": "deny", "reason": "caller on the list; 0 seen before"}
    assert (c1["would_change"], c1["would_answer"]) == (True, {"action": "hangup"})
    assert entries[("c2", "ice")]["would_answer"] == {"action": "hangup"}
    assert entries[("c2", "pie")]["would_answer"] == {"action": "hangup"}
    assert entries[("c3", "ice")]["would_answer"] == {"action": "connectPstn", "maxDuration": 60}
    for same in (("c1", "ace"), ("c3", "pie"), ("c4", "ice"), ("c5", "ice"), ("c6", "ice")):
        assert entries[same]["would_change"] is False and "would_answer" not in entries[same]
    assert entries[("c1", "ace")]["status"] == "abstained"
    assert entries[("c5", "ice")]["decision"]["kind"] == "deny"
    # nothing it wrote in one call was there in the next
    reasons = [e["decision"]["reason"] for e in entries.values() if "decision" in e]
    assert reasons and all(r.endswith("; 0 seen before") for r in reasons if "seen" in r)

    counts = {
        (event, effect): _count(shadowed, "strict", event, effect)
        for event in ("ice", "ace", "pie")
        for effect in ("same", "changed", "failed")
    }
    assert {k: v for k, v in counts.items() if v} == {
        ("ice", "changed"): 3,
        ("ice", "same"): 3,
        ("ace", "same"): 1,
        ("pie", "changed"): 1,
        ("pie", "same"): 1,
    }
    assert _count(plain, "strict", "ice", "same") == 0


def test_a_shadow_plugin_that_raises_or_returns_garbage_changes_nothing(make):
    class Garbage:
        @hookimpl
        def switchboard_ice(self):
            return "deny!"

    rt, app = make(
        {"router": Fixed(Decision.propose(PSTN)), "boom": Raising(), "odd": Garbage()},
        plugins={"shadow": ["boom", "odd"]},
    )
    assert post(app, ice("r1")).json["action"] == PSTN.to_dict()
    trace = _trace(rt, "r1", "ice")
    assert trace["rule"] == "proposal" and trace["decided_by"] == ["router"]
    boom, odd = trace["plugins"][1:]
    assert (boom["status"], boom["error"]) == ("error", "RuntimeError: database exploded")
    assert (odd["status"], odd["error"]) == ("error", "returned str, expected Decision or None")
    for entry in (boom, odd):
        assert entry["shadow"] is True and "on_error" not in entry and "would_change" not in entry
    assert _count(rt, "boom", "ice", "failed") == 1 and _count(rt, "odd", "ice", "failed") == 1
    # the calls view does not list the call as one whose plugins failed
    assert rt.store.query("SELECT failed, fallback FROM callbacks WHERE callid = 'r1'") == [
        (None, 0)
    ]


def test_a_shadow_decision_the_merge_chokes_on_changes_nothing(make, monkeypatch):
    from core import pipeline

    real = pipeline.merge

    def merge(event, decisions, **kw):
        if any(name == "odd" for name, _ in decisions):
            raise TypeError("an unforeseen decision")
        return real(event, decisions, **kw)

    monkeypatch.setattr(pipeline, "merge", merge)
    rt, app = make(
        {"router": Fixed(Decision.propose(PSTN)), "odd": Fixed(Decision.cap(60))},
        plugins={"shadow": ["odd"]},
    )
    assert post(app, ice("x1")).json["action"] == PSTN.to_dict()
    entry = _trace(rt, "x1", "ice")["plugins"][-1]
    assert entry["error"] == "its decision could not be merged: TypeError: an unforeseen decision"
    assert "would_change" not in entry and _count(rt, "odd", "ice", "failed") == 1


def test_a_hanging_shadow_plugin_never_makes_the_budget_fallback(make):
    budget = {"budget": 0.5}
    hang = {"timeout": 0.5}  # as long as the budget: an enabled plugin would run past it
    enabled, enabled_app = make(
        {"router": Fixed(Decision.propose(PSTN)), "hang": Hanging()},
        policy=budget,
        plugins={"hang": hang},
    )
    shadowed, shadowed_app = make(
        {"router": Fixed(Decision.propose(PSTN)), "hang": Hanging()},
        policy=budget,
        plugins={"hang": hang, "shadow": ["hang"]},
    )
    try:
        assert _trace_of(enabled, enabled_app, "h1")["rule"] == "budget"  # enabled: fallback
        began = time.monotonic()
        answer = post(shadowed_app, ice("h2"))
        assert time.monotonic() - began < 0.6
        assert answer.json["action"] == PSTN.to_dict()
        trace = _trace(shadowed, "h2", "ice")
        assert trace["rule"] == "proposal"
        entry = trace["plugins"][-1]
        assert (entry["plugin"], entry["status"], entry["shadow"]) == ("hang", "timeout", True)
        assert "on_error" not in entry
        assert _count(shadowed, "hang", "ice", "failed") == 1
    finally:
        for rt in (enabled, shadowed):
            rt.plugins.pm.get_plugin("hang").release.set()


def _trace_of(rt: Any, app: Any, callid: str) -> dict[str, Any]:
    post(app, ice(callid))
    return _trace(rt, callid, "ice")


def test_a_shadow_plugins_breaker_opens_without_applying_its_on_error(make):
    hanging = Hanging()
    rt, app = make(
        {"router": Fixed(Decision.propose(PSTN)), "hang": hanging},
        policy={"breaker_timeouts": 2, "breaker_window": 60, "breaker_cooldown": 60},
        plugins={"hang": {"timeout": 0.05, "on_error": "deny"}, "shadow": ["hang"]},
    )
    try:
        statuses = []
        for n in range(3):
            assert post(app, ice(f"b{n}")).json["action"] == PSTN.to_dict()
            entry = _trace(rt, f"b{n}", "ice")["plugins"][-1]
            assert entry["shadow"] is True and "on_error" not in entry
            statuses.append(entry["status"])
        assert statuses == ["timeout", "timeout", "breaker-open"]
        assert _count(rt, "hang", "ice", "failed") == 3
    finally:
        hanging.release.set()


def test_a_shadow_plugin_runs_only_its_decision_hooks_and_gets_the_shadow_store(make):
    seen: list[Any] = []

    class Watcher(Recorder):
        @hookimpl
        def switchboard_startup(self, store):
            seen.append(store)

    enabled, watcher = Recorder(), Watcher()
    rt, app = make({"recorder": enabled, "watcher": watcher}, plugins={"shadow": ["watcher"]})
    for event in (ice("o1"), ace("o1"), pie("o1"), notify("o1"), dice("o1")):
        post(app, event)
    rt.pipeline.wait_idle()
    assert wait_for(lambda: len(enabled.seen) == 10)
    assert [hook for hook, _ in watcher.seen] == ["ice", "ace", "pie"]
    assert [type(s) for s in seen] == [ShadowStore]
    assert rt.plugins.order == ("recorder",) and rt.plugins.shadow == ("watcher",)
    assert rt.plugins.info["watcher"].shadow and not rt.plugins.info["recorder"].shadow


def test_a_shadow_plugin_is_merged_as_if_ranked_after_every_enabled_one(make):
    other = ConnectPstn(number="+15550002222", max_duration=120)
    rt, app = make(
        {
            "router": Fixed(Decision.propose(PSTN)),
            "gate": Gate(),
            "rival": Fixed(Decision.propose(other)),
        },
        plugins={"shadow": ["rival"]},
    )
    # its proposal loses to the enabled router's (rule 2, precedence): no change
    post(app, ice("m1"))
    entry = _trace(rt, "m1", "ice")["plugins"][-1]
    assert (entry["plugin"], entry["would_change"]) == ("rival", False)
    assert _trace(rt, "m1", "ice")["conflicts"] == []  # nor a conflict of the real answer
    # with no enabled proposal, it beats the enabled allow's default action
    gated, gated_app = make({"gate": Gate(), "rival": Fixed(Decision.propose(other))},
                            plugins={"shadow": ["rival"]})
    assert post(gated_app, ice("m2")).json == {"action": LINE.to_dict()}
    entry = _trace(gated, "m2", "ice")["plugins"][-1]
    assert entry["would_answer"] == {"action": "connectPstn", "maxDuration": 120}


def test_a_replayed_candidate_runs_its_shadow_plugins_in_shadow(make):
    """``switchboard replay`` of a candidate with shadow plugins: its answers are its
    enabled plugins' alone, the shadow ones traced with what they would have changed,
    on the replay's clock (``ctx.now``: when each callback arrived)."""
    from core.replay import replay

    live, app = _policy(make, shadow=False)
    for _, event in TRAFFIC:
        post(app, event)
    live.pipeline.wait_idle()
    clock: list[float] = []

    class Clock:
        @hookimpl
        def switchboard_ice(self, ctx):
            clock.append(ctx.now())

    candidate = settings(
        plugins={
            "enabled": ["vip", "gate"],
            "shadow": ["strict", "clock"],
            "vip": VIP,
            "strict": STRICT,
        }
    )
    given = {"vip": vip_plugin, "gate": Gate(), "strict": strict_plugin, "clock": Clock()}
    report = replay(candidate, live.store, given=given, load_entrypoints=False)
    without = settings(plugins={"enabled": ["vip", "gate"], "vip": VIP})
    plain = replay(without, live.store, given=given, load_entrypoints=False)
    assert [r.candidate for r in report.results] == [r.candidate for r in plain.results]
    assert len(report.results) == len(TRAFFIC)
    [c2] = [r for r in report.results if (r.callid, r.event) == ("c2", "ice")]
    strict = c2.trace.plugin("strict")
    assert (strict.shadow, strict.would_change, strict.would_answer) == (
        True,
        True,
        {"action": "hangup"},
    )
    assert clock == [r.at for r in report.results if r.event == "ice"]


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"shadow": "strict"}, "plugins.shadow: expected a list of plugin names"),
        ({"shadow": ["strict", ""]}, "plugins.shadow: expected a list of plugin names"),
        ({"shadow": ["strict", "strict"]}, "plugins.shadow: 'strict' is listed twice"),
        ({"shadow": ["shadow"]}, "plugins.shadow: 'shadow' is a reserved name"),
        ({"enabled": ["shadow"]}, "plugins.enabled: 'shadow' is a reserved name"),
        ({"shadow": ["enabled"]}, "plugins.shadow: 'enabled' is a reserved name"),
        (
            {"enabled": ["strict"], "shadow": ["strict"]},
            "plugins.shadow: 'strict' is also in plugins.enabled",
        ),
    ],
)
def test_the_shadow_list_is_checked(plugins, message):
    with pytest.raises(ConfigError, match=message):
        settings(plugins=plugins)


def test_a_shadow_plugins_settings_are_validated_like_an_enabled_ones():
    with pytest.raises(ConfigError, match=r"plugins.strict.deny\[0\]: expected a string, got 5"):
        runtime({"strict": strict_plugin}, plugins={"shadow": ["strict"], "strict": {"deny": [5]}})
    with pytest.raises(ConfigError, match="plugins.strict.denied: unknown key"):
        runtime({"strict": strict_plugin}, plugins={"shadow": ["strict"], "strict": {"denied": []}})
    with pytest.raises(ConfigError, match="plugins.strict.timeout: must not exceed policy.budget"):
        runtime({"strict": strict_plugin}, plugins={"shadow": ["strict"], "strict": {"timeout": 9}})
    with pytest.raises(ConfigError, match="plugins.strict: configured but not enabled") as err:
        runtime({}, plugins={"strict": {"deny": []}})
    assert "(add it to plugins.enabled or plugins.shadow, or remove the table)" in str(err.value)
    rt = runtime({"strict": strict_plugin}, plugins={"shadow": ["strict"], "strict": STRICT})
    try:
        assert list(rt.settings.plugins["strict"]["deny"]) == STRICT["deny"]
        assert rt.settings.describe()["shadow"] == ["strict"]
    finally:
        rt.close()


def test_a_shadow_list_is_part_of_the_revision_only_when_there_is_one():
    from core.revisions import policy_content, revision_of

    plain = runtime({"router": Fixed(None)})
    shadowed = runtime(
        {"router": Fixed(None), "strict": strict_plugin}, plugins={"shadow": ["strict"]}
    )
    try:
        assert "shadow" not in plain.settings.describe()  # the revisions made before stay
        content = policy_content(shadowed.settings)
        assert content["shadow"] == ["strict"] and "strict" in content["plugins"]
        assert revision_of(content) != revision_of(policy_content(plain.settings))
    finally:
        plain.close()
        shadowed.close()


def test_a_shadow_plugin_must_be_installed_and_able_to_decide():
    missing = "plugin 'nope' is in plugins.shadow in config.toml but not installed"
    with pytest.raises(PluginError, match=missing):
        runtime({"router": Fixed(None)}, plugins={"shadow": ["nope"]})

    class Observer:
        @hookimpl
        def switchboard_dice(self):
            pass

    with pytest.raises(
        PluginError,
        match="plugin 'observer' .* is in plugins.shadow but implements none of switchboard_ice, "
        "switchboard_ace, switchboard_pie",
    ):
        runtime({"observer": Observer()}, plugins={"shadow": ["observer"]})


# ---------------------------------------------------------------------------- shown to people

CONFIG = f"""
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[plugins]
enabled = ["vip"]
shadow = ["strict"]
[plugins.vip]
callers = ["+12015550001"]
[plugins.strict]
deny = ["+12015550001"]
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """vip and strict installed (entry points in a folder on sys.path, returned)."""
    site = tmp_path / "site"
    entry_points = "vip = tests.vip_plugin\nstrict = tests.strict_plugin"
    make_dist(site, "switchboard-test-policies", entry_points)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_plugins_check_and_simulate_show_the_shadow_plugin(installed, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    listed = cli(config, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "vip 1.0 (third-party, precedence 1)" in listed.stdout
    assert "strict 1.0 (third-party, in shadow: run and traced, never merged)" in listed.stdout
    rows = {p["name"]: p for p in json.loads(cli(config, "plugins", "--json").stdout)["plugins"]}
    assert (rows["strict"]["shadow"], rows["strict"]["enabled"]) == (True, False)
    assert (rows["vip"]["shadow"], rows["vip"]["precedence"]) == (False, 1)

    check = cli(config, "check")
    assert check.returncode == 0, check.stderr
    assert "plugins in precedence order: vip" in check.stdout
    assert "plugins in shadow (run and traced, never merged): strict" in check.stdout
    assert "shadow: strict 1.0 from package switchboard-test-policies" in check.stdout
    assert 'deny = ["+12015550001"]' in check.stdout
    assert "strict [1]" in check.stdout  # its migration is applied at start

    sim = cli(config, "simulate", "ice", "--in-process", "--cli", "+12015550001")
    assert sim.returncode == 0, sim.stderr
    assert '"name": "connectPstn"' in sim.stdout  # vip's answer
    assert "strict (shadow, would have changed the answer to hangup): decided" in sim.stdout

    config.write_text(CONFIG.replace('shadow = ["strict"]', 'shadow = ["stricter"]'))
    missing = cli(config, "plugins")
    assert missing.returncode == 1
    assert "stricter: in plugins.shadow but NOT INSTALLED" in missing.stdout


def test_the_console_marks_shadow_plugins_and_their_results(make):
    rt, app = make(
        {"router": Fixed(Decision.propose(PSTN)), "strict": strict_plugin},
        admin={"token": "console-admin-token-0123456789", "console": "127.0.0.1:0"},
        plugins={"shadow": ["strict"], "strict": STRICT},
    )
    post(app, ice("v1", cli="12015550001"))
    console = console_of(rt)
    login(console, "console-admin-token-0123456789")
    plugins_page = console.get("/plugins").text
    assert '<span class="rank">1.</span>\n    router' in plugins_page
    assert '<span class="badge shadow">shadow</span>\n    strict' in plugins_page
    assert "router</a>; in shadow: strict</dd>" in console.get("/").text
    call = console.get("/calls/v1").text
    assert '<tr class="shadow">' in call
    assert "<strong>would have changed the answer</strong> to <code>hangup</code>" in call


# ---------------------------------------------------------------------------- reload


def test_a_reload_applies_a_changed_shadow_list(serve, installed, tmp_path, backend):
    site = installed
    base = (
        f'[server]\nport = 0\n[sinch]\nkeys = [{{ key = "{KEY}", secret = "{SECRET}" }}]\n'
        f'[store]\nurl = "{backend.url(tmp_path, "reload")}"\n'
        '[plugins]\nenabled = ["vip"]\n[plugins.vip]\ncallers = ["+12015550001"]\n'
    )
    server = serve(base, name="shadow-reload", pythonpath=str(site))
    assert json.loads(server.post(ice("before", cli="12015550001"))[2])["action"]["name"] == (
        "connectPstn"
    )
    server.config.write_text(
        base.replace('enabled = ["vip"]', 'enabled = ["vip"]\nshadow = ["strict"]')
        + '[plugins.strict]\ndeny = ["+12015550001"]\n'
    )
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded" in server.log, timeout=10), server.log
    assert "plugins vip; in shadow: strict" in server.log
    status, _, body = server.post(ice("after", cli="12015550001"))
    assert status == 200 and json.loads(body)["action"]["name"] == "connectPstn"
    assert server.stop() == 0
    ran = run_cli(server.config, "trace", "after", "--json", pythonpath=str(site))
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    [after] = json.loads(ran.stdout)["callbacks"]
    strict = after["trace"]["plugins"][-1]
    assert (strict["plugin"], strict["shadow"], strict["would_change"]) == ("strict", True, True)
    ran = run_cli(server.config, "trace", "before", "--json", pythonpath=str(site))
    [before] = json.loads(ran.stdout)["callbacks"]
    assert [p["plugin"] for p in before["trace"]["plugins"]] == ["vip"]
    line = next(
        json.loads(text.split("switchboard.callback ", 1)[1])
        for text in server.log.splitlines()
        if '"callid":"after"' in text
    )
    assert line["plugins"]["strict"].startswith("decided:") and line["plugins"]["strict"].endswith(
        ":deny:shadow:would-change"
    )
