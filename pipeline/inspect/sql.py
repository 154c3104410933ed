"""Read-only SQL over an idxlake table, through DataFusion (default) or DuckDB.

``query(table, sql)`` registers the table under a name, checks that the statement only
reads (:func:`idxlake.pipeline.inspect.sqltext.check_read_only`), rewrites ``length(image)``-style calls
that the engines reject on binary columns, runs it and returns a pyarrow Table.

Engines (:data:`ENGINES`):

* ``datafusion``: deltalake's embedded ``QueryBuilder`` over the Delta table itself (any
  Delta table, time travel through the log). Its planner rejects INSERT/UPDATE/DELETE
  on the registered table; DDL, ``COPY`` and ``SET`` only reach its session, and are
  refused by the guard before that.
* ``duckdb``: an in-memory DuckDB whose only data is the table's Arrow dataset (the live
  Parquet files of the pinned version), with file-system access disabled, and only
  SELECT/EXPLAIN statements accepted by DuckDB's own parser.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from idxlake.pipeline.inspect.sqltext import check_identifier, check_read_only, rewrite_binary_lengths, table_identifier
from idxlake.schemas import IdxlakeError, QueryError

logger = logging.getLogger(__name__)

Engine = Literal["datafusion", "duckdb"]
DEFAULT_ENGINE: Engine = "datafusion"
BATCH_ROWS = 8192

Runner = Callable[[str], pa.RecordBatchReader]
Opener = Callable[..., tuple[set[str], Runner]]


@dataclass(frozen=True)
class QueryResult:
    """The outcome of :func:`query`.

    Attributes:
        table: The rows (Arrow types as the engine returned them; see :func:`display_table`).
        truncated: True when ``max_rows`` cut the result short.
        engine: Engine that ran the statement.
        name: Name the table was registered under.
        sql: The statement as run (after rewrites).
    """

    table: pa.Table
    truncated: bool
    engine: str
    name: str
    sql: str


def _binary_columns(schema: pa.Schema) -> set[str]:
    return {f.name.lower() for f in schema if _is_binary(f.type)}


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _open_datafusion(uri: str, name: str, *, version: int | None,
                     storage_options: Mapping[str, str] | None) -> tuple[set[str], Runner]:
    from deltalake import QueryBuilder

    from idxlake.schemas import open_table

    dt = open_table(uri, version=version, storage_options=storage_options)
    binary = _binary_columns(pa.schema(dt.schema().to_arrow()))

    def run(sql: str) -> pa.RecordBatchReader:
        builder = QueryBuilder({"datafusion.catalog.information_schema": "true"})  # SHOW TABLES/COLUMNS
        return pa.RecordBatchReader.from_stream(builder.register(name, dt).execute(sql))

    return binary, run


def _open_duckdb(uri: str, name: str, *, version: int | None,
                 storage_options: Mapping[str, str] | None) -> tuple[set[str], Runner]:
    from idxlake.schemas import snapshot
    from idxlake.schemas.extras import require

    duckdb = require("duckdb", purpose="the DuckDB engine (--engine duckdb)")

    snap = snapshot(uri, version=version, storage_options=storage_options)
    con = duckdb.connect(":memory:", config={
        "enable_external_access": False, "autoinstall_known_extensions": False,
        "autoload_known_extensions": False})
    con.register(name, snap.dataset())
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

    def run(sql: str) -> pa.RecordBatchReader:
        statements = duckdb.extract_statements(sql)
        kinds = [s.type.name for s in statements if s.type not in allowed]
        if len(statements) != 1 or kinds:
            raise QueryError(f"duckdb parses this as {', '.join(kinds) or f'{len(statements)} statements'}: "
                             "the table is read-only through `idxlake sql`; only one SELECT/EXPLAIN runs")
        return con.sql(sql).to_arrow_reader(BATCH_ROWS)

    return _binary_columns(snap.schema), run


ENGINES: dict[str, Opener] = {"datafusion": _open_datafusion, "duckdb": _open_duckdb}
"""Engine name -> opener ``(uri, name, *, version, storage_options) -> (binary columns, run(sql))``."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _hint(message: str, name: str) -> str:
    if re.search(r"received Binary|\bBLOB\b|non.utf-?8", message, re.IGNORECASE):
        return (" (hint: binary columns: octet_length(image) gives the byte size, md5(image) a hash, "
                "encode(image, 'hex') [DataFusion] or hex(image) [DuckDB] the bytes as text)")
    if re.search(r"table .*not found|table with name .* does not exist", message, re.IGNORECASE):
        return f" (hint: the table is registered as {name!r}; --name changes it)"
    return ""


