"""Inspection: read-only SQL, info and history, pictures of the records, Spark DDL, maintenance."""

from idxlake.pipeline.inspect.ddl import spark_ddl
from idxlake.pipeline.inspect.info import table_history, table_info
from idxlake.pipeline.inspect.maintenance import OptimizeResult, VacuumResult, optimize, vacuum
from idxlake.pipeline.inspect.render import decode_images, png_grid, select_images, text_grid
from idxlake.pipeline.inspect.sql import ENGINES, QueryResult, display_table, query
from idxlake.pipeline.inspect.sqltext import check_read_only

__all__ = [
    "ENGINES",
    "OptimizeResult",
    "QueryResult",
    "VacuumResult",
    "check_read_only",
    "decode_images",
    "display_table",
    "optimize",
    "png_grid",
    "query",
    "select_images",
    "spark_ddl",
    "table_history",
    "table_info",
    "text_grid",
    "vacuum",
]
