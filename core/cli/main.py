"""The ``switchboard`` command group: its options, ``serve`` as the default command,
built-in and plugin commands registered the same way, failures as one line.

``switchboard`` (the console script) and ``python serve.py`` both run ``main()``.
Commands come from ``switchboard_register_commands(cli)`` implementations: the
built-in ones in ``core.cli.commands``, then each enabled plugin's, in precedence order
(a plugin cannot replace a built-in command). Plugins are loaded only when their
commands are needed: ``serve`` starts without loading them twice.
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import sys
from typing import Any

import click

from core.cli import commands
from core.cli.context import CONFIG_ENV, DEFAULT_CONFIG, CliError, Invocation, invocation
from core.config import ConfigError
from core.plugins import DISTRIBUTION, PluginError, Plugins
from core.server import ServerError
from core.store import StoreError

DEFAULT_COMMAND = "serve"
HOOK = "switchboard_register_commands"


def one_line(message: str) -> str:
    """A failure is one line (database errors add DETAIL and HINT lines)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


class Switchboard(click.Group):
    """A click group that serves by default and adds plugin commands on demand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugins_added = False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """No command, or an option where the command would be (``--port 8090``):
        the default command, with those options."""
        takes_value = {
            name: not (p.is_flag or p.count)
            for p in self.get_params(ctx)
            if isinstance(p, click.Option)
            for name in p.opts
        }
        i = 0
        while i < len(args):
            name = args[i].split("=", 1)[0]
            if name not in takes_value:
                break
            i += 2 if takes_value[name] and "=" not in args[i] else 1
        if i == len(args) or (args[i].startswith("-") and args[i] != "--"):
            args = [*args[:i], DEFAULT_COMMAND, *args[i:]]
        rest = super().parse_args(ctx, args)
        if ctx.obj is None:
            ctx.obj = Invocation(ctx.params.get("config"))
        return rest

    def add_plugin_commands(self, ctx: click.Context, *, quiet: bool) -> None:
        """Let the enabled plugins add their commands (once). ``quiet``: a
        configuration that does not load adds none, instead of stopping here."""
        if self.plugins_added:
            return
        inv = invocation(ctx)
        inv.load()
        if inv.error is not None:
            if quiet:
                return
            raise CliError(f"cannot start: {inv.error}")
        self.plugins_added = True
        register_plugin_commands(self, inv.plugins)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and not self.plugins_added:
            self.add_plugin_commands(ctx, quiet=False)
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands(ctx, quiet=True)
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; known failures become ``error: ...`` and status 2, and a
        command's integer result is the exit status."""
        try:
            result = super().invoke(ctx)
        except (ConfigError, PluginError, StoreError, ServerError) as exc:
            raise CliError(one_line(str(exc))) from None
        except OSError as exc:  # an unreadable file, ...; a closed pipe is not an error
            if exc.errno == errno.EPIPE:
                raise
            raise CliError(one_line(str(exc))) from None
        if isinstance(result, int) and result:
            ctx.exit(result)
        return result


def register_plugin_commands(cli: click.Group, plugins: Plugins) -> None:
    """Each enabled plugin's ``switchboard_register_commands(cli)``, in precedence
    order; a failure, or a plugin replacing another command, names the plugin."""
    for impl in plugins.impls(HOOK):
        before = dict(cli.commands)
        try:
            impl(cli=cli)
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin!r} failed in {HOOK}: {type(exc).__name__}: {exc}"
            ) from exc
        replaced = sorted(n for n, c in before.items() if cli.commands.get(n) is not c)
        if replaced:
            raise PluginError(
                f"plugin {impl.plugin!r} replaces the command(s) {', '.join(replaced)}"
            )


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def make_cli() -> Switchboard:
    """A new command group with the built-in commands (plugin commands are added when
    a command line needs them)."""

    @click.group(
        cls=Switchboard,
        context_settings={"help_option_names": ["-h", "--help"]},
        help="Switchboard: Sinch Voice callback server. Without a command: serve.",
    )
    @click.option(
        "--config",
        envvar=CONFIG_ENV,
        default=DEFAULT_CONFIG,
        show_default=True,
        is_eager=True,
        metavar="PATH",
        help=f"configuration file (also ${CONFIG_ENV})",
    )
    @click.version_option(
        version(), "--version", prog_name="switchboard", message="%(prog)s %(version)s"
    )
    def cli(config: str) -> None:
        pass

    commands.switchboard_register_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    cli = make_cli()
    prog = "serve.py" if os.path.basename(sys.argv[0]) == "serve.py" else "switchboard"
    try:
        try:
            result = cli.main(args=argv, prog_name=prog, standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.Abort:
            click.echo("Aborted!", err=True)
            return 1
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (`| head`) has gone: stop quietly
        _quiet_stdout()
        return 1
    return result if isinstance(result, int) else 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
