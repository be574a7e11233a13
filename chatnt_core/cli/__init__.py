"""The ``chatnt`` command line (``chatnt_core.cli:main``; ``python -m chatnt_core.cli``).

``commands`` builds the command tree and handles errors; ``ask`` holds the commands for
people (ask, chat, batch), ``convert`` and ``models`` the published-checkpoint converter
and the model store. The data, training, evaluation and web commands live with their
packages (``chatnt_core.<package>.cli``) and are mounted by ``commands``.
"""

from chatnt_core.cli.commands import app, main

__all__ = ["app", "main"]
