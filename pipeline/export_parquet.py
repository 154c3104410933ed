"""Plain-Parquet snapshot of one table version: for readers without Delta support.

A Delta table directory also holds the files of retired versions: ``spark.read.parquet(dir)``
or ``pandas.read_parquet(dir)`` on it read them too (280,000 rows where the live version holds
140,000 after one replace) and lose the field metadata. :func:`export_parquet` writes only the
live rows of one pinned version, with the same columns (``split`` included as a real column),
the table's Arrow schema and field metadata, and the same row-group layout: one output file per
live data file, one output row group per input row group, copied in order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from idxlake.schemas import (
    ID,
    LABEL,
    SPLIT,
    DataCorruptionError,
    DataFile,
    SchemaMismatchError,
    TableExistsError,
    TableSnapshot,
    pyarrow_filesystem,
    snapshot,
)
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)

_CODECS = {"LZ4": "lz4", "LZ4_RAW": "lz4", "ZSTD": "zstd", "SNAPPY": "snappy", "UNCOMPRESSED": "none",
           "GZIP": "gzip", "BROTLI": "brotli"}
"""Parquet footer codec name -> pyarrow writer codec (the footer says ``UNCOMPRESSED``, the writer wants ``none``)."""


@dataclass(frozen=True)
class ParquetExport:
    """The outcome of :func:`export_parquet`.

    Attributes:
        table: The table as given.
        version: The version exported.
        out: Output directory (URI or path) as given.
        files: Output file paths, in the table's file order.
        rows: Rows per split.
        row_groups: Row groups written.
    """

    table: str
    version: int
    out: str
    files: tuple[str, ...]
    rows: Mapping[str, int]
    row_groups: int


def export_parquet(table: str, out: str, *, splits: list[str] | None = None, version: int | None = None,
                   as_of: Timestamp | None = None, storage_options: Mapping[str, str] | None = None,
                   out_storage_options: Mapping[str, str] | None = None) -> ParquetExport:
    """Write the live rows of one version as plain Parquet files under ``out``.

    Args:
        table: Table path or URI.
        out: Output directory (local path or any supported URI); must not hold files yet.
        splits: Splits to export (default: all).
        version: Version to export; latest when ``None``.
        as_of: Export the version current at this time instead (see :func:`idxlake.schemas.snapshot`).
        storage_options: Options for the table's store.
        out_storage_options: Options for ``out``'s store.

    Returns:
        A :class:`ParquetExport`.

    Raises:
        TableExistsError: ``out`` already holds files.
        TableNotFoundError: no table or version.
    """
    snap = snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
    chosen = snap.files_of(splits)
    missing = sorted(set(splits or ()) - {f.split for f in snap.files})
    if missing:
        raise SchemaMismatchError(f"{table}: no split(s) {missing}; the table has {sorted(snap.meta.splits)}")
    fs, root = pyarrow_filesystem(out, out_storage_options)
    root = root.rstrip("/")
    existing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    if any(i.type == pafs.FileType.File for i in existing):
        raise TableExistsError(f"{out}: already holds files; export into a new or empty directory")
    fs.create_dir(root, recursive=True)
    schema = snap.schema
    files: list[str] = []
    rows, groups = dict.fromkeys(sorted({f.split for f in chosen}), 0), 0
    try:
        for index, data_file in enumerate(chosen):
            path = f"{root}/{data_file.split or 'all'}-{index:05d}.parquet"
            files.append(path)
            copied_groups, copied_rows = _copy_file(snap, data_file, fs, path, schema)
            groups += copied_groups
            rows[data_file.split] += copied_rows
    except BaseException:  # nothing half-written is kept: a reader would take it for the snapshot
        for path in files:
            with contextlib.suppress(OSError):
                fs.delete_file(path)
        raise
    logger.info("%s@v%d: %d rows in %d files exported as plain Parquet to %s", table, snap.version,
                sum(rows.values()), len(files), out)
    return ParquetExport(table, snap.version, out, tuple(files), rows, groups)


def _copy_file(snap: TableSnapshot, data_file: DataFile, fs: pafs.FileSystem, path: str,
               schema: pa.Schema) -> tuple[int, int]:
    """Copy one live data file to ``path`` row group by row group, every page CRC-checked on read and
    checksummed on write; returns (row groups, rows) written.

    Raises:
        DataCorruptionError: a page checksum failed or the file does not read (naming table, version, file).
    """
    where = f"{snap.uri}@v{snap.version}: data file {data_file.path}"
    rg, rows = -1, 0
    try:
        source = pq.ParquetFile(snap.filesystem().open_input_file(snap.file_path(data_file)),
                                page_checksum_verification=True)
        md = source.metadata
        codec = _CODECS.get(md.row_group(0).column(0).compression.upper(), "zstd") if md.num_row_groups else "zstd"
        with fs.open_output_stream(path) as sink, pq.ParquetWriter(
                sink, schema, compression=codec, use_dictionary=[LABEL, SPLIT], write_page_checksum=True,
                write_statistics=[ID, LABEL, SPLIT], store_schema=True) as writer:
            for rg in range(md.num_row_groups):
                part = source.read_row_group(rg, columns=[c for c in schema.names if c != SPLIT])
                columns = [pa.repeat(pa.scalar(data_file.split, schema.field(SPLIT).type), part.num_rows)
                           if name == SPLIT else part.column(name) for name in schema.names]
                writer.write_table(pa.Table.from_arrays(columns, names=schema.names).cast(schema),
                                   row_group_size=max(part.num_rows, 1))
                rows += part.num_rows
        return int(md.num_row_groups), rows
    except FileNotFoundError:
        snap.check_files([data_file])  # a vacuumed version says so, and when
        raise
    except (OSError, pa.ArrowException) as exc:
        at = f" row group {rg}" if rg >= 0 else ""
        raise DataCorruptionError(f"{where}{at} cannot be read: {exc}; nothing was kept. "
                                  f"Run `idxlake verify {snap.uri}`") from exc
