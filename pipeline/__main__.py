"""``python -m pipeline`` runs the ``capshard`` command."""

from .cli import run

run()