def query(table: str, sql: str, *, engine: Engine = DEFAULT_ENGINE, name: str | None = None,
          version: int | None = None, storage_options: Mapping[str, str] | None = None,
          max_rows: int | None = None) -> QueryResult:
    """Run one read-only SQL statement over a table.

    Args:
        table: Table path or URI.
        sql: One SELECT/WITH/VALUES/EXPLAIN/DESCRIBE/SHOW statement.
        engine: ``"datafusion"`` or ``"duckdb"``.
        name: Name to register the table under; default: the last path component of
            ``table`` made a valid identifier (``my-table`` -> ``my_table``).
        version: Table version to query (time travel); latest when ``None``.
        storage_options: Object-store options.
        max_rows: Stop reading after this many rows (``None``: all).

    Returns:
        A :class:`QueryResult`.

    Raises:
        QueryError: the statement is refused or the engine rejects it (its message, one line).
        TableNotFoundError: no table or version at ``table``.
    """
    if engine not in ENGINES:
        raise QueryError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    name = check_identifier(name) if name else table_identifier(table)
    statement = check_read_only(sql)
    binary, run = ENGINES[engine](table, name, version=version, storage_options=storage_options)
    rewritten = rewrite_binary_lengths(statement, binary, engine=engine)
    if rewritten != statement:
        logger.debug("rewrote binary length calls: %s", rewritten)
    batches: list[pa.RecordBatch] = []
    rows, truncated = 0, False
    try:
        reader = run(rewritten)
        for batch in reader:
            if max_rows is not None and rows + batch.num_rows > max_rows:
                batches.append(batch.slice(0, max_rows - rows))
                truncated = True
                break
            batches.append(batch)
            rows += batch.num_rows
        result = pa.Table.from_batches(batches, schema=reader.schema)
    except IdxlakeError:
        raise
    except Exception as exc:  # engines raise plain Exception, DeltaError or duckdb.Error subclasses
        message = _one_line(exc)
        raise QueryError(f"{engine}: {message}{_hint(message, name)}") from exc
    logger.debug("%s: %d rows (%s)", engine, result.num_rows, "truncated" if truncated else "complete")
    return QueryResult(table=result, truncated=truncated, engine=engine, name=name, sql=rewritten)


def summarize_binary(array: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Replace binary values by a ``<N bytes>`` string (nulls stay null)."""
    chunked = array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])
    if not pa.types.is_binary(chunked.type) and not pa.types.is_large_binary(chunked.type):
        chunked = chunked.cast(pa.large_binary() if pa.types.is_large_binary(chunked.type) else pa.binary())
    lengths = pc.binary_length(chunked).cast(pa.string())
    return pc.binary_join_element_wise("<", lengths, " bytes>", "")


def display_table(table: pa.Table) -> pa.Table:
    """A printable copy of a result: binary columns summarised, view types made plain, metadata dropped.

    Args:
        table: A :attr:`QueryResult.table`.

    Returns:
        A table of plain Arrow types (``string`` for summaries and string views).
    """
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        t = field.type
        if _is_binary(t):
            column = summarize_binary(column)
        elif pa.types.is_string_view(t):
            column = column.cast(pa.string())
        columns.append(column)
        fields.append(pa.field(field.name, column.type, nullable=field.nullable))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
