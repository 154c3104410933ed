"""``python -m pipeline`` runs the idxlake CLI."""

from pipeline.cli import entry

entry()
