"""idxlake pipeline: decode IDX files, ingest them into Delta tables, inspect and export them.

Never imports torch (the loaders package does).
"""

__version__ = "0.1.0"

from pipeline.idx import IdxDigest, IdxFile, IdxHeader, parse_header, read_idx, scan_idx
from pipeline.idx_write import write_idx, write_idx_chunks
from pipeline.ingest import IngestResult, ingest
from pipeline.sources import SplitSource, bundled_mnist, discover

__all__ = [
    "IdxDigest",
    "IdxFile",
    "IdxHeader",
    "IngestResult",
    "SplitSource",
    "__version__",
    "bundled_mnist",
    "discover",
    "ingest",
    "parse_header",
    "read_idx",
    "scan_idx",
    "write_idx",
    "write_idx_chunks",
]
