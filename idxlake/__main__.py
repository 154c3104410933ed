"""``python -m idxlake`` runs the idxlake CLI (the same as the ``idxlake`` command)."""

from idxlake.cli import entry

entry()
