"""idxlake pipeline, by stage: ``idx`` (the codec), ``ingest`` (the batch job), ``inspect`` (SQL, info,
pictures, maintenance) and ``export``.

Builds on :mod:`idxlake.schemas` only; never imports :mod:`idxlake.loaders` or torch. The job functions
``ingest`` and ``export`` are not re-exported here, where they would shadow their subpackage and module:
call them as ``idxlake.ingest`` / ``idxlake.export`` (the facade).
"""

from idxlake.pipeline.idx.header import IdxHeader, parse_header
from idxlake.pipeline.idx.read import IdxDigest, IdxFile, read_idx, scan_idx
from idxlake.pipeline.idx.write import write_idx, write_idx_chunks
from idxlake.pipeline.ingest.job import IngestResult
from idxlake.pipeline.ingest.sources import SplitSource, bundled_mnist, discover
from idxlake.pipeline.inspect.ddl import spark_ddl
from idxlake.pipeline.inspect.info import table_history, table_info
from idxlake.pipeline.inspect.maintenance import OptimizeResult, VacuumResult, optimize, vacuum
from idxlake.pipeline.inspect.render import decode_images, png_grid, select_images, text_grid
from idxlake.pipeline.inspect.sql import ENGINES, QueryResult, display_table, query
from idxlake.pipeline.inspect.sqltext import check_read_only

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
    "bundled_mnist",
    "check_read_only",
    "decode_images",
    "discover",
    "display_table",
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
