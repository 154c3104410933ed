"""``idxlake verify``: the table's fsck, for one pinned version.

Checks, in order, and reports every failure with the file it concerns:

1. ``files``: every live data file of the version exists, with the size the log records;
2. ``footers``: every Parquet footer reads;
3. ``row_counts``: each footer's row count equals the log's ``numRecords``, and each split's
   total equals the table metadata;
4. ``pages``: every page of every column is read and its CRC checked (idxlake writes page
   checksums; a page written without one is decoded but cannot be checked);
5. ``lineage``: per split, the sha256 of the IDX bytes the table holds (what ``export``
   would write) equals the hash the ingest recorded for its source files. A split built by
   appends has no single source to compare with; it is reported as not comparable.

Orphan files (in the table folder, never referenced by the log) and temporary log files
of killed commits are listed as housekeeping for ``idxlake vacuum --full``: they do not
affect any version's readability and do not fail verification.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from idxlake.pipeline.export import idx_sha256, lineage_sha256, ordered_row_groups
from idxlake.schemas import IMAGE, LABEL, DataFile, IdxlakeError, TableSnapshot, open_table, snapshot_of

logger = logging.getLogger(__name__)

CHECKS: tuple[str, ...] = ("files", "footers", "row_counts", "pages", "lineage")
CHECKSUMMING_WRITER = "parquet-cpp-arrow"
"""``created_by`` of the files idxlake writes (pyarrow, with page CRCs); files of other writers (delta-rs'
``optimize.compact()``, Spark) are decoded but have no page checksums to verify."""
"""The checks of :func:`verify_table`, in the order they run."""


@dataclass
class VerifyReport:
    """What :func:`verify_table` found.

    Attributes:
        table: Table URI.
        version: The verified version.
        files: Live data files.
        rows: Rows the log records.
        problems: One line per failure (check, file, what was found), empty when all holds.
        failed: Names of the checks that failed.
        notes: Facts that are not failures (e.g. a split that cannot be compared with a lineage).
        orphans: Files under the table the log never referenced (relative paths).
        stale_log_files: Temporary files of killed commits in ``_delta_log``.
    """

    table: str
    version: int
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    stale_log_files: list[str] = field(default_factory=list)
    not_compared: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return not self.problems

    @property
    def complete(self) -> bool:
        """True when every check covered everything: no split left uncompared, no page without a checksum."""
        return not self.not_compared

    def skip(self, check: str, where: str) -> None:
        """Record that ``check`` could not compare ``where`` (it is neither a failure nor verified)."""
        self.not_compared.setdefault(check, []).append(where)

    def fail(self, check: str, where: str, what: str) -> None:
        """Record a failure of ``check`` concerning ``where`` (a file or a split)."""
        self.failed.add(check)
        self.problems.append(f"{check}: {where}: {what}")

    def to_json(self) -> dict[str, Any]:
        """The stable JSON document of ``idxlake verify --json``."""
        return {"table": self.table, "version": self.version, "ok": self.ok, "files": self.files, "rows": self.rows,
                "checks": {c: False if c in self.failed else None if c in self.not_compared else True for c in CHECKS},
                "complete": self.complete, "not_compared": self.not_compared, "problems": self.problems,
                "notes": self.notes, "orphans": self.orphans, "stale_log_files": self.stale_log_files}


def _page_errors(snap: TableSnapshot, data_file: DataFile, pf: pq.ParquetFile) -> str | None:
    """Read every row group of a file (all columns, CRC checked); the first error, or ``None``."""
    for i in range(pf.metadata.num_row_groups):
        try:
            pf.read_row_group(i, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            return f"row group {i}: {exc}"
    return None


def first_damaged_file(snap: TableSnapshot) -> tuple[str, str] | None:
    """``(file, what failed)`` for the first live file of ``snap`` whose footer or pages do not read, else ``None``.

    Reads every page (CRC checked): for locating the file behind an engine's read error, which
    does not name it.
    """
    fs = snap.filesystem()
    for data_file in snap.files:
        try:
            pf = pq.ParquetFile(fs.open_input_file(snap.file_path(data_file)), page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            return data_file.path or data_file.uri, f"footer does not read: {exc}"
        error = _page_errors(snap, data_file, pf)
        if error:
            return data_file.path or data_file.uri, error
    return None


def _check_files(snap: TableSnapshot, report: VerifyReport) -> set[str]:
    """Checks 1-4 per file; returns the splits with a file that is missing or does not read."""
    fs = snap.filesystem()
    damaged: set[str] = set()
    infos = fs.get_file_info([snap.file_path(f) for f in snap.files])
    per_split: dict[str, int] = {}
    for data_file, info in zip(snap.files, infos, strict=True):
        name = data_file.path or data_file.uri
        per_split[data_file.split] = per_split.get(data_file.split, 0) + data_file.num_records
        if info.type == pafs.FileType.NotFound:
            report.fail("files", name, f"missing (the log of version {snap.version} references it)")
            damaged.add(data_file.split)
            continue
        if info.size != data_file.size:
            report.fail("files", name, f"is {info.size} bytes, the log records {data_file.size}")
        try:
            pf = pq.ParquetFile(fs.open_input_file(snap.file_path(data_file)), page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            report.fail("footers", name, f"footer does not read: {exc}")
            damaged.add(data_file.split)
            continue
        if pf.metadata.num_rows != data_file.num_records:
            report.fail("row_counts", name, f"holds {pf.metadata.num_rows} rows, the log records "
                                            f"{data_file.num_records}")
        error = _page_errors(snap, data_file, pf)
        if error:
            report.fail("pages", name, error)
            damaged.add(data_file.split)
        elif not (pf.metadata.created_by or "").startswith(CHECKSUMMING_WRITER):
            report.skip("pages", f"{name} (written by {pf.metadata.created_by or 'an unknown writer'}: decoded, "
                                 "but its pages carry no checksums idxlake wrote)")
    for split, meta in sorted(snap.meta.splits.items()):
        if per_split.get(split, 0) != meta.rows:
            report.fail("row_counts", f"split {split!r}", f"the log's files hold {per_split.get(split, 0)} rows, "
                                                          f"the table metadata says {meta.rows}")
    return damaged


def _check_lineage(snap: TableSnapshot, report: VerifyReport, damaged: set[str]) -> None:
    for split in sorted(snap.meta.splits):
        expected = lineage_sha256(snap, split)
        if split in damaged:
            report.skip("lineage", f"split {split!r} (its files are damaged)")
            continue
        if expected is None:
            n = len(snap.meta.splits[split].sources) // 2
            report.skip("lineage", f"split {split!r} ({n} ingested source pairs, appends: no single sha256)")
            continue
        try:
            groups = ordered_row_groups(snap, split)
            got = (idx_sha256(snap, groups, IMAGE), idx_sha256(snap, groups, LABEL))
        except (IdxlakeError, OSError, pa.ArrowException) as exc:
            report.fail("lineage", f"split {split!r}", str(exc))
            continue
        for role, have, want in (("images", got[0], expected[0]), ("labels", got[1], expected[1])):
            if have != want:
                report.fail("lineage", f"split {split!r} {role}",
                            f"sha256 of the stored payload is {have}, the ingest recorded {want}")


def _housekeeping(uri: str, report: VerifyReport, storage_options: Mapping[str, str] | None) -> None:
    from idxlake.pipeline.inspect.maintenance import stale_log_files

    latest = open_table(uri, storage_options=storage_options)
    every = set(latest.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True))
    retired = set(latest.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False))
    live = set(pa.table(latest.get_add_actions(flatten=True)).column("path").to_pylist())
    folders = {p.rsplit("/", i)[0] for p in every | live for i in range(1, p.count("/") + 1)}
    # object stores list the folder markers pyarrow leaves ("", "split=train"): they are not files
    report.orphans = sorted(p for p in every - retired if p and p not in folders)
    report.stale_log_files = stale_log_files(uri, storage_options=storage_options, min_age_hours=0)


def verify_table(table: str, *, version: int | None = None,
                 storage_options: Mapping[str, str] | None = None) -> VerifyReport:
    """Check that a version of a table reads back exactly as it was ingested.

    Args:
        table: Table path or URI.
        version: Version to verify; the latest when ``None``.
        storage_options: Object-store options.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True only when every check held.

    Raises:
        TableNotFoundError: no table or version.
        SchemaMismatchError: not an idxlake table.
    """
    dt = open_table(table, version=version, storage_options=storage_options)
    snap = snapshot_of(dt, uri=table, storage_options=storage_options)
    report = VerifyReport(table, snap.version, len(snap.files), sum(f.num_records for f in snap.files))
    damaged = _check_files(snap, report)
    _check_lineage(snap, report, damaged)
    _housekeeping(table, report, storage_options)
    logger.info("%s@v%d: verify %s (%d problems)", table, snap.version, "ok" if report.ok else "FAILED",
                len(report.problems))
    return report
