"""idxlake loaders: stream idxlake Delta tables into PyTorch.

``DeltaIterableDataset`` reads a pinned table version with pyarrow only (safe in
forked DataLoader workers), shards one way for single process, workers and DDP, and
shuffles deterministically from ``(seed, epoch)``. Builds on :mod:`idxlake.schemas`,
never on :mod:`idxlake.pipeline`.

The planning helpers (``World``, ``parse_filter``, ``build_plan``) are pure and import
without torch; the torch-backed names load on first use and need ``idxlake[torch]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from idxlake.loaders.filters import FILTER_COLUMNS, parse_filter
from idxlake.loaders.plan import OUTPUT_COLUMNS, Plan, Unit, build_plan
from idxlake.loaders.world import World
from idxlake.schemas.extras import require

if TYPE_CHECKING:
    from idxlake.loaders.dataset import DEFAULT_SHUFFLE_BUFFER, DeltaIterableDataset, ImageDtype
    from idxlake.loaders.device import DeviceLoader
    from idxlake.loaders.ring import RingDataLoader

_TORCH_NAMES: dict[str, str] = {
    "DEFAULT_SHUFFLE_BUFFER": "idxlake.loaders.dataset",
    "DeltaIterableDataset": "idxlake.loaders.dataset",
    "DeviceLoader": "idxlake.loaders.device",
    "ImageDtype": "idxlake.loaders.dataset",
    "RingDataLoader": "idxlake.loaders.ring",
}
"""Names whose module imports torch: loaded by ``__getattr__`` on first access."""

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "DeltaIterableDataset",
    "DeviceLoader",
    "FILTER_COLUMNS",
    "ImageDtype",
    "OUTPUT_COLUMNS",
    "Plan",
    "RingDataLoader",
    "Unit",
    "World",
    "build_plan",
    "parse_filter",
]


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require("torch", purpose=f"idxlake.loaders.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
