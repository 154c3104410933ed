"""Optional extras: import a dependency that only an extra installs, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from idxlake.schemas.errors import MissingExtraError

EXTRAS: dict[str, str] = {
    "torch": "torch",
    "duckdb": "duckdb",
    "pyspark": "spark",
}
"""Import name of an optional dependency -> the idxlake extra that installs it."""


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the extra that provides it.

    Args:
        module: Top-level import name (a key of :data:`EXTRAS`).
        purpose: What needs it, for the message (e.g. ``"the DuckDB engine"``).

    Raises:
        MissingExtraError: (an ImportError) the module is not installed; the message says
            ``pip install 'idxlake[extra]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                          f"pip install 'idxlake[{extra}]'") from exc
