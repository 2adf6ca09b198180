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
``core.cli.cells``     CSV a spreadsheet reads as data (``csv_writer``, ``csv_cell``)

Plugins add commands with ``switchboard_register_commands(cli)`` and get the runtime
with ``core.pass_runtime``; a command that writes CSV writes it with
``core.csv_writer`` (each cell through ``core.csv_cell``).
"""

from core.cli.cells import csv_cell, csv_writer
from core.cli.context import CliError, pass_runtime

__all__ = ["CliError", "csv_cell", "csv_writer", "pass_runtime"]
