"""The command line (``switchboard``, or ``python serve.py`` from a checkout), one
module per job:

``core.cli.main``      the click group: options, the default command, plugin commands,
                       errors as one line, ``main()``
``core.cli.context``   what commands receive: the loaded configuration and the runtime
                       (``pass_runtime``)
``core.cli.commands``  the built-in commands
``core.cli.calls``     ``calls``: recent calls and one call's timeline (``core.calls``)
``core.cli.simulate``  simulated, signed callbacks
``core.cli.report``    printing answers and decision traces

Plugins add commands with ``switchboard_register_commands(cli)`` and get the runtime
with ``core.pass_runtime``.
"""

from core.cli.context import CliError, pass_runtime

__all__ = ["CliError", "pass_runtime"]
