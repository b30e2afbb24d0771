"""``python -m mailgate`` runs the same CLI as the ``mailgate`` command."""

from mailgate.cli import main

main()
