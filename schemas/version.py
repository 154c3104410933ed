"""The idxlake release, recorded in every commit's lineage (kept equal to ``pyproject.toml``)."""

__version__ = "0.1.0"
