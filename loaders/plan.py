"""Plan an epoch's units from a pinned snapshot: the Delta log and the Parquet footers.

A :class:`Unit` is one Parquet row group (optionally a row selection within it).
Without a filter the plan needs no data scan: the live files come from the Delta log
(:func:`idxlake.schemas.snapshot`), their row groups and row counts from the footers. With a
filter, row groups are first pruned by their ``id``/``label`` statistics and the
``split`` partition, then the small filter columns of the remaining groups are read
to know the exact selection (needed to give every rank the same number of batches).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from idxlake.loaders.filters import FILTER_COLUMNS, as_expression
from idxlake.schemas import (
    ID,
    IMAGE,
    LABEL,
    SPLIT,
    DataCorruptionError,
    DataFile,
    LoaderConfigError,
    MissingDataFileError,
    SchemaMismatchError,
    TableMeta,
    TableSnapshot,
)

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS: tuple[str, ...] = (IMAGE, LABEL, ID)
"""Columns a loader can yield."""
PAGE_CHECKSUMS = True
"""Verify the CRC of every Parquet page read (idxlake writes them); ``benchmarks/bench_loader.py`` measures the cost."""


@dataclass(frozen=True, eq=False)
class Unit:
    """One row group of one live file, possibly restricted to some of its rows.

    Attributes:
        file: Index into :attr:`Plan.files`.
        row_group: Row-group index within the file.
        num_rows: Rows stored in the row group.
        rows: Selected row indices within the group (sorted), or ``None`` for all rows.
    """

    file: int
    row_group: int
    num_rows: int
    rows: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Selected rows."""
        return self.num_rows if self.rows is None else len(self.rows)


@dataclass(frozen=True, eq=False)
class Plan:
    """What an epoch reads: units over the live files of one pinned version.

    Attributes:
        snapshot: The pinned table version.
        files: Data files the units refer to.
        units: Units in plan order (file, then row group).
        columns: Columns to read and yield (projection).
        splits: Splits selected (``None``: all).
        filter: The filter as given (for messages), or ``None``.
    """

    snapshot: TableSnapshot
    files: tuple[DataFile, ...]
    units: tuple[Unit, ...]
    columns: tuple[str, ...]
    splits: tuple[str, ...] | None = None
    filter: str | None = None

    @property
    def num_rows(self) -> int:
        """Rows selected."""
        return sum(u.count for u in self.units)

    @property
    def unit_rows(self) -> np.ndarray:
        """Selected rows of each unit."""
        return np.array([u.count for u in self.units], dtype=np.int64)

    def describe(self) -> str:
        """``table@vN split=... filter=...`` for messages."""
        parts = [f"{self.snapshot.uri}@v{self.snapshot.version}"]
        if self.splits is not None:
            parts.append(f"split={list(self.splits)}")
        if self.filter is not None:
            parts.append(f"filter={self.filter!r}")
        return " ".join(parts)


def missing_file_error(snapshot: TableSnapshot, data_file: DataFile) -> MissingDataFileError:
    """The error for a live file of the pinned version that is gone."""
    return MissingDataFileError(
        f"{snapshot.uri}: data file {data_file.uri} of pinned version {snapshot.version} is missing "
        "(vacuumed or deleted?); read a newer version or restore the file")


def corrupt_file_error(snapshot: TableSnapshot, data_file: DataFile, exc: BaseException,
                       where: str = "") -> DataCorruptionError:
    """The error for a live file that does not read back (bad footer, page checksum, codec)."""
    return DataCorruptionError(
        f"{snapshot.uri}@v{snapshot.version}: data file {data_file.path or data_file.uri}{where} cannot be read: "
        f"{exc}; run `idxlake verify {snapshot.uri}` and re-ingest the split")


def open_parquet(snapshot: TableSnapshot, data_file: DataFile) -> pq.ParquetFile:
    """Open a live file with pyarrow (never deltalake: this runs in DataLoader workers too); every
    page read from it has its CRC checked (:data:`PAGE_CHECKSUMS`).

    Raises:
        MissingDataFileError: the file is gone.
        DataCorruptionError: its footer does not read.
    """
    return open_source(snapshot, data_file)[0]


def open_source(snapshot: TableSnapshot, data_file: DataFile) -> tuple[pq.ParquetFile, pa.NativeFile]:
    """:func:`open_parquet`, and the open file under it (for reads of raw page bytes: ``loaders/pages.py``)."""
    fs = snapshot.filesystem()
    path = snapshot.file_path(data_file)
    try:
        source = fs.open_input_file(path)
        return pq.ParquetFile(source, page_checksum_verification=PAGE_CHECKSUMS), source
    except (FileNotFoundError, OSError, pa.ArrowException) as exc:
        try:
            gone = fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:  # pragma: no cover - storage unreachable: report the original error
            gone = False
        if gone or isinstance(exc, FileNotFoundError):
            raise missing_file_error(snapshot, data_file) from exc
        if isinstance(exc, pa.ArrowInvalid):  # a damaged footer ("Parquet magic bytes not found", ...)
            raise corrupt_file_error(snapshot, data_file, exc) from exc
        raise


