"""The two SQL engines of ``idxlake sql``, each made read-only and bounded by its own settings.

This module is the security boundary of ``idxlake sql`` (the text pass in
:mod:`idxlake.pipeline.inspect.sqltext` only words refusals kindly):

* ``datafusion``: the ``datafusion`` package's ``SessionContext`` with each table version
  registered as a ``DeltaTable`` provider, and every statement planned through
  ``sql_with_options`` with DDL, DML and statements disallowed, so ``CREATE [EXTERNAL] TABLE``,
  ``COPY ... TO``, ``INSERT``, ``SET`` and ``PREPARE`` are refused by DataFusion's planner, also
  inside ``EXPLAIN [ANALYZE]`` and CTEs. A greedy memory pool caps what operators may hold,
  and the disk manager is off: nothing spills, nothing is written.
* ``duckdb``: a throwaway in-memory DuckDB per statement whose only data are the Arrow
  datasets of the pinned versions, with file and network access off
  (``enable_external_access=false``), no extension install or autoload, no temporary
  directory, a ``memory_limit``, the configuration locked (``SET``/``PRAGMA`` refused) and the
  statement run inside ``BEGIN TRANSACTION READ ONLY``. DuckDB's own parser must also classify
  it as one SELECT or EXPLAIN.

Both stop a statement after ``timeout_s`` seconds and on Ctrl-C: it runs in a worker thread
that the calling thread supervises (:mod:`idxlake.pipeline.inspect.interrupts`); DuckDB is
interrupted, DataFusion's stream is dropped at its next poll. The rows collected into Python
count against the same memory limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idxlake.pipeline.inspect.interrupts import Expired, Stopped, supervise
from idxlake.schemas import QueryError, snapshot_of

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from deltalake import DeltaTable

DEFAULT_TIMEOUT_S = 60.0
"""Seconds a statement may run (``--timeout``)."""

DEFAULT_MEMORY_MB = 1024
"""MiB a statement may use in the engine, and again for its result in Python (``--memory-mb``)."""

BATCH_ROWS = 8192

DATAFUSION_GRACE_S = 0.5
"""Seconds a stopped DataFusion statement gets to reach its next poll before it is left running."""

BYTE_LENGTH = "byte_length"
"""DataFusion UDF: bytes of a binary value (``length(image)`` is rewritten to it)."""


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one statement.

    Attributes:
        timeout_s: Wall-clock seconds before the statement is cancelled.
        memory_mb: Engine memory (DataFusion pool, DuckDB ``memory_limit``) and the size of
            the result held in Python, each, in MiB.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= 86400):
            raise QueryError(f"--timeout must be between 0 and 86400 seconds, got {self.timeout_s!r}")
        mb = self.memory_mb
        if isinstance(mb, bool) or not isinstance(mb, int) or not 16 <= mb <= 1 << 20:
            raise QueryError(f"--memory-mb must be an integer from 16 to 1048576, got {self.memory_mb!r}")

    def timeout_message(self) -> str:
        """The one line a cancelled statement reports."""
        return (f"query cancelled after {self.timeout_s:g} s (--timeout {self.timeout_s:g}); narrow it "
                "(WHERE, LIMIT, fewer joins) or raise --timeout")

    def memory_message(self, detail: str = "") -> str:
        """The one line a statement over the memory limit reports."""
        return (f"query needs more than {self.memory_mb} MiB (--memory-mb {self.memory_mb})"
                + (f": {detail}" if detail else "") + "; narrow it (WHERE, LIMIT, fewer columns) or raise --memory-mb")


@dataclass
class Running:
    """A statement being executed: its result schema and batches."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]


@dataclass
class Session:
    """An engine session over the registered tables.

    Attributes:
        run: Plans and starts one statement.
        interrupt: Stops the running statement from another thread (``None``: the engine only
            stops between result batches).
        close: Releases the session once the statement's thread ended.
        grace_s: Seconds to wait for a stopped statement (``None``: until it ends).
    """

    run: Callable[[str], Running]
    interrupt: Callable[[], None] | None = None
    close: Callable[[], None] | None = None
    grace_s: float | None = None


def binary_columns(schema: pa.Schema) -> set[str]:
    """Lower-cased names of the binary columns of ``schema``."""
    return {f.name.lower() for f in schema if is_binary(f.type)}


def is_binary(t: pa.DataType) -> bool:
    """True for binary, large binary, binary view and fixed-size binary types."""
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _byte_length(values: pa.Array) -> pa.Array:
    """Bytes per value; binary views carry the length in the first 4 bytes of each 16-byte view."""
    if pa.types.is_binary_view(values.type):
        views = np.frombuffer(values.buffers()[1], dtype=np.int32).reshape(-1, 4)
        lengths = views[values.offset:values.offset + len(values), 0].astype(np.int64)
        mask = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
        return pa.array(lengths, mask=mask)
    return pc.binary_length(values).cast(pa.int64())


