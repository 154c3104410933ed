"""idxlake loaders: stream idxlake Delta tables into PyTorch.

``DeltaIterableDataset`` reads a pinned table version with pyarrow only (safe in
forked DataLoader workers), shards one way for single process, workers and DDP, and
shuffles deterministically from ``(seed, epoch)``. Imports ``schemas``, never ``pipeline``.
"""

from loaders.dataset import DEFAULT_SHUFFLE_BUFFER, DeltaIterableDataset, ImageDtype
from loaders.filters import FILTER_COLUMNS, parse_filter
from loaders.plan import OUTPUT_COLUMNS, Plan, Unit, build_plan
from loaders.world import World

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "DeltaIterableDataset",
    "FILTER_COLUMNS",
    "ImageDtype",
    "OUTPUT_COLUMNS",
    "Plan",
    "Unit",
    "World",
    "build_plan",
    "parse_filter",
]
