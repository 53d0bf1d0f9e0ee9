"""``python -m backdoor_audit.cli``: the same as the ``audit`` command."""

from .main import main

main()
