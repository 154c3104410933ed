"""idxlake pipeline: decode IDX files, ingest them into Delta tables, inspect and export them.

Never imports torch (the loaders package does).
"""

__version__ = "0.1.0"

from pipeline.ddl import spark_ddl
from pipeline.export import export
from pipeline.idx import IdxDigest, IdxFile, read_idx, scan_idx
from pipeline.idx_header import IdxHeader, parse_header
from pipeline.idx_write import write_idx, write_idx_chunks
from pipeline.info import table_history, table_info
from pipeline.ingest import IngestResult, ingest
from pipeline.maintenance import OptimizeResult, VacuumResult, optimize, vacuum
from pipeline.render import decode_images, png_grid, select_images, text_grid
from pipeline.sources import SplitSource, bundled_mnist, discover
from pipeline.sql import ENGINES, QueryResult, display_table, query
from pipeline.sqltext import check_read_only

__all__ = [
    "ENGINES",
    "IdxDigest",
    "IdxFile",
    "IdxHeader",
    "IngestResult",
    "OptimizeResult",
    "QueryResult",
    "SplitSource",
    "VacuumResult",
    "__version__",
    "bundled_mnist",
    "check_read_only",
    "decode_images",
    "discover",
    "display_table",
    "export",
    "ingest",
    "optimize",
    "parse_header",
    "png_grid",
    "query",
    "read_idx",
    "scan_idx",
    "select_images",
    "spark_ddl",
    "table_history",
    "table_info",
    "text_grid",
    "vacuum",
    "write_idx",
    "write_idx_chunks",
]