def check_file_schema(schema: pa.Schema, snapshot: TableSnapshot, data_file: DataFile) -> None:
    """Check a data file holds the contract's columns in readable types.

    Raises:
        SchemaMismatchError: naming the file, what was found and what is expected.
    """
    problems = []
    for name, ok, want in ((IMAGE, lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
                           (LABEL, lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "integer"),
                           (ID, pa.types.is_integer, "int64")):
        if name not in schema.names:
            problems.append(f"missing column {name!r} (expected {want})")
        elif not ok(schema.field(name).type):
            problems.append(f"column {name!r} is {schema.field(name).type}, expected {want}")
    if problems:
        raise SchemaMismatchError(f"{snapshot.uri}@v{snapshot.version}: data file {data_file.uri}: "
                                  + "; ".join(problems) + f" (found columns {schema.names})")


def _splits(snapshot: TableSnapshot, split: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if split is None:
        return None
    splits = (split,) if isinstance(split, str) else tuple(split)
    counts: dict[str, int] = {}
    for f in snapshot.files:
        counts[f.split] = counts.get(f.split, 0) + f.num_records
    for s in splits:
        if not counts.get(s):
            have = ", ".join(f"{k} ({v} rows)" for k, v in sorted(counts.items()) if v) or "none"
            raise LoaderConfigError(f"{snapshot.uri}@v{snapshot.version}: split {s!r} has no rows; "
                                    f"splits with rows: {have}")
    return splits


def build_plan(snapshot: TableSnapshot, *, split: str | Sequence[str] | None = None,
               filter: str | pads.Expression | None = None,
               columns: Sequence[str] = OUTPUT_COLUMNS) -> Plan:
    """Plan the units of a selection.

    Args:
        snapshot: Pinned table version.
        split: Split name(s) to read; ``None`` for all.
        filter: Row filter (see :mod:`idxlake.loaders.filters`); ``None`` for none.
        columns: Columns to yield, a subset of :data:`OUTPUT_COLUMNS`.

    Raises:
        LoaderConfigError: unknown column, unknown/empty split, bad filter, empty selection.
        MissingDataFileError: a live file of the version is gone.
        SchemaMismatchError: a data file does not follow the contract.
    """
    columns = tuple(columns)
    unknown = [c for c in columns if c not in OUTPUT_COLUMNS]
    if unknown or not columns or len(set(columns)) != len(columns):
        raise LoaderConfigError(f"{snapshot.uri}: columns {list(columns)}: "
                                + (f"unknown column(s) {unknown}; " if unknown else "")
                                + f"choose distinct columns among {list(OUTPUT_COLUMNS)}")
    splits = _splits(snapshot, split)
    expr = None
    if filter is not None:
        filter_schema = pa.schema([snapshot.schema.field(c) for c in FILTER_COLUMNS])
        expr = as_expression(filter, filter_schema)
    files = snapshot.files_of(splits)
    units: list[Unit] = []
    scanned = 0
    for index, data_file in enumerate(files):
        pf = open_parquet(snapshot, data_file)
        check_file_schema(pf.schema_arrow, snapshot, data_file)
        md = pf.metadata
        groups: Sequence[int] = range(md.num_row_groups)
        if expr is not None:
            fragment = pads.ParquetFileFormat().make_fragment(
                snapshot.file_path(data_file), filesystem=snapshot.filesystem(),
                partition_expression=pads.field(SPLIT) == data_file.split)
            groups = [rg.id for frag in fragment.split_by_row_group(filter=expr, schema=snapshot.schema)
                      for rg in frag.row_groups]
        for rg in groups:
            n = md.row_group(rg).num_rows
            rows = None
            if expr is not None:
                try:
                    rows = _select(pf, rg, n, data_file.split, expr)
                except (OSError, pa.ArrowException) as exc:
                    raise corrupt_file_error(snapshot, data_file, exc, f" row group {rg}") from exc
                scanned += n
                if len(rows) == n:
                    rows = None
                elif not len(rows):
                    continue
            if n:
                units.append(Unit(index, rg, n, rows))
    plan = Plan(snapshot, files, tuple(units), columns, splits, None if filter is None else str(filter))
    if expr is not None:
        logger.debug("%s: filter read %d rows of id/label, selected %d", plan.describe(), scanned, plan.num_rows)
    if not plan.num_rows:
        raise LoaderConfigError(f"{plan.describe()}: the selection has no rows"
                                + ("; the filter matches nothing" if filter is not None else ""))
    return plan


def _select(pf: pq.ParquetFile, row_group: int, n: int, split: str, expr: pads.Expression) -> np.ndarray:
    table = pf.read_row_group(row_group, columns=[ID, LABEL], use_threads=False)
    table = table.append_column(SPLIT, pa.repeat(pa.scalar(split, pa.string()), n))
    table = table.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    return table.filter(expr).column("__row").to_numpy().astype(np.int64, copy=True)  # writable


class PinnedPlan:
    """What every idxlake dataset says about the version it reads, from its :class:`Plan`."""

    plan: Plan

    @property
    def snapshot(self) -> TableSnapshot:
        """The pinned table version."""
        return self.plan.snapshot

    @property
    def version(self) -> int:
        """The pinned Delta version."""
        return self.plan.snapshot.version

    @property
    def meta(self) -> TableMeta:
        """The table's metadata (shape, dtype, class names, statistics)."""
        return self.plan.snapshot.meta
