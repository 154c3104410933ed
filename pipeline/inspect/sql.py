"""Read-only SQL over an idxlake table, through DataFusion (default) or DuckDB.

``query(table, sql)`` runs one statement in three steps:

1. the friendly text pass (:mod:`idxlake.pipeline.inspect.sqltext`): a one-line refusal of
   statements that obviously write, and rewrites of what the engines cannot parse: time
   travel (``VERSION AS OF``, ``TIMESTAMP AS OF``, ``t@v3``; :mod:`idxlake.pipeline.inspect.timetravel`)
   and ``length(image)`` on binary columns;
2. every table version the statement reads is opened and registered as its own table;
3. the engine plans and runs it read-only and bounded (:mod:`idxlake.pipeline.inspect.engines`:
   this is the security boundary, not step 1).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc

from idxlake.pipeline.inspect.engines import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    Limits,
    Session,
    binary_columns,
    collect,
    is_binary,
    open_datafusion,
    open_duckdb,
)
from idxlake.pipeline.inspect.identifiers import check_identifier, table_identifier
from idxlake.pipeline.inspect.sqltext import check_read_only, rewrite_binary_lengths
from idxlake.pipeline.inspect.timetravel import TravelClause, rewrite_time_travel
from idxlake.schemas import DataCorruptionError, IdxlakeError, QueryError, open_table, snapshot_of
from idxlake.schemas.storage import one_line
from idxlake.schemas.versions import Timestamp, VersionRange, version_range

if TYPE_CHECKING:
    from deltalake import DeltaTable

logger = logging.getLogger(__name__)

Engine = Literal["datafusion", "duckdb"]
DEFAULT_ENGINE: Engine = "datafusion"

Opener = Callable[..., Session]


def _duckdb(tables: Mapping[str, DeltaTable], limits: Limits, *, uri: str,
            storage_options: Mapping[str, str] | None) -> Session:
    return open_duckdb(tables, limits, uri=uri, storage_options=storage_options)


def _datafusion(tables: Mapping[str, DeltaTable], limits: Limits, *, uri: str,
                storage_options: Mapping[str, str] | None) -> Session:
    return open_datafusion(tables, limits, uri=uri, storage_options=storage_options)


ENGINES: dict[str, Opener] = {"datafusion": _datafusion, "duckdb": _duckdb}
"""Engine name -> opener ``(tables, limits, *, uri, storage_options) -> Session``."""


@dataclass(frozen=True)
class QueryResult:
    """The outcome of :func:`query`.

    Attributes:
        table: The rows (Arrow types as the engine returned them; see :func:`display_table`).
        truncated: True when ``max_rows`` cut the result short.
        engine: Engine that ran the statement.
        name: Name the table was registered under.
        sql: The statement as run (after rewrites).
        versions: Registered name -> table version, for every table the statement could read.
    """

    table: pa.Table
    truncated: bool
    engine: str
    name: str
    sql: str
    versions: Mapping[str, int]


def _hint(message: str, name: str) -> str:
    if re.search(r"received Binary|\bBLOB\b|non.utf-?8|BinaryView", message, re.IGNORECASE):
        return (" (hint: binary columns: octet_length(image) gives the byte size, md5(image) a hash, "
                "encode(image, 'hex') [DataFusion] or hex(image) [DuckDB] the bytes as text)")
    if re.search(r"table .*not found|table with name .* does not exist", message, re.IGNORECASE):
        return (f" (hint: the table is registered as {name!r}; --name changes it; older versions: "
                f"FROM {name} VERSION AS OF N)")
    return ""


_DAMAGED = re.compile(r"CRC checksum verification failed|could not verify page integrity|Couldn't deserialize "
                      r"thrift|Parquet magic bytes not found|Corrupt(ed)? (parquet|page|footer)|Invalid page header"
                      r"|Unexpected encoding", re.IGNORECASE)
"""Engine messages that mean a data file is damaged (not a problem with the statement)."""
_PARQUET = re.compile(r"Parquet (argument )?error", re.IGNORECASE)
"""Any error of the Parquet reader (a damaged page header reads as 'Required field type_ is missing'): the
files are checked, and a damaged one is reported as such."""


def _raise_damaged(table: str, tables: Mapping[str, DeltaTable], storage_options: Mapping[str, str] | None,
                   message: str, exc: BaseException) -> None:
    """Raise :class:`DataCorruptionError` naming the table, version and damaged file behind ``exc``; without
    such a file, only when the message itself says a file is damaged."""
    from idxlake.pipeline.inspect.verify import first_damaged_file

    for dt in {dt.version(): dt for dt in tables.values()}.values():
        snap = snapshot_of(dt, uri=table, storage_options=storage_options)
        found = first_damaged_file(snap)
        if found:
            raise DataCorruptionError(f"{table}@v{snap.version}: data file {found[0]} cannot be read: {found[1]}; "
                                      f"run `idxlake verify {table}`") from exc
    if _DAMAGED.search(message):
        raise DataCorruptionError(f"{table}: a data file cannot be read ({message}); run `idxlake verify {table}`") \
            from exc


def query(table: str, sql: str, *, engine: Engine = DEFAULT_ENGINE, name: str | None = None,
          version: int | None = None, as_of: Timestamp | None = None,
          storage_options: Mapping[str, str] | None = None, max_rows: int | None = None,
          timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB) -> QueryResult:
    """Run one read-only SQL statement over a table.

    Args:
        table: Table path or URI.
        sql: One SELECT/WITH/VALUES/EXPLAIN/DESCRIBE/SHOW statement. ``FROM name VERSION AS OF n``,
            ``FROM name TIMESTAMP AS OF '...'`` and ``name@v3`` read older versions.
        engine: ``"datafusion"`` or ``"duckdb"``.
        name: Name to register the table under; default: the last path component of
            ``table`` made a valid identifier (``my-table`` -> ``my_table``).
        version: Version that ``name`` itself reads (latest when ``None``).
        as_of: Instead of ``version``: the latest version committed at or before this timestamp.
        storage_options: Object-store options.
        max_rows: Stop reading after this many rows (``None``: all).
        timeout: Seconds before the statement is cancelled.
        memory_mb: Memory limit of the engine, and of the result, in MiB.

    Returns:
        A :class:`QueryResult`.

    Raises:
        QueryError: the statement is refused, the engine rejects it, or it ran over a limit (one line).
        DataCorruptionError: a data file does not read (page checksum, footer), naming the file.
        TableNotFoundError: no table, or a version or timestamp out of the table's range.
    """
    if engine not in ENGINES:
        raise QueryError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    limits = Limits(timeout_s=timeout, memory_mb=memory_mb)
    name = check_identifier(name) if name else table_identifier(table)
    statement = check_read_only(sql, engine=engine)
    main = open_table(table, version=version, as_of=as_of, storage_options=storage_options)
    versions: list[VersionRange] = []

    def resolve(clause: TravelClause) -> int:
        if not versions:
            versions.append(version_range(table, storage_options=storage_options))
        if clause.kind == "version":
            assert isinstance(clause.value, int)
            return versions[0].check_version(clause.value)
        return versions[0].at(str(clause.value))

    rewritten, travelled = rewrite_time_travel(statement, name, resolve)
    tables: dict[str, DeltaTable] = {name: main}
    for registered, v in travelled.items():
        tables[registered] = main if v == main.version() else open_table(
            table, version=v, storage_options=storage_options)
    binary: set[str] = set()
    for dt in tables.values():
        binary |= binary_columns(pa.schema(dt.schema().to_arrow()))
    rewritten = rewrite_binary_lengths(rewritten, binary, engine=engine)
    if version is not None or as_of is not None or travelled:  # an older version: its files may be vacuumed,
        for dt in {dt.version(): dt for dt in tables.values()}.values():  # and DataFusion answers count(*) from
            snap = snapshot_of(dt, uri=table, storage_options=storage_options)  # the log's statistics alone
            snap.check_files(snap.files)
    if rewritten != statement:
        logger.debug("rewrote the statement: %s", rewritten)
    try:
        session = ENGINES[engine](tables, limits, uri=table, storage_options=storage_options)
        result, truncated = collect(session, rewritten, limits, max_rows=max_rows)
    except IdxlakeError:
        raise
    except Exception as exc:  # engines raise plain Exception, ValueError or duckdb.Error subclasses
        message = one_line(exc)
        if _DAMAGED.search(message) or _PARQUET.search(message):  # the engine's read error names no file: find it
            _raise_damaged(table, tables, storage_options, f"{engine}: {message}", exc)
        if re.search(r"not found|no such file", message, re.IGNORECASE):
            for dt in tables.values():  # a vacuumed version: say so, and when
                snap = snapshot_of(dt, uri=table, storage_options=storage_options)
                snap.check_files(snap.files)
        raise QueryError(f"{engine}: {message}{_hint(message, name)}") from exc
    logger.debug("%s: %d rows (%s)", engine, result.num_rows, "truncated" if truncated else "complete")
    return QueryResult(table=result, truncated=truncated, engine=engine, name=name, sql=rewritten,
                       versions={n: dt.version() for n, dt in tables.items()})


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
        if is_binary(t):
            column = summarize_binary(column)
        elif pa.types.is_string_view(t):
            column = column.cast(pa.string())
        elif (pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_time64(t)) and t.unit == "ns":
            column = column.cast(pa.string())  # Python's datetime has no nanoseconds (now() in DataFusion)
        columns.append(column)
        fields.append(pa.field(field.name, column.type, nullable=field.nullable))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
