"""idxlake: IDX image datasets (MNIST and family) into Delta Lake, and back into PyTorch training.

The facade of the three stages, one import away::

    from idxlake import ingest, query, info, DeltaIterableDataset

    ingest(None, "tables/mnist")                      # the bundled MNIST, one atomic Delta commit
    query("tables/mnist", "SELECT count(*) FROM mnist")
    ds = DeltaIterableDataset("tables/mnist", split="train", batch_size=256)

Every name loads on first use (module ``__getattr__``), so ``import idxlake`` is cheap and
never imports torch, deltalake or DuckDB. The torch-backed names need ``idxlake[torch]``;
the DuckDB engine needs ``idxlake[duckdb]``. The packages behind the facade are
:mod:`idxlake.schemas` (the table contract), :mod:`idxlake.pipeline` (IDX codec, ingest,
inspect, export) and :mod:`idxlake.loaders` (PyTorch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from idxlake.schemas.errors import (
    CommitConflictError,
    CommitUncertainError,
    DataCorruptionError,
    IdxFormatError,
    IdxlakeError,
    IngestConfigError,
    LoaderConfigError,
    MaintenanceError,
    MissingDataFileError,
    MissingExtraError,
    NotATableError,
    QueryError,
    SchemaMismatchError,
    SourceError,
    TableExistsError,
    TableNotFoundError,
)
from idxlake.schemas.extras import require
from idxlake.schemas.version import __version__

if TYPE_CHECKING:
    from idxlake.loaders.dataset import DeltaIterableDataset
    from idxlake.loaders.mapstyle import DeltaImageDataset
    from idxlake.loaders.train import TrainResult, train
    from idxlake.loaders.vision import EMNIST, KMNIST, MNIST, FashionMNIST
    from idxlake.loaders.world import World
    from idxlake.pipeline.export import export
    from idxlake.pipeline.export_parquet import export_parquet
    from idxlake.pipeline.idx.read import read_idx
    from idxlake.pipeline.idx.write import write_idx
    from idxlake.pipeline.ingest.download import download
    from idxlake.pipeline.ingest.job import IngestResult, ingest
    from idxlake.pipeline.inspect.ddl import spark_ddl
    from idxlake.pipeline.inspect.diff import table_diff as diff
    from idxlake.pipeline.inspect.info import table_history as history
    from idxlake.pipeline.inspect.info import table_info as info
    from idxlake.pipeline.inspect.maintenance import OptimizeResult, VacuumResult, optimize, vacuum
    from idxlake.pipeline.inspect.sql import QueryResult, query
    from idxlake.pipeline.inspect.verify import verify_table as verify
    from idxlake.schemas.access import TableSnapshot, snapshot
    from idxlake.schemas.datasets import DATASETS, DatasetSpec, get_dataset
    from idxlake.schemas.table import TableMeta
    from idxlake.schemas.versions import version_range

_LAZY: dict[str, tuple[str, str]] = {
    "DATASETS": ("idxlake.schemas.datasets", "DATASETS"),
    "DatasetSpec": ("idxlake.schemas.datasets", "DatasetSpec"),
    "DeltaImageDataset": ("idxlake.loaders.mapstyle", "DeltaImageDataset"),
    "DeltaIterableDataset": ("idxlake.loaders.dataset", "DeltaIterableDataset"),
    "EMNIST": ("idxlake.loaders.vision", "EMNIST"),
    "FashionMNIST": ("idxlake.loaders.vision", "FashionMNIST"),
    "IngestResult": ("idxlake.pipeline.ingest.job", "IngestResult"),
    "KMNIST": ("idxlake.loaders.vision", "KMNIST"),
    "MNIST": ("idxlake.loaders.vision", "MNIST"),
    "OptimizeResult": ("idxlake.pipeline.inspect.maintenance", "OptimizeResult"),
    "QueryResult": ("idxlake.pipeline.inspect.sql", "QueryResult"),
    "TableMeta": ("idxlake.schemas.table", "TableMeta"),
    "TableSnapshot": ("idxlake.schemas.access", "TableSnapshot"),
    "TrainResult": ("idxlake.loaders.train", "TrainResult"),
    "VacuumResult": ("idxlake.pipeline.inspect.maintenance", "VacuumResult"),
    "World": ("idxlake.loaders.world", "World"),
    "diff": ("idxlake.pipeline.inspect.diff", "table_diff"),
    "download": ("idxlake.pipeline.ingest.download", "download"),
    "export": ("idxlake.pipeline.export", "export"),
    "export_parquet": ("idxlake.pipeline.export_parquet", "export_parquet"),
    "get_dataset": ("idxlake.schemas.datasets", "get_dataset"),
    "history": ("idxlake.pipeline.inspect.info", "table_history"),
    "info": ("idxlake.pipeline.inspect.info", "table_info"),
    "ingest": ("idxlake.pipeline.ingest.job", "ingest"),
    "optimize": ("idxlake.pipeline.inspect.maintenance", "optimize"),
    "query": ("idxlake.pipeline.inspect.sql", "query"),
    "read_idx": ("idxlake.pipeline.idx.read", "read_idx"),
    "snapshot": ("idxlake.schemas.access", "snapshot"),
    "spark_ddl": ("idxlake.pipeline.inspect.ddl", "spark_ddl"),
    "train": ("idxlake.loaders.train", "train"),
    "vacuum": ("idxlake.pipeline.inspect.maintenance", "vacuum"),
    "verify": ("idxlake.pipeline.inspect.verify", "verify_table"),
    "version_range": ("idxlake.schemas.versions", "version_range"),
    "write_idx": ("idxlake.pipeline.idx.write", "write_idx"),
}
"""Public name -> (module, attribute): the registry the facade loads from on first access."""

_NEEDS_TORCH = frozenset({"DeltaImageDataset", "DeltaIterableDataset", "EMNIST", "FashionMNIST", "KMNIST", "MNIST",
                          "TrainResult", "train"})

__all__ = [
    "CommitConflictError",
    "CommitUncertainError",
    "DATASETS",
    "DataCorruptionError",
    "DatasetSpec",
    "DeltaImageDataset",
    "DeltaIterableDataset",
    "EMNIST",
    "FashionMNIST",
    "IdxFormatError",
    "IdxlakeError",
    "IngestConfigError",
    "IngestResult",
    "KMNIST",
    "LoaderConfigError",
    "MNIST",
    "MaintenanceError",
    "MissingDataFileError",
    "MissingExtraError",
    "NotATableError",
    "OptimizeResult",
    "QueryError",
    "QueryResult",
    "SchemaMismatchError",
    "SourceError",
    "TableExistsError",
    "TableMeta",
    "TableNotFoundError",
    "TableSnapshot",
    "TrainResult",
    "VacuumResult",
    "World",
    "__version__",
    "diff",
    "download",
    "export",
    "export_parquet",
    "get_dataset",
    "history",
    "info",
    "ingest",
    "optimize",
    "query",
    "read_idx",
    "snapshot",
    "spark_ddl",
    "train",
    "vacuum",
    "verify",
    "version_range",
    "write_idx",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _NEEDS_TORCH:
        require("torch", purpose=f"idxlake.{name}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
