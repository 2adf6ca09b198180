"""The plugin manager: entry points, enabling by config, precedence, failures named."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from core.config import ConfigError, Key, positive
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.plugins import PluginError, make_plugins
from core.store import CORE_MIGRATIONS, Migration
from core.svaml import ConnectConf
from tests.cli_runner import Ran, cli
from tests.helpers import KEY, SECRET, Fixed, ice, post, runtime, webapp

CORE_VERSIONS = [m.version for m in CORE_MIGRATIONS]


def make_dist(root: Path, name: str, entry: str, version: str = "1.0") -> Path:
    """A minimal installed distribution exposing ``entry`` in the switchboard group."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[switchboard]\n{entry}\n")
    return root


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path where tests 'install' plugin distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugin_is_loaded_with_its_metadata(site):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin", "2.5")
    plugins = make_plugins(["vip"])
    info = plugins.info["vip"]
    assert (info.version, info.builtin) == ("2.5", False)
    assert "package switchboard-vip" in info.origin
    assert info.hooks == (
        "switchboard_config_keys",
        "switchboard_ice",
        "switchboard_register_commands",
        "switchboard_store_migrations",
    )


def test_entry_point_plugin_decides_end_to_end(site):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin")
    from core import config as cfg
    from core.runtime import Runtime
    from core.store import SqliteStore

    settings = cfg.parse(
        {
            "sinch": {"keys": [{"key": KEY, "secret": SECRET}]},
            "plugins": {"enabled": ["vip"], "vip": {"callers": ["+12015555555"]}},
        },
        None,
        env={},
    )
    with Runtime.build(settings, store=SqliteStore(":memory:")) as rt:
        app = webapp(rt)
        r = post(app, ice("vip-1", cli="12015555555"))
        assert r.json["action"] == {
            "name": "connectPstn",
            "number": "+15612600684",
            "maxDuration": 3600,
        }
        assert post(app, ice("vip-2", cli="14155550000")).json == {"action": {"name": "hangup"}}
        assert rt.store.query("SELECT callid, caller FROM vip_calls") == [("vip-1", "+12015555555")]


def test_installed_is_not_enabled(site):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin")
    assert make_plugins([]).order == ()
    assert make_plugins([]).impls("switchboard_ice") == ()


def test_unknown_plugin_name_stops_the_start(site):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin")
    with pytest.raises(PluginError) as err:
        make_plugins(["vipp"])
    assert "plugin 'vipp' is enabled in config.toml but not installed" in str(err.value)
    assert "vip" in str(err.value).split("installed:")[1]


def test_plugin_that_fails_to_import_is_named(site):
    (site / "switchboard_broken.py").write_text("import no_such_module_anywhere\n")
    make_dist(site, "switchboard-broken", "broken = switchboard_broken")
    with pytest.raises(PluginError) as err:
        make_plugins(["broken"])
    message = str(err.value)
    assert "plugin 'broken' from package switchboard-broken" in message
    assert "failed to import: ModuleNotFoundError" in message


def test_wrong_hook_signature_is_named():
    class Wrong:
        @hookimpl
        def switchboard_ice(self, event, context):  # the argument is called ctx
            return None

    with pytest.raises(PluginError) as err:
        make_plugins(["wrong"], load_entrypoints=False, given={"wrong": Wrong()})
    assert "plugin 'wrong'" in str(err.value) and "implements a hook wrongly" in str(err.value)
    assert "context" in str(err.value)


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def switchboard_icee(self, event):
            return None

    with pytest.raises(PluginError) as err:
        make_plugins(["typo"], load_entrypoints=False, given={"typo": Typo()})
    assert "plugin 'typo'" in str(err.value) and "switchboard_icee" in str(err.value)


def _refusal(obj, name="p"):
    with pytest.raises(PluginError) as err:
        make_plugins([name], load_entrypoints=False, given={name: obj})
    return str(err.value)


ORIGIN = "plugin 'p' from object tests.test_plugins."


@pytest.mark.parametrize(
    ("method", "hint"),
    [
        ("switchboard_ice_", "switchboard_ice"),
        ("switchbord_dice", "switchboard_dice"),
        ("switchboard_configur", "switchboard_configure"),
    ],
)
def test_a_misspelt_hook_is_named_with_the_hook_meant(method, hint):
    def hook(self, event):
        return None

    plugin = type("Typo", (), {method: hookimpl(hook)})()
    assert _refusal(plugin) == (
        f"{ORIGIN}Typo: {method} is not a Switchboard hook (did you mean {hint}?)"
    )


