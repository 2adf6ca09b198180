"""Switchboard's command line from a checkout: the same as the ``switchboard`` command.

python serve.py                      # serve config.toml with waitress
python serve.py --port 8090          # serve, on another port
python serve.py plugins              # installed plugins, their hooks and precedence
python serve.py check                # validate the config, say what would load
python serve.py simulate ice         # send a signed ICE to the running server

The commands live in ``core/cli/``, the server in ``core/server.py``.
"""

import sys

from core.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
