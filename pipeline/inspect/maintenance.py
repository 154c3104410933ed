"""Keeping a table healthy: compact small files (``optimize``) and delete unreferenced ones (``vacuum``).

``optimize`` rewrites every split that has more data files than its size needs (one per
``target_file_bytes`` of image bytes, 128 MiB by default) into as few files as that allows,
in ``id`` order, with the table's own layout (rows per row group and codec read from the
Parquet footers), through the same writer as ingest (:mod:`idxlake.pipeline.ingest.delta_commit`).
deltalake's ``optimize.compact()`` is not used: on deltalake 1.6 it interleaves row groups
of the input files, scrambling the ``id`` order. The commit adds the new files and removes
exactly the compacted ones, both with ``dataChange=false`` (a concurrent append is kept),
and carries lineage ``{"operation": "optimize", ...}`` in ``userMetadata``. Content is
unchanged.

``vacuum`` wraps ``DeltaTable.vacuum``: files removed from the table more than the
retention ago (default: the table's ``delta.deletedFileRetentionDuration`` or 168 hours)
are deleted; shorter retentions are refused unless forced. Versions older than the
retention can no longer be read afterwards. With ``full``, files the log never referenced
(orphans of failed writes) and stale temporary log files of killed commits
(``_delta_log/<version>.json#<n>``, left by delta-rs' object store) are deleted too, but
never one younger than :data:`MIN_UNTRACKED_AGE_HOURS`, whatever the retention and
``force`` say: a running ingest or optimize writes its files before it commits them.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import pyarrow as pa

from idxlake.pipeline.inspect.retention import RETENTION_KEY, retention_hours
from idxlake.schemas import (
    SPLIT,
    CommitConflictError,
    DataFile,
    MaintenanceError,
    TableSnapshot,
    arrow_schema,
    open_table,
    pyarrow_filesystem,
    snapshot_of,
)

logger = logging.getLogger(__name__)

MIN_UNTRACKED_AGE_HOURS = 24
"""vacuum never deletes a file the log does not reference that is younger than this (``force`` cannot lower it)."""
_TEMP_LOG = re.compile(r"^(?:\d{20}\.(?:json|checkpoint\.parquet)|_last_checkpoint|_commit_[^/]*)#\d+$"
                       r"|^_commit_[^/]*\.tmp$")
"""Names of temporary files a killed delta-rs commit leaves in ``_delta_log`` (staged uploads ``NAME#N``)."""

_CODECS = {"LZ4": "LZ4_RAW", "LZ4_RAW": "LZ4_RAW", "ZSTD": "ZSTD", "SNAPPY": "SNAPPY", "UNCOMPRESSED": "UNCOMPRESSED"}


@dataclass(frozen=True)
class OptimizeResult:
    """What :func:`optimize` did.

    Attributes:
        table: Table URI.
        version_before: Version that was compacted.
        version: Version after the commit (equal to ``version_before`` when nothing was done).
        files_before: Live data files before, per split.
        files_after: Live data files after, per split.
        rows_rewritten: Rows copied into new files.
        seconds: Wall time.
    """

    table: str
    version_before: int
    version: int
    files_before: Mapping[str, int]
    files_after: Mapping[str, int]
    rows_rewritten: int = 0
    seconds: float = 0.0

    @property
    def compacted(self) -> list[str]:
        """Splits whose files were rewritten."""
        return [s for s, n in self.files_before.items() if self.files_after.get(s, 0) != n]


@dataclass(frozen=True)
class VacuumResult:
    """What :func:`vacuum` deleted (or would delete).

    Attributes:
        table: Table URI.
        files: Paths relative to the table root.
        dry_run: True when nothing was deleted.
        retain_hours: The retention used (``None``: the table's setting or 168 h).
    """

    table: str
    files: list[str] = field(default_factory=list)
    dry_run: bool = False
    retain_hours: int | None = None


def _layout(snap: TableSnapshot, files: Iterable[DataFile]) -> tuple[int, str]:
    """Rows per row group and codec of existing files (their largest group, the image codec)."""
    import pyarrow.parquet as pq

    rows, codec = 0, "LZ4_RAW"
    for data_file in files:
        md = pq.ParquetFile(snap.file_path(data_file), filesystem=snap.filesystem()).metadata
        for i in range(md.num_row_groups):
            group = md.row_group(i)
            rows = max(rows, group.num_rows)
            codec = _CODECS.get(group.column(group.num_columns - 1).compression.upper(), codec)
    return max(rows, 1), codec


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Re-cut batches into batches of exactly ``rows`` rows (the last may be shorter); copies each row once."""
    held = schema.empty_table()
    for batch in batches:
        held = pa.concat_tables([held, pa.Table.from_batches([pa.RecordBatch.from_arrays(batch.columns,
                                                                                          schema=schema)])])
        while held.num_rows >= rows:
            yield held.slice(0, rows).combine_chunks().to_batches()[0]
            held = held.slice(rows)
    if held.num_rows:
        yield held.combine_chunks().to_batches()[0]


def _vanished(snap: TableSnapshot, name: str) -> Exception:
    """A live file of the compacted version is gone: lost a race (the table moved on) or a damaged table."""
    from idxlake.schemas import DataCorruptionError

    latest = open_table(snap.uri, storage_options=snap.storage_options).version()
    if latest != snap.version:
        return CommitConflictError(
            f"{snap.uri}: data file {name} of version {snap.version} vanished while optimize read it (the table "
            f"moved on to version {latest} and a vacuum deleted it); nothing was committed, run optimize again")
    return DataCorruptionError(f"{snap.uri}@v{snap.version}: live data file {name} is missing; nothing was "
                               f"committed. Run `idxlake verify {snap.uri}`")


def _read_in_order(snap: TableSnapshot, files: list[DataFile], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    from idxlake.schemas import DataCorruptionError

    for data_file in files:
        try:
            parquet = pq.ParquetFile(snap.file_path(data_file), filesystem=snap.filesystem(),
                                     page_checksum_verification=True)
            yield from parquet.iter_batches(columns=schema.names, batch_size=8192)
        except FileNotFoundError as exc:
            raise _vanished(snap, data_file.path) from exc
        except (OSError, pa.ArrowException) as exc:
            raise DataCorruptionError(f"{snap.uri}@v{snap.version}: data file {data_file.path}: cannot be read "
                                      f"({exc}); run `idxlake verify {snap.uri}`") from exc


def optimize(table: str, *, target_file_bytes: int | None = None, compression_level: int | None = None,
             storage_options: Mapping[str, str] | None = None) -> OptimizeResult:
    """Compact every split that has more files than its size needs, keeping ``id`` order and content.

    Idempotent: a second run finds nothing to do and makes no commit.

    Args:
        table: Table path or URI.
        target_file_bytes: Roll to a new file after about this many uncompressed image bytes
            (default: the ingest writer's 128 MiB).
        compression_level: The level of the rewritten files' codec (the codec is the files' own).
            Parquet footers record the codec but not its level, so ``None`` writes the codec's
            default: give the ingest's ``compression_level`` again to keep an LZ4HC table small.
        storage_options: Object-store options.

    Returns:
        An :class:`OptimizeResult`.

    Raises:
        TableNotFoundError: no table.
        SchemaMismatchError: not an idxlake table.
        MaintenanceError: ``target_file_bytes`` below 1.
        IngestConfigError: a compression level the codec does not have.
    """
    from idxlake.pipeline.ingest.compression import check_compression
    from idxlake.pipeline.ingest.delta_commit import TARGET_FILE_BYTES, commit, file_schema, open_pending, write_split
    from idxlake.schemas.version import __version__

    if target_file_bytes is not None and target_file_bytes < 1:
        raise MaintenanceError(f"target file size must be >= 1 byte (--target-mb >= 1), got {target_file_bytes}")
    t0 = time.perf_counter()
    dt = open_table(table, storage_options=storage_options)
    snap = snapshot_of(dt, uri=table, storage_options=storage_options)
    target = target_file_bytes or TARGET_FILE_BYTES
    before = {s: len(snap.files_of([s])) for s in sorted({f.split for f in snap.files})}
    todo = [s for s, n in before.items()
            if n > max(1, math.ceil(sum(f.num_records for f in snap.files_of([s])) * snap.meta.record_nbytes / target))]
    if not todo:
        logger.info("%s: no split has more files than its size needs; nothing to compact", table)
        return OptimizeResult(table, snap.version, snap.version, before, before, 0, time.perf_counter() - t0)
    fschema = file_schema(snap.schema)
    rewritten = 0
    with open_pending(table, storage_options) as pending:
        for split in todo:
            files = sorted(snap.files_of([split]), key=lambda f: (f.min_id is None, f.min_id or 0, f.uri))
            try:
                row_group_rows, codec = _layout(snap, files)
            except FileNotFoundError as exc:
                raise _vanished(snap, str(exc.filename or exc)) from exc
            batches = _rebatch(_read_in_order(snap, files, fschema), row_group_rows, fschema)
            level = check_compression(codec, compression_level)
            write_split(pending, split, batches, file_schema=fschema, row_group_rows=row_group_rows,
                        codec=codec, compression_level=level, target_file_bytes=target)  # type: ignore[arg-type]
            rewritten += sum(f.num_records for f in files)
        lineage = {"idxlake_version": __version__, "operation": "optimize", "read_version": snap.version,
                   "files": {s: {"before": before[s],
                                 "after": sum(a.partition_values[SPLIT] == s for a in pending.actions)}
                             for s in todo}}
        # Replacing the compacted splits with a metadata change (revision + 1): a concurrent ingest
        # or optimize then fails with a commit conflict instead of interleaving files.
        meta = replace(snap.meta, revision=snap.meta.revision + 1)
        version = commit(table, dt, pending, schema=arrow_schema(meta), mode="replace", splits=todo,
                         storage_options=storage_options, name=None, description=meta.describe(), lineage=lineage)
    after_dt = open_table(table, version=version, storage_options=storage_options)
    after = snapshot_of(after_dt, uri=table, storage_options=storage_options)
    files_after = {s: len(after.files_of([s])) for s in sorted({f.split for f in after.files})}
    logger.info("%s: compacted %s at version %d", table, todo, after.version)
    return OptimizeResult(table, snap.version, after.version, before, files_after, rewritten,
                          time.perf_counter() - t0)


def vacuum(table: str, *, retain_hours: int | None = None, dry_run: bool = False, force: bool = False,
           full: bool = False, storage_options: Mapping[str, str] | None = None) -> VacuumResult:
    """Delete data files that no version within the retention needs.

    Args:
        table: Table path or URI.
        retain_hours: Keep files removed less than this many hours ago (default: the table's
            ``delta.deletedFileRetentionDuration``, else 168).
        dry_run: Only list the files.
        force: Allow a retention below the table's minimum (breaks time travel and readers
            still using older versions). Not needed for a ``dry_run``, which deletes nothing.
        full: Also delete files the log never referenced (orphans of failed writes) and stale
            temporary log files, when older than :data:`MIN_UNTRACKED_AGE_HOURS`.
        storage_options: Object-store options.

    Returns:
        A :class:`VacuumResult`.

    Raises:
        MaintenanceError: negative retention, or one below the minimum without ``force``.
    """
    from deltalake.exceptions import DeltaError

    if retain_hours is not None and retain_hours < 0:
        raise MaintenanceError(f"--retain-hours must be >= 0, got {retain_hours}")
    dt = open_table(table, storage_options=storage_options)
    needed = full and retain_hours is None  # --full deletes by the table's retention, which idxlake reads
    retention = retention_hours(dt.metadata().configuration, where=table) if needed else None
    try:
        # Removed files by the retention (lite mode touches only files the log removed); a dry run
        # deletes nothing, so it may list below the minimum retention without --force ...
        enforce = not (force or dry_run)
        files = set(dt.vacuum(retention_hours=retain_hours, dry_run=dry_run, enforce_retention_duration=enforce))
        if full:  # ... untracked ones only when older than the floor: a writer may be about to commit them
            kept = math.ceil(retention) if retention is not None else retain_hours or 0  # the table's, not 168 h
            floor = max(kept, MIN_UNTRACKED_AGE_HOURS)
            files |= set(dt.vacuum(retention_hours=floor, dry_run=dry_run, enforce_retention_duration=False,
                                   full=True))
    except DeltaError as exc:
        if "retention" in str(exc).lower():
            raise MaintenanceError(
                f"{table}: retention of {retain_hours} hours is below the table's minimum "
                f"({_minimum(dt, table)}, {RETENTION_KEY} or Delta's default); "
                "readers of older versions would lose their files. Pass --force to do it anyway") from exc
        raise
    root = pyarrow_filesystem(table, storage_options)[1].rstrip("/") + "/"
    files = {f.removeprefix(root).removeprefix("/" + root) for f in files}  # delta-rs: lite absolute, full relative
    if full:
        files |= set(stale_log_files(table, storage_options=storage_options, delete=not dry_run))
    logger.info("%s: vacuum %s %d files", table, "would delete" if dry_run else "deleted", len(files))
    return VacuumResult(table, sorted(files), dry_run, retain_hours)


def _minimum(dt: object, table: str) -> str:
    """The table's retention for a message (``"720 h"``), or what it says if idxlake cannot read it."""
    config = dt.metadata().configuration  # type: ignore[attr-defined]
    try:
        return f"{retention_hours(config, where=table):g} h"
    except MaintenanceError:
        return repr(config.get(RETENTION_KEY))


def stale_log_files(table: str, *, storage_options: Mapping[str, str] | None = None, delete: bool = False,
                    min_age_hours: float = MIN_UNTRACKED_AGE_HOURS) -> list[str]:
    """Temporary files of killed commits in ``_delta_log`` older than ``min_age_hours`` (deleted when asked).

    Returns:
        Their paths relative to the table root (``_delta_log/NAME``).
    """
    import pyarrow.fs as pafs

    fs, root = pyarrow_filesystem(table, storage_options)
    log = f"{root.rstrip('/')}/_delta_log"
    cutoff = time.time() - min_age_hours * 3600
    out = []
    for info in fs.get_file_info(pafs.FileSelector(log, allow_not_found=True)):
        if info.type != pafs.FileType.File or not _TEMP_LOG.match(info.base_name):
            continue
        if info.mtime is not None and info.mtime.timestamp() > cutoff:
            continue  # possibly a commit in flight
        if delete:
            try:
                fs.delete_file(info.path)
            except FileNotFoundError:
                continue
        out.append(f"_delta_log/{info.base_name}")
    return sorted(out)
