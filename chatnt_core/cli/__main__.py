"""``python -m chatnt_core.cli``: what ``torchrun`` and ``accelerate launch`` run."""

from chatnt_core.cli.commands import main

main()
