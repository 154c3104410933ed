"""Inspection: read-only SQL with time travel, info, history, diff, pictures of the records, DDL, maintenance."""

from idxlake.pipeline.inspect.ddl import spark_ddl
from idxlake.pipeline.inspect.diff import table_diff
from idxlake.pipeline.inspect.engines import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, Limits
from idxlake.pipeline.inspect.info import table_history, table_info
from idxlake.pipeline.inspect.maintenance import OptimizeResult, VacuumResult, optimize, vacuum
from idxlake.pipeline.inspect.render import decode_images, png_grid, select_images, text_grid
from idxlake.pipeline.inspect.sql import ENGINES, QueryResult, display_table, query
from idxlake.pipeline.inspect.sqltext import check_read_only
from idxlake.pipeline.inspect.timetravel import rewrite_time_travel

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "ENGINES",
    "Limits",
    "OptimizeResult",
    "QueryResult",
    "VacuumResult",
    "check_read_only",
    "decode_images",
    "display_table",
    "optimize",
    "png_grid",
    "query",
    "rewrite_time_travel",
    "select_images",
    "spark_ddl",
    "table_diff",
    "table_history",
    "table_info",
    "text_grid",
    "vacuum",
]