def test_a_hook_that_resembles_nothing_gets_no_suggestion():
    class Odd:
        @hookimpl
        def on_call(self, event):
            return None

    where = "test_a_hook_that_resembles_nothing_gets_no_suggestion.<locals>.Odd"
    assert _refusal(Odd()) == f"{ORIGIN}{where}: on_call is not a Switchboard hook"


@pytest.mark.parametrize(
    ("method", "hint"),
    [("switchboard_ice", ""), ("switchbord_dice", "did you mean switchboard_dice? ")],
)
def test_a_method_named_like_a_hook_but_not_marked_is_refused(method, hint):
    plugin = type("Unmarked", (), {method: lambda self, event: None})()
    assert _refusal(plugin) == (
        f"{ORIGIN}Unmarked: {method} is named like a hook but not marked @hookimpl "
        f"({hint}add `from core import hookimpl` and decorate it, or rename it)"
    )


def test_static_and_class_methods_named_like_hooks_are_checked_too():
    class Statics:
        @staticmethod
        def switchboard_ice(event):
            return None

        @classmethod
        def switchboard_dice(cls, event):
            return None

        switchboard_version = "1.0"  # not a method: not a hook either

        def helper(self):
            return None

    message = _refusal(Statics())
    assert "switchboard_dice is named like a hook but not marked @hookimpl" in message
    assert "switchboard_ice is named like a hook but not marked @hookimpl" in message
    assert "switchboard_version" not in message and "helper" not in message


def test_a_module_plugin_is_checked_like_a_class(site):
    (site / "switchboard_modtypo.py").write_text(
        "from core import hookimpl\n\n@hookimpl\ndef switchboard_ace_(event):\n    return None\n"
    )
    make_dist(site, "switchboard-modtypo", "modtypo = switchboard_modtypo")
    with pytest.raises(PluginError) as err:
        make_plugins(["modtypo"])
    assert str(err.value) == (
        "plugin 'modtypo' from package switchboard-modtypo (switchboard_modtypo): "
        "switchboard_ace_ is not a Switchboard hook (did you mean switchboard_ace?)"
    )


def test_an_argument_the_hook_does_not_pass_is_named_with_the_arguments_it_does():
    class Wrong:
        @hookimpl
        def switchboard_startup(self, store, configuration, serving):
            return None

    assert _refusal(Wrong()).endswith(
        "Wrong: implements a hook wrongly: switchboard_startup(store, configuration, serving): "
        "'configuration' is not an argument of the hook "
        "(switchboard_startup takes store, config, serving; did you mean config?)"
    )


def test_catch_all_arguments_are_refused_as_they_receive_nothing():
    class Greedy:
        @hookimpl
        def switchboard_ice(self, event, *args, **kwargs):
            return None

    message = _refusal(Greedy())
    assert (
        "implements a hook wrongly: switchboard_ice(event, *args, **kwargs): *args receives "
        "nothing (hooks are called by argument name; switchboard_ice takes event, ctx)"
    ) in message
    assert "**kwargs receives nothing" in message


def test_every_mistake_of_a_plugin_is_named_at_once_and_good_hooks_pass():
    class Several:
        @hookimpl
        def switchboard_ice(self, ctx):  # a subset of the arguments, in any order: fine
            return None

        @hookimpl(specname="switchboard_ace")
        def on_answer(self, event):  # another name, with specname: fine
            return None

        @hookimpl
        def switchboard_pie(self, event, ctx, extra=None):  # a defaulted extra: never passed
            return None

        @hookimpl
        def switchboard_dise(self, event):
            return None

        def switchboard_notify(self, event):
            return None

    message = _refusal(Several())
    assert message.endswith(
        "Several: switchboard_dise is not a Switchboard hook (did you mean switchboard_dice?); "
        "switchboard_notify is named like a hook but not marked @hookimpl "
        "(add `from core import hookimpl` and decorate it, or rename it)"
    )


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"limit": int}, "config key 'limit' must be declared with core.config.Key"),
        ({"no-dash": Key(int)}, "config key 'no-dash' is not a valid name"),
        (
            {"items": Key(list)},
            "config key 'items' is named like a method of the config mapping "
            "(config.items would not read it); choose another name",
        ),
        (
            {"limit": Key("int")},
            "config key 'limit': 'int' is not a type (use one of str, int, float, bool, "
            "Decimal, list, dict, list[T] or dict[str, T])",
        ),
        (
            {"when": Key(datetime)},
            "config key 'when': datetime is not a type config.toml holds (use one of str, "
            "int, float, bool, Decimal, list, dict, list[T] or dict[str, T])",
        ),
        (
            {"pairs": Key(list[tuple[str, int]])},
            "config key 'pairs': tuple[str, int] cannot be checked (use one of str, int, "
            "float, bool, Decimal, list, dict, list[T] or dict[str, T]; choices= for fixed values)",
        ),
        (
            {"rates": Key(dict[int, str])},
            "config key 'rates': dict[int, str]: the keys of a table are always strings "
            "(use dict[str, ...])",
        ),
        (
            {"limit": Key(int | None)},
            "config key 'limit': int | None cannot be checked (config.toml has no null: "
            "declare default=None)",
        ),
        ({"limit": Key(int, "5")}, "config key 'limit': default: expected an integer, got '5'"),
        (
            {"allow": Key(list[str], ["+1", 5])},
            "config key 'allow': default[1]: expected a string, got 5",
        ),
        (
            {"mode": Key(str, "loud", choices=("quiet", "normal"))},
            "config key 'mode': default: must be one of 'quiet', 'normal', got 'loud'",
        ),
        (
            {"delay": Key(float, -1.0, check=positive)},
            "config key 'delay': default: must be greater than 0",
        ),
    ],
)
def test_a_bad_config_key_declaration_is_named(keys, problem):
    class Declares:
        @hookimpl
        def switchboard_config_keys(self):
            return keys

    with pytest.raises(PluginError) as err:
        runtime({"p": Declares()})
    where = "test_a_bad_config_key_declaration_is_named.<locals>.Declares"
    assert str(err.value) == f"{ORIGIN}{where}: {problem}"


