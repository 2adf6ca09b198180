"""The plugin manager: entry points, enabling by config, precedence, failures named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError
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
    from tests.helpers import new_store

    settings = cfg.parse(
        {
            "sinch": {"keys": [{"key": KEY, "secret": SECRET}]},
            "plugins": {"enabled": ["vip"], "vip": {"callers": ["+12015555555"]}},
        },
        None,
        env={},
    )
    with Runtime.build(settings, store=new_store()) as rt:
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
