"""Meta-tests that keep the plugin surface honest: the guide matches the contract, every
hook is documented, and one test pins the order in which every hook fires."""

from __future__ import annotations

from pathlib import Path

import click

from core import ConsolePage, calls, guide
from core.console.app import collect_pages
from core.cli.main import make_cli, register_plugin_commands
from core.decisions import Decision
from core.hookspecs import hookimpl
from core.replay import replay
from core.store import Migration
from tests.helpers import ace, dice, ice, notify, pie, post, runtime, webapp

REPO = Path(__file__).resolve().parent.parent


def test_guide_hook_reference_is_generated_from_the_specs():
    text = (REPO / "docs" / "plugins.md").read_text()
    assert guide.current(text) == guide.render(), "run: python -m core.guide --write"


def test_every_hook_is_documented_in_readme_and_guide():
    readme = (REPO / "README.md").read_text()
    text = (REPO / "docs" / "plugins.md").read_text()
    names = [name for name, _ in guide.specs()]
    assert len(names) == 16
    for name in names:
        assert f"`{name}(" in readme, f"{name} missing from the README's hook table"
        assert f"### `{name}`" in text
        assert len(guide.specs()[names.index(name)][1].__doc__ or "") > 150, (
            f"{name} is barely documented"
        )


class Everything:
    """Implements every hook and records the order they fire in."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def switchboard_config_keys(self):
        self.calls.append("config_keys")
        return {}

    @hookimpl
    def switchboard_configure(self, settings, config):
        self.calls.append("configure")

    @hookimpl
    def switchboard_store_migrations(self):
        self.calls.append("store_migrations")
        return [Migration(1, ("CREATE TABLE everything (x INTEGER)",))]

    @hookimpl
    def switchboard_startup(self, store, config, serving):
        self.calls.append(f"startup(serving={serving})")

    @hookimpl
    def switchboard_replay_rewind(self, store, since):
        self.calls.append("replay_rewind")

    @hookimpl
    def switchboard_metrics(self, registry):
        self.calls.append("metrics")

    @hookimpl
    def switchboard_ice(self, event, ctx):
        self.calls.append("ice")
        return Decision.allowed("fine")

    @hookimpl
    def switchboard_ace(self, event, ctx):
        self.calls.append("ace")

    @hookimpl
    def switchboard_pie(self, event, ctx):
        self.calls.append("pie")

    @hookimpl
    def switchboard_dice(self, event, ctx):
        self.calls.append("dice")

    @hookimpl
    def switchboard_notify(self, event, ctx):
        self.calls.append("notify")

    @hookimpl
    def switchboard_after_answer(self, event, answer, trace):
        self.calls.append(f"after_answer:{event.name}")

    @hookimpl
    def switchboard_call_details(self, store, callids):
        self.calls.append("call_details")
        return {callid: {"seen": "yes"} for callid in callids}

    @hookimpl
    def switchboard_console_pages(self):
        self.calls.append("console_pages")
        return [ConsolePage("everything", "Everything", lambda request: "<p>all</p>")]

    @hookimpl
    def switchboard_register_commands(self, cli):
        self.calls.append("register_commands")
        cli.command("everything")(lambda: None)

    @hookimpl
    def switchboard_shutdown(self):
        self.calls.append("shutdown")


def test_the_order_hooks_fire_in_for_a_call():
    plugin = Everything()
    rt = runtime({"everything": plugin})
    app = webapp(rt)  # starts the runtime as the server does
    for event in (
        ice("order"),
        ace("order"),
        pie("order"),
        dice("order"),
        notify("order"),
        ice("order"),
    ):
        post(app, event)
        rt.pipeline.wait_idle()
    page = calls.recent_calls(rt.store, plugins=rt.plugins)  # an operator looks
    assert [(r.callid, dict(r.details)) for r in page.rows] == [("order", {"seen": "yes"})]
    pages = collect_pages(rt)  # the operator console starts
    assert [m.path for m in pages.pages] == ["/plugins/everything/everything"]
    cli = make_cli()
    register_plugin_commands(cli, rt.plugins)
    # the same calls replayed (serve.py replay): in a sandbox, from the window's start
    again = Everything()
    report = replay(rt.settings, rt.store, given={"everything": again})
    rt.close()
    assert plugin.calls == [
        "config_keys",
        "configure",
        "store_migrations",
        "startup(serving=True)",
        "metrics",
        "ice",
        "after_answer:ice",
        "ace",
        "after_answer:ace",
        "pie",
        "after_answer:pie",
        "dice",
        "after_answer:dice",
        "notify",
        "after_answer:notify",
        "after_answer:ice",  # a repeated ICE reaches only the observer
        "call_details",
        "console_pages",
        "register_commands",
        "shutdown",
    ]
    assert isinstance(cli.commands["everything"], click.Command)
    assert again.calls == [
        "config_keys",
        "configure",
        "store_migrations",
        "replay_rewind",
        "startup(serving=False)",
        "ice",
        "after_answer:ice",
        "ace",
        "after_answer:ace",
        "pie",
        "after_answer:pie",
        "dice",
        "after_answer:dice",
        "notify",
        "after_answer:notify",
        "shutdown",
    ]
    assert [r.change for r in report.results] == ["same"] * 3
    hooks = {name.removeprefix("switchboard_") for name, _ in guide.specs()}
    fired = {c.split(":")[0].split("(")[0] for c in plugin.calls + again.calls}
    assert hooks == fired, "a hook no test fires"
