"""Shadow plugins (``[plugins] shadow``): run on live traffic with the enabled ones,
traced and counted, never merged, and nothing they write is kept."""

from __future__ import annotations

import pytest

from core.config import ConfigError
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.plugins import PluginError
from tests import strict_plugin
from tests.helpers import Fixed, runtime, settings

STRICT = {
    "deny": ["+12015550001", "+12015550002", "+12015550005"],
    "cap": {"+12015550003": 60, "+12015550004": 7200},
    "deny_menu": "9",
}


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
    with pytest.raises(
        ConfigError, match=r"plugins.strict: configured but not enabled \(add it to plugins.enabled "
        r"or plugins.shadow"
    ):
        runtime({}, plugins={"strict": {"deny": []}})
    rt = runtime({"strict": strict_plugin}, plugins={"shadow": ["strict"], "strict": STRICT})
    try:
        assert list(rt.settings.plugins["strict"]["deny"]) == STRICT["deny"]
        assert rt.settings.describe()["shadow"] == ["strict"]
    finally:
        rt.close()


def test_a_shadow_plugin_must_be_installed_and_able_to_decide():
    with pytest.raises(PluginError, match="plugin 'nope' is in plugins.shadow in config.toml but not installed"):
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
