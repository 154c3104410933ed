"""idxlake loaders: stream idxlake Delta tables into PyTorch.

``DeltaIterableDataset`` streams a pinned table version with pyarrow only (safe in
forked DataLoader workers), shards one way for single process, workers and DDP, and
shuffles deterministically from ``(seed, epoch)``. ``DeltaImageDataset`` (and the drop-in
``MNIST``, ``FashionMNIST``, ``KMNIST``, ``EMNIST``) is the map-style, torchvision-compatible
counterpart over one in-memory buffer; ``dataloader`` configures a DataLoader for either.
Builds on :mod:`idxlake.schemas`, never on :mod:`idxlake.pipeline`.

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
    from idxlake.loaders.factory import dataloader
    from idxlake.loaders.mapstyle import DeltaImageDataset, ImageType
    from idxlake.loaders.vision import EMNIST, KMNIST, MNIST, FashionMNIST

_TORCH_NAMES: dict[str, str] = {
    "DEFAULT_SHUFFLE_BUFFER": "idxlake.loaders.dataset",
    "DeltaImageDataset": "idxlake.loaders.mapstyle",
    "DeltaIterableDataset": "idxlake.loaders.dataset",
    "EMNIST": "idxlake.loaders.vision",
    "FashionMNIST": "idxlake.loaders.vision",
    "ImageDtype": "idxlake.loaders.dataset",
    "ImageType": "idxlake.loaders.mapstyle",
    "KMNIST": "idxlake.loaders.vision",
    "MNIST": "idxlake.loaders.vision",
    "dataloader": "idxlake.loaders.factory",
}
"""Names whose module imports torch: loaded by ``__getattr__`` on first access."""

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "DeltaImageDataset",
    "DeltaIterableDataset",
    "EMNIST",
    "FILTER_COLUMNS",
    "FashionMNIST",
    "ImageDtype",
    "ImageType",
    "KMNIST",
    "MNIST",
    "OUTPUT_COLUMNS",
    "Plan",
    "Unit",
    "World",
    "build_plan",
    "dataloader",
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
