"""``python -m pipeline`` runs the ``capshard`` command."""

from .cli import main

main()