def test_typed_keys_are_checked_element_by_element_and_read_as_attributes():
    seen = []

    class Typed:
        @hookimpl
        def switchboard_config_keys(self):
            return {
                "allow": Key(list[str], [], "numbers"),
                "rates": Key(dict[str, Decimal], {}, "per prefix"),
                "max_duration": Key(int, 3600, "seconds"),
            }

        @hookimpl
        def switchboard_ice(self, event, ctx):
            seen.append((ctx.config.allow, ctx.config.rates, ctx.config.max_duration))
            seen.append(ctx.config["max_duration"])

    with pytest.raises(ConfigError) as err:
        runtime({"allowlist": Typed()}, plugins={"allowlist": {"allow": ["+1", "+2", 5]}})
    assert str(err.value) == "plugins.allowlist.allow[2]: expected a string, got 5"
    rt = runtime(
        {"allowlist": Typed()},
        plugins={"allowlist": {"allow": ["+1"], "rates": {"+1": Decimal("0.02")}}},
    )
    try:
        post(webapp(rt), ice())
    finally:
        rt.close()
    assert seen == [(("+1",), {"+1": Decimal("0.02")}, 3600), 3600]  # read-only all the way down


def test_wrappers_are_refused_on_event_hooks():
    class Wrapper:
        @hookimpl(wrapper=True)
        def switchboard_ice(self, event):
            return (yield)

    with pytest.raises(PluginError, match="switchboard_ice may not be a wrapper"):
        make_plugins(["w"], load_entrypoints=False, given={"w": Wrapper()})


def test_bad_config_key_declaration_is_named():
    class BadKeys:
        @hookimpl
        def switchboard_config_keys(self):
            return {"limit": int}

    with pytest.raises(
        PluginError,
        match="plugin 'bad' from object .*: config key 'limit' must be declared with core.config.Key",
    ):
        runtime({"bad": BadKeys()})


def test_plugin_refusing_its_configuration_is_named():
    class Picky:
        @hookimpl
        def switchboard_configure(self, settings, config):
            raise ValueError("needs at least one rate")

    with pytest.raises(
        PluginError, match="plugin 'picky' refused its configuration: needs at least one rate"
    ):
        runtime({"picky": Picky()})


def test_unknown_key_in_plugin_section_is_a_config_error():
    with pytest.raises(ConfigError, match="plugins.a.colour: unknown key"):
        runtime({"a": Fixed(None)}, plugins={"a": {"colour": "red"}})


def test_precedence_is_config_order_not_registration_order():
    first, second = (
        Fixed(Decision.propose(ConnectConf(conference_id="one"))),
        Fixed(Decision.propose(ConnectConf(conference_id="two"))),
    )
    plugins = make_plugins(["b", "a"], load_entrypoints=False, given={"a": first, "b": second})
    assert [i.plugin for i in plugins.impls("switchboard_ice")] == ["b", "a"]
    rt = runtime({"b": second, "a": first})
    try:
        assert post(webapp(rt), ice()).json["action"]["conferenceId"] == "two"
    finally:
        rt.close()


