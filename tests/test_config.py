"""config.toml validation: every error names its key; secrets stay secret."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from core import config as cfg
from core.config import ConfigError, Key
from core.store import StoreError, open_store, redact_url
from tests.helpers import KEY, SECRET

REPO = Path(__file__).resolve().parent.parent


def _parse(data, env=None):
    base = {"sinch": {"keys": [{"key": KEY, "secret": SECRET}]}}
    for name, values in data.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg.parse(base, None, env=env or {})


def test_example_config_is_valid():
    settings = cfg.load(REPO / "config.toml", env={})
    assert settings.server["host"] == "127.0.0.1"
    assert settings.store["url"].startswith("sqlite:///")
    assert settings.store["url"] == "sqlite:///switchboard.db" and settings.base_dir == REPO
    assert settings.fallback["ice"].to_dict() == {"action": {"name": "hangup"}}


def test_defaults():
    s = _parse({})
    assert s.server["callback_path"] == "/sinch/callback" and s.server["max_body_bytes"] == 65536
    assert s.policy["budget"] == 2.0 and s.sinch["timestamp_window"] == 300
    assert s.enabled == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"server": {"port": "8080"}}, "server.port: expected an integer, got '8080'"),
        ({"server": {"port": 70000}}, "server.port: must be a TCP port"),
        ({"server": {"threads": 0}}, "server.threads: must be greater than 0"),
        ({"server": {"callback_path": "sinch"}}, "server.callback_path: must be a path"),
        ({"server": {"public_path_prefix": "/voice/"}}, "server.public_path_prefix: must be empty"),
        ({"policy": {"budget": 6}}, "policy.budget: must be greater than 0 and at most 4.5"),
        (
            {"policy": {"ice_default": "allow"}},
            "policy.ice_default: must be one of 'deny', 'connect'",
        ),
        (
            {"policy": {"fallback": {"ice": {"action": {"name": "continue"}}}}},
            "policy.fallback.ice: action: 'continue' is not allowed in an ICE answer",
        ),
        ({"policy": {"fallback": {"dice": {}}}}, "policy.fallback.dice: unknown event"),
        ({"sinch": {"insecure": "yes"}}, "sinch.insecure: expected true or false"),
        ({"sinch": {"keys": [{"secret": SECRET}]}}, "sinch.keys[0].key: required"),
        ({"sinch": {"keys": [{"key": "k"}]}}, "sinch.keys[0]: needs secret_env"),
        (
            {"sinch": {"keys": [{"key": "k", "secret": "%%%"}]}},
            "sinch.keys[0]: the application secret is not valid base64",
        ),
        (
            {"sinch": {"keys": [{"key": "k", "secret_env": "NOPE"}]}},
            "environment variable NOPE is not set",
        ),
        ({"sinch": {"keys": []}}, "sinch.keys: no application key configured"),
        ({"logging": {"level": "LOUD"}}, "logging.level: must be one of"),
        ({"plugins": {"enabled": "allowlist"}}, "plugins.enabled: expected a list"),
        ({"plugins": {"enabled": ["a", "a"]}}, "plugins.enabled: 'a' is listed twice"),
        ({"extra": {}}, "extra: unknown section"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        _parse(data)
    assert message in str(err.value)


def test_secret_never_in_errors_or_descriptions():
    with pytest.raises(ConfigError) as err:
        _parse(
            {"sinch": {"keys": [{"key": "k", "secret": "c2VjcmV0", "secret_env": "X"}]}},
            env={"X": "abc"},
        )
    assert "c2VjcmV0" not in str(err.value)
    s = _parse({})
    assert SECRET not in repr(s.describe()) and SECRET not in repr(s.credentials)


def test_secret_from_environment_and_rotation():
    s = _parse(
        {
            "sinch": {
                "keys": [
                    {"key": "new", "secret_env": "SW_SECRET"},
                    {"key": "old", "secret": SECRET},
                ]
            }
        },
        env={"SW_SECRET": "c2VjcmV0"},
    )
    assert [c.key for c in s.credentials] == ["new", "old"]
    assert s.credentials[0].secret == "c2VjcmV0"


def test_plugin_sections_are_validated_against_declared_keys():
    s = _parse({"plugins": {"enabled": ["p"], "p": {"limit": 3, "price": 0.25}}})
    keys = {
        "limit": Key(int, 1, "calls"),
        "price": Key(Decimal, Decimal(0), "per minute"),
        "token": Key(str, None, "api token", secret=True, env="P_TOKEN"),
    }
    done = cfg.with_plugins(s, {"p": keys}, env={"P_TOKEN": "t0ps3cret"})
    assert done.plugins["p"]["limit"] == 3
    assert done.plugins["p"]["price"] == Decimal("0.25") and isinstance(
        done.plugins["p"]["price"], Decimal
    )
    assert done.plugins["p"]["token"] == "t0ps3cret"
    assert done.describe()["plugins"]["p"]["token"] == "<redacted>"
    assert done.plugins["p"]["on_error"] is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"limt": 3}, "plugins.p.limt: unknown key (known keys: limit, on_error, timeout)"),
        ({"limit": "3"}, "plugins.p.limit: expected an integer"),
        ({"on_error": "retry"}, "plugins.p.on_error: must be one of 'deny', 'abstain'"),
        ({"timeout": 5.0}, "plugins.p.timeout: must not exceed policy.budget"),
    ],
)
def test_plugin_section_errors(table, message):
    s = _parse({"plugins": {"enabled": ["p"], "p": table}})
    with pytest.raises(ConfigError) as err:
        cfg.with_plugins(s, {"p": {"limit": Key(int, 1)}}, env={})
    assert message in str(err.value)


def test_table_for_a_plugin_that_is_not_enabled():
    s = _parse({"plugins": {"enabled": [], "credit": {"x": 1}}})
    with pytest.raises(ConfigError, match="plugins.credit: configured but not enabled"):
        cfg.with_plugins(s, {}, env={})


def test_money_in_toml_is_never_float(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        f'[sinch]\nkeys = [{{key = "{KEY}", secret = "{SECRET}"}}]\n'
        '[plugins]\nenabled = ["p"]\n[plugins.p]\nprice = 0.1\n'
    )
    s = cfg.with_plugins(cfg.load(path, env={}), {"p": {"price": Key(Decimal, Decimal(0))}}, env={})
    assert s.plugins["p"]["price"] == Decimal("0.1")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        cfg.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(bad)


def test_store_urls(tmp_path):
    (tmp_path / "data").mkdir()
    store = open_store("sqlite:///data/sb.db", tmp_path)
    assert store.path == str(tmp_path / "data" / "sb.db")
    store.close()
    store = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert store.path == str(tmp_path / "abs.db")
    store.close()
    store = open_store("sqlite://")
    assert store.path.endswith(".db") and store.backend == "sqlite"
    store.close()
    with pytest.raises(ConfigError, match="store.url: unsupported store 'mysql'"):
        _parse({"store": {"url": "mysql://x"}})
    with pytest.raises(StoreError, match="sqlite:///relative/path"):
        open_store("sqlite://relative.db")


def test_store_url_from_environment_and_redacted():
    s = _parse({}, env={"SWITCHBOARD_STORE_URL": "postgresql://app:hunter2@db.internal:5432/calls"})
    assert s.store["url"] == "postgresql://app:hunter2@db.internal:5432/calls"
    assert s.describe()["store"]["url"] == "postgresql://app:***@db.internal:5432/calls"
    assert "hunter2" not in repr(s.describe())
    assert redact_url("postgresql://app@db/calls") == "postgresql://app@db/calls"


# ------------------------------------------------- typed lists and tables, attribute reads

TYPED = {
    "allow": Key(list[str], [], "numbers"),
    "rates": Key(dict[str, Decimal], {}, "per prefix"),
    "limits": Key(list[dict[str, int]], [], "nested"),
    "secrets": Key(list[str], [], "tokens", secret=True),
    "max_duration": Key(int, 3600, "seconds"),
}


def _typed(table, env=None):
    s = _parse({"plugins": {"enabled": ["allowlist"], "allowlist": table}})
    return cfg.with_plugins(s, {"allowlist": TYPED}, env=env or {})


def test_elements_of_typed_lists_and_tables_are_checked_and_converted():
    done = _typed(
        {"allow": ["+46701234567", "+44*"], "rates": {"+1": 0.02}, "limits": [{"a": 1}]}
    )
    config = done.plugins["allowlist"]
    assert config["allow"] == ("+46701234567", "+44*")  # read-only: a tuple
    assert config["rates"] == {"+1": Decimal("0.02")} and isinstance(
        config["rates"]["+1"], Decimal
    )
    assert config["limits"] == ({"a": 1},)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allow": ["+1", "+2", 5]}, "plugins.allowlist.allow[2]: expected a string, got 5"),
        ({"allow": "+1"}, "plugins.allowlist.allow: expected a list of strings, got '+1'"),
        ({"rates": {"+1": "x"}}, 'plugins.allowlist.rates."+1": expected a number, got \'x\''),
        ({"rates": {"us": True}}, "plugins.allowlist.rates.us: expected a number, got True"),
        ({"rates": [1]}, "plugins.allowlist.rates: expected a table of numbers, got [1]"),
        (
            {"limits": [{"a": 1}, {"b": "2"}]},
            "plugins.allowlist.limits[1].b: expected an integer, got '2'",
        ),
        (
            {"limits": [{"a": 1}, 3]},
            "plugins.allowlist.limits[1]: expected a table of integers, got 3",
        ),
        ({"secrets": ["ok", 7]}, "plugins.allowlist.secrets[1]: expected a string, got <redacted>"),
    ],
)
def test_an_element_of_the_wrong_type_is_named_by_key_and_index(table, message):
    with pytest.raises(ConfigError) as err:
        _typed(table)
    assert str(err.value) == message


def test_typed_list_from_the_environment_is_checked_too():
    keys = {"allow": Key(list[str], [], "numbers", env="P_ALLOW")}
    s = _parse({"plugins": {"enabled": ["p"]}})
    done = cfg.with_plugins(s, {"p": keys}, env={"P_ALLOW": '["+1", "+2"]'})
    assert done.plugins["p"].allow == ("+1", "+2")
    with pytest.raises(ConfigError) as err:
        cfg.with_plugins(s, {"p": keys}, env={"P_ALLOW": '["+1", 2]'})
    assert str(err.value) == "plugins.p.allow[1] (from $P_ALLOW): expected a string, got 2"


def test_plugin_config_reads_as_a_mapping_and_as_attributes():
    config = _typed({"max_duration": 600, "allow": ["+1"]}).plugins["allowlist"]
    assert config.max_duration == config["max_duration"] == 600
    assert config.allow == ("+1",) and config.on_error is None and config.timeout is None
    assert config == {
        "allow": ("+1",),
        "rates": {},
        "limits": (),
        "secrets": (),
        "max_duration": 600,
        "on_error": None,
        "timeout": None,
    }
    assert dict(config) == dict(config.items()) and "allow" in config and len(config) == 7
    assert config.get("nope", 1) == 1
    assert "max_duration" in dir(config)
    with pytest.raises(AttributeError) as err:
        config.max_duraton  # noqa: B018
    assert str(err.value) == (
        "plugins.allowlist has no key 'max_duraton' "
        "(keys: allow, limits, max_duration, on_error, rates, secrets, timeout)"
    )
    with pytest.raises(KeyError):
        config["max_duraton"]
    with pytest.raises(AttributeError, match="plugins.allowlist is read-only"):
        config.max_duration = 1
    with pytest.raises(TypeError):
        config["max_duration"] = 1  # type: ignore[index]


def test_plugin_config_repr_names_keys_never_values():
    s = _parse({"plugins": {"enabled": ["p"]}})
    done = cfg.with_plugins(
        s, {"p": {"token": Key(str, None, secret=True, env="P_TOKEN")}}, env={"P_TOKEN": "hunter2"}
    )
    assert done.plugins["p"].token == "hunter2"
    assert repr(done.plugins["p"]) == "PluginConfig('p', keys=['on_error', 'timeout', 'token'])"


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        (str, None),
        (list[str], None),
        (dict[str, list[Decimal]], None),
        ("str", "'str' is not a type (use one of str, int, float, bool, Decimal, list, dict"),
        (tuple, "tuple is not a type config.toml holds (use one of str, int"),
        (list[tuple[int, int]], "tuple[int, int] cannot be checked (use one of str"),
        (dict[int, str], "dict[int, str]: the keys of a table are always strings"),
        (int | None, "int | None cannot be checked (config.toml has no null: declare default"),
    ],
)
def test_key_types_that_config_toml_can_hold_and_that_can_be_checked(kind, problem):
    found = cfg.type_problem(kind)
    assert found == problem if problem is None else found.startswith(problem)


def test_the_core_declares_its_own_keys_correctly():
    tables = [cfg.SERVER_KEYS, cfg.SINCH_KEYS, cfg.CREDENTIAL_KEYS, cfg.POLICY_KEYS]
    tables += [cfg.STORE_KEYS, cfg.ADMIN_KEYS, cfg.LOGGING_KEYS, cfg.PLUGIN_CORE_KEYS]
    for keys in tables:
        for key in keys.values():
            assert cfg.type_problem(key.type) is None
            if key.default is not None:
                cfg.coerce("default", key, key.default)


def test_plugin_settings_are_read_only_all_the_way_down():
    from core.config import PluginConfig

    config = PluginConfig("p", {"allow": ["+1"], "table": {"a": [1]}})
    with pytest.raises(AttributeError):
        config["allow"].append("*")  # a tuple: one call cannot change the next one's rules
    with pytest.raises(TypeError):
        config["table"]["b"] = 2
    assert config.table["a"] == (1,)
