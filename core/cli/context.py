"""What a command receives: the configuration ``--config`` names, loaded once, and the
runtime built from it (``pass_runtime``).

A command gets these from click's context object, an ``Invocation``. Loading it
reads the settings, loads the enabled plugins and sets up logging; a configuration or
plugin that cannot load is an error only for the commands that need it (``plugins``
lists what is installed regardless).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from core.config import Settings
    from core.plugins import Plugins
    from core.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = "config.toml"
CONFIG_ENV = "SWITCHBOARD_CONFIG"
LOG_FORMAT_ENV = "SWITCHBOARD_LOG_FORMAT"


class CliError(click.ClickException):
    """A command failed: ``error: <message>`` on stderr, exit status 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


class Invocation:
    """One run of the command line: the configuration file, its settings and enabled
    plugins (loaded on first use) and the runtime commands share."""

    def __init__(self, config_path: str | None = None) -> None:
        self.config_path = config_path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        self.loaded = False
        self.error: Exception | None = None
        self._settings: Settings | None = None
        self._plugins: Plugins | None = None
        self._runtime: Runtime | None = None

    def load(self) -> None:
        """Read the settings and load the enabled plugins, once; set up logging."""
        if self.loaded:
            return
        from core import logs
        from core.config import ConfigError, load
        from core.plugins import PluginError, make_plugins

        self.loaded = True
        try:
            self._settings = load(self.config_path)
            self._plugins = make_plugins(self._settings.enabled, shadow=self._settings.shadow)
        except (ConfigError, PluginError) as exc:
            self.error = exc
        if self._settings is not None:
            level, fmt = self._settings.logging["level"], self._settings.logging["format"]
        else:
            level, fmt = "INFO", os.environ.get(LOG_FORMAT_ENV, "text")
        undo = logs.setup(level, fmt if fmt in logs.FORMATS else "text")
        context = click.get_current_context(silent=True)
        if context is not None:
            context.find_root().call_on_close(undo)

    @property
    def settings_or_none(self) -> Settings | None:
        """The settings, or ``None`` if the file could not be read or validated."""
        self.load()
        return self._settings

    @property
    def settings(self) -> Settings:
        self.load()
        if self.error is not None:
            raise CliError(f"cannot start: {self.error}")
        assert self._settings is not None
        return self._settings

    @property
    def plugins(self) -> Plugins:
        self.settings  # noqa: B018 - raises the load error, if any
        assert self._plugins is not None
        return self._plugins

    def runtime(self, *, start: bool = True) -> Runtime:
        """The runtime of these settings and plugins, built once and closed when the
        command ends. ``start``: migrations applied and plugins started, for a command
        (``serving=False``: no background work)."""
        if self._runtime is None:
            from core.runtime import Runtime

            self._runtime = Runtime.build(self.settings, plugins=self.plugins)
            context = click.get_current_context(silent=True)
            if context is not None:
                context.find_root().call_on_close(self._runtime.close)
        if start:
            self._runtime.start(serving=False)
        return self._runtime


def invocation(ctx: click.Context | None = None) -> Invocation:
    """The ``Invocation`` of this command line (made from ``--config`` if need be)."""
    ctx = ctx or click.get_current_context()
    found = ctx.find_object(Invocation)
    if found is None:
        root = ctx.find_root()
        root.obj = found = Invocation(root.params.get("config"))
    return found


def pass_runtime(command: F) -> F:
    """Give a command the runtime as its first argument.

    The runtime (``core.runtime.Runtime``: ``settings``, ``plugins``, ``store``) is
    built from the configuration ``--config`` names, with migrations applied and the
    plugins started for a command (``switchboard_startup`` with ``serving=False``), and
    closed when the command ends::

        @cli.command()
        @click.argument("account")
        @pass_runtime
        def balance(runtime, account):
            ...

    A command returns its exit status (``0`` or ``None`` for success).
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        return command(invocation().runtime(), *args, **kwargs)

    return run  # type: ignore[return-value]