def open_datafusion(tables: Mapping[str, DeltaTable], limits: Limits, *, uri: str = "",
                    storage_options: Mapping[str, str] | None = None) -> Session:
    """A read-only DataFusion session over ``tables`` (name -> ``DeltaTable`` of a pinned version).

    A local table is registered as deltalake's Delta table provider. The provider cannot reach
    an object store through the FFI boundary (deltalake 1.6 with datafusion 55: "No suitable
    object store found for s3://..."), so a table on an object store is registered as the
    pyarrow dataset of the version's live files instead (read with pyarrow's filesystem, as
    for DuckDB).
    """
    from urllib.parse import urlparse

    from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext, SQLOptions, udf

    runtime = RuntimeEnvBuilder().with_disk_manager_disabled().with_greedy_memory_pool(limits.memory_mb << 20)
    ctx = SessionContext(SessionConfig().with_information_schema(True), runtime)
    local = urlparse(uri).scheme in ("", "file")
    for name, table in tables.items():
        if local:
            ctx.register_table(name, table)
        else:
            ctx.register_dataset(name, snapshot_of(table, uri=uri, storage_options=storage_options).dataset())
    ctx.register_udf(udf(_byte_length, [pa.binary_view()], pa.int64(), "immutable", BYTE_LENGTH))
    options = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)

    def run(sql: str) -> Running:
        df = ctx.sql_with_options(sql, options)
        stream = df.execute_stream()
        return Running(df.schema(), (b.to_pyarrow() for b in stream))

    return Session(run, grace_s=DATAFUSION_GRACE_S)


def open_duckdb(tables: Mapping[str, DeltaTable], limits: Limits, *, uri: str,
                storage_options: Mapping[str, str] | None) -> Session:
    """A read-only, sandboxed in-memory DuckDB over the live files of ``tables``."""
    from idxlake.schemas.extras import require

    duckdb = require("duckdb", purpose="the DuckDB engine (--engine duckdb)")
    datasets = {name: snapshot_of(dt, uri=uri, storage_options=storage_options).dataset()
                for name, dt in tables.items()}
    con = duckdb.connect(":memory:", config={
        "enable_external_access": False, "autoinstall_known_extensions": False,
        "autoload_known_extensions": False, "allow_community_extensions": False,
        "allow_unsigned_extensions": False, "temp_directory": "", "memory_limit": f"{limits.memory_mb}MB",
        "lock_configuration": True})
    for name, dataset in datasets.items():
        con.register(name, dataset)
    con.execute("BEGIN TRANSACTION READ ONLY")
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

    def run(sql: str) -> Running:
        statements = duckdb.extract_statements(sql)
        kinds = [s.type.name for s in statements if s.type not in allowed]
        if len(statements) != 1 or kinds:
            raise QueryError(f"duckdb parses this as {', '.join(kinds) or f'{len(statements)} statements'}: "
                             "the table is read-only through `idxlake sql`; only one SELECT/EXPLAIN runs")
        reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
        return Running(reader.schema, iter(reader))

    return Session(run, con.interrupt, con.close)


def is_memory_error(message: str) -> bool:
    """True for the engines' out-of-memory messages."""
    return "Resources exhausted" in message or "Out of Memory" in message


def _short(message: str) -> str:
    """The part of an engine's out-of-memory message that says what failed (not its config advice)."""
    if "Resources exhausted: " in message:  # DataFusion: "... caused by Resources exhausted: Failed to ... - ..."
        message = "DataFusion: " + message.split("Resources exhausted: ", 1)[1].split(" - ", 1)[0]
    for cut in (" Database is launched", " Possible solutions"):
        message = message.split(cut)[0]
    return message if len(message) <= 300 else message[:297] + "..."


def collect(session: Session, sql: str, limits: Limits, *, max_rows: int | None) -> tuple[pa.Table, bool]:
    """Run a statement under ``limits`` and gather its rows.

    Args:
        session: The engine session.
        sql: The statement.
        limits: Time and memory bounds.
        max_rows: Stop after this many rows (``None``: all).

    Returns:
        ``(rows, truncated)``.

    Raises:
        QueryError: over the time or memory limit (one line), or the engine's own refusal.
    """
    try:
        return supervise(lambda stop: _gather(session, sql, limits, max_rows=max_rows, stop=stop),
                         timeout_s=limits.timeout_s, interrupt=session.interrupt, grace_s=session.grace_s)
    except Expired:
        raise QueryError(limits.timeout_message()) from None
    finally:
        if session.close is not None:
            try:
                session.close()  # an unclosed DuckDB connection aborted the process at exit (SIGABRT) after errors
            except Exception:  # an interrupted statement's result, still referenced by its error's frames
                import gc

                gc.collect()
                try:
                    session.close()
                except Exception as exc:  # never in place of the statement's own error
                    logger.debug("closing the engine session failed: %s", exc)


def _gather(session: Session, sql: str, limits: Limits, *, max_rows: int | None,
            stop: threading.Event) -> tuple[pa.Table, bool]:
    budget = limits.memory_mb << 20
    batches: list[pa.RecordBatch] = []
    rows, size, truncated = 0, 0, False
    try:
        running = session.run(sql)
        for batch in running.batches:
            if stop.is_set():  # the waiter gave up (deadline, Ctrl-C): drop the stream, cancelling its tasks
                raise Stopped()
            if max_rows is not None and rows + batch.num_rows > max_rows:
                batches.append(batch.slice(0, max_rows - rows))
                truncated = True
                break
            size += batch.nbytes
            if size > budget:
                raise QueryError(limits.memory_message("the result alone is larger"))
            batches.append(batch)
            rows += batch.num_rows
        schema = running.schema
    except (QueryError, Stopped):
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())
        if not stop.is_set() and is_memory_error(message):
            raise QueryError(limits.memory_message(_short(message))) from exc
        raise
    finally:  # the error's traceback keeps this frame: without the reader, so the connection can close
        running = None  # type: ignore[assignment]
    if batches and batches[0].schema != schema:
        schema = batches[0].schema
    return pa.Table.from_batches(batches, schema=schema), truncated
