"""The idxlake table contract: error hierarchy, IDX dtypes, known datasets, table schema and access.

Imports nothing else of idxlake (pipeline and loaders build on it) and never torch.
"""

from schemas.access import DataFile, TableSnapshot, open_table, pyarrow_filesystem, snapshot, snapshot_of
from schemas.datasets import DATASETS, GENERIC, DatasetSpec, SplitFiles, get_dataset
from schemas.dtypes import DTYPES_BY_NAME, IDX_DTYPES, IdxDtype, dtype_by_name
from schemas.errors import (
    IdxFormatError,
    IdxlakeError,
    LoaderConfigError,
    MissingDataFileError,
    QueryError,
    SchemaMismatchError,
    SourceError,
    TableExistsError,
    TableNotFoundError,
)
from schemas.table import (
    COLUMNS,
    FORMAT_VERSION,
    ID,
    IMAGE,
    LABEL,
    META_KEY,
    PARTITION_BY,
    ROW_GROUP_ROWS,
    SPLIT,
    PixelStats,
    SourceFile,
    SplitMeta,
    TableMeta,
    arrow_schema,
    meta_from_schema,
)

__all__ = [
    "COLUMNS",
    "DATASETS",
    "DTYPES_BY_NAME",
    "DataFile",
    "DatasetSpec",
    "FORMAT_VERSION",
    "GENERIC",
    "ID",
    "IDX_DTYPES",
    "IMAGE",
    "IdxDtype",
    "IdxFormatError",
    "IdxlakeError",
    "LABEL",
    "LoaderConfigError",
    "META_KEY",
    "MissingDataFileError",
    "PARTITION_BY",
    "PixelStats",
    "QueryError",
    "ROW_GROUP_ROWS",
    "SPLIT",
    "SchemaMismatchError",
    "SourceError",
    "SourceFile",
    "SplitFiles",
    "SplitMeta",
    "TableExistsError",
    "TableMeta",
    "TableNotFoundError",
    "TableSnapshot",
    "arrow_schema",
    "dtype_by_name",
    "get_dataset",
    "meta_from_schema",
    "open_table",
    "pyarrow_filesystem",
    "snapshot",
    "snapshot_of",
]