def test_plugin_migrations_and_lifecycle():
    events = []

    class Life:
        @hookimpl
        def switchboard_store_migrations(self):
            return [
                Migration(1, ("CREATE TABLE life (x INTEGER)",)),
                Migration(2, ("ALTER TABLE life ADD y TEXT",)),
            ]

        @hookimpl
        def switchboard_startup(self, store, config):
            events.append(("startup", store.query("SELECT COUNT(*) FROM life")[0][0]))

        @hookimpl
        def switchboard_shutdown(self):
            events.append(("shutdown", None))

    rt = runtime({"life": Life()})
    assert rt.pending_migrations() == {"core": CORE_VERSIONS, "life": [1, 2]}
    rt.start()
    assert rt.pending_migrations() == {}
    assert rt.store.applied("life") == {1, 2}
    rt.close()
    assert events == [("startup", 0), ("shutdown", None)]


def test_startup_failure_is_named():
    class Fails:
        @hookimpl
        def switchboard_startup(self):
            raise OSError("cannot reach CRM")

    rt = runtime({"fails": Fails()})
    try:
        with pytest.raises(
            PluginError,
            match="plugin 'fails' failed in switchboard_startup: OSError: cannot reach CRM",
        ):
            rt.start()
    finally:
        rt.close()


# ---------------------------------------------------------------- through serve.py


def _cli(site: Path, tmp: Path, *args: str, config: str | None = None) -> Ran:
    """A command on ``config`` (written to ``tmp``), run in-process with the plugins
    installed in ``site`` (on sys.path)."""
    cfg = tmp / "config.toml"
    cfg.write_text(config or "")
    return cli(cfg, *args)


CONFIG = f"""
[sinch]
keys = [{{ key = "{KEY}", secret = "{SECRET}" }}]
[plugins]
enabled = ["vip"]
[plugins.vip]
callers = ["+12015555555"]
"""


def test_serve_py_plugins_lists_the_test_plugin(site, tmp_path):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin", "3.1")
    run = _cli(site, tmp_path, "plugins", "--json", config=CONFIG)
    assert run.returncode == 0, run.stderr
    rows = {p["name"]: p for p in json.loads(run.stdout)["plugins"]}
    vip = rows["vip"]
    assert (vip["version"], vip["builtin"], vip["precedence"], vip["enabled"]) == (
        "3.1",
        False,
        1,
        True,
    )
    assert "switchboard_ice" in vip["hooks"]
    text = _cli(site, tmp_path, "plugins", config=CONFIG).stdout
    assert "vip 3.1 (third-party, precedence 1)" in text


def test_serve_py_check_and_plugin_command(site, tmp_path):
    make_dist(site, "switchboard-vip", "vip = tests.vip_plugin")
    work = tmp_path / "work"
    work.mkdir()
    check = _cli(site, work, "check", config=CONFIG)
    assert check.returncode == 0, check.stderr
    assert "1. vip 1.0 from package switchboard-vip" in check.stdout
    assert 'callers = ["+12015555555"]' in check.stdout
    assert f"migrations to apply at start: core {CORE_VERSIONS}; vip [1]" in check.stdout
    sim = _cli(
        site,
        work,
        "simulate",
        "ice",
        "--in-process",
        "--use-store",
        "--cli",
        "+12015555555",
        "--callid",
        "sim-1",
        config=CONFIG,
    )
    assert sim.returncode == 0, sim.stderr
    assert '"name": "connectPstn"' in sim.stdout and "vip: decided" in sim.stdout
    listed = _cli(site, work, "vip", config=CONFIG)
    assert listed.returncode == 0, listed.stderr
    assert "sim-1 +12015555555" in listed.stdout and "1 VIP call(s)" in listed.stdout


def test_serve_py_refuses_to_start_with_unknown_plugin(site, tmp_path):
    run = _cli(
        site,
        tmp_path,
        "check",
        config=CONFIG.replace('"vip"]', '"vipp"]').replace(
            '[plugins.vip]\ncallers = ["+12015555555"]', ""
        ),
    )
    assert run.returncode == 2
    assert "plugin 'vipp' is enabled in config.toml but not installed" in run.stderr


def test_installed_package_with_bad_config_keys_is_named(site):
    (site / "switchboard_badkeys.py").write_text(
        "from core.hookspecs import hookimpl\n\n@hookimpl\ndef switchboard_config_keys():\n    return {'rate': float}\n"
    )
    make_dist(site, "switchboard-badkeys", "badkeys = switchboard_badkeys")
    from core import config as cfg
    from core.runtime import Runtime

    settings = cfg.parse(
        {"sinch": {"keys": [{"key": KEY, "secret": SECRET}]}, "plugins": {"enabled": ["badkeys"]}},
        None,
        env={},
    )
    with pytest.raises(PluginError) as err:
        Runtime.build(settings)
    assert "plugin 'badkeys' from package switchboard-badkeys" in str(err.value)
    assert "config key 'rate' must be declared with core.config.Key" in str(err.value)
