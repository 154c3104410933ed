"""The batch ETL job: IDX files -> validated Arrow record batches -> one atomic Delta commit.

One decoding pass per file: chunks are decompressed, validated and hashed on a
background thread while the main thread folds them into the split statistics and
writes Parquet row groups (:mod:`idxlake.pipeline.ingest.delta_commit`). When every file has been read
to its end (gzip CRC checked, no byte missing or extra), the dataset is identified
from the hashes and ONE Delta commit adds the files together with the new table
metadata and the lineage. Any failure (a bad file found late, a full disk, Ctrl-C)
deletes the files written so far and leaves the table at its previous version.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from idxlake.pipeline.idx.read import IdxFile
from idxlake.pipeline.ingest.compression import Codec, check_compression
from idxlake.pipeline.ingest.delta_commit import (
    commit,
    file_schema,
    image_array,
    open_pending,
    write_split,
)
from idxlake.pipeline.ingest.duplicates import (
    already_holds,
    changed_elsewhere,
    refuse_duplicate,
    refuse_duplicate_early,
    validate_fully,
)
from idxlake.pipeline.ingest.landing import TXN_KEY
from idxlake.pipeline.ingest.prefetch import prefetch
from idxlake.pipeline.ingest.scan import ScannedSplit, SplitAccumulator, check_fits, identify, named_spec, pixel_scale
from idxlake.pipeline.ingest.sources import SplitSource, bundled_mnist, discover, source_options
from idxlake.schemas import (
    DATASETS,
    GENERIC,
    LABEL,
    PARTITION_BY,
    ROW_GROUP_ROWS,
    SchemaMismatchError,
    SourceError,
    SplitMeta,
    TableExistsError,
    TableMeta,
    TableNotFoundError,
    arrow_schema,
    get_dataset,
    meta_from_schema,
    open_table,
    unsupported_features,
)
from idxlake.schemas.version import __version__

logger = logging.getLogger(__name__)

IngestMode = Literal["replace", "append", "overwrite", "error"]
DEFAULT_CODEC: Codec = "LZ4_RAW"
"""Chosen with benchmarks/bench_loader.py: LZ4 decodes faster than ZSTD for a modest size cost."""
MAX_ROW_GROUP_BYTES = 32 << 20
"""Row groups (and decoded chunks) are capped at this many image bytes: memory stays bounded."""
MAX_RECORD_BYTES = 1 << 31
"""A binary value (one record) must fit Arrow/Parquet 32-bit offsets."""


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did.

    Attributes:
        table: Table URI.
        version: Table version after the ingest (unchanged for a no-op).
        mode: The write mode used.
        dataset: Registry name or ``"generic"``.
        verified: True when every source of THIS ingest matched the dataset's published hashes
            (recorded in the commit's lineage).
        rows: Rows written per split.
        noop: True when the table already held exactly these sources.
        seconds: Wall time.
        bytes_read: Uncompressed IDX image bytes processed.
        sources: File names per split.
        split_verified: Per written split, True when the split as the table now holds it is exactly the
            published one (False e.g. after appending to it); what ``idxlake info`` reports.
    """

    table: str
    version: int
    mode: str
    dataset: str
    verified: bool
    rows: Mapping[str, int]
    noop: bool = False
    seconds: float = 0.0
    bytes_read: int = 0
    sources: Mapping[str, Sequence[str]] = field(default_factory=dict)
    split_verified: Mapping[str, bool] = field(default_factory=dict)


def _existing(table: str, storage_options: Mapping[str, str] | None,
              mode: IngestMode) -> tuple[Any, TableMeta | None, int | None]:
    """The table as it is now: (DeltaTable or None, its metadata, its version)."""
    try:
        dt = open_table(table, storage_options=storage_options)
    except TableNotFoundError:
        return None, None, None
    features, partitions = unsupported_features(dt), list(dt.metadata().partition_columns)
    if features or partitions != list(PARTITION_BY):  # a write keeps both: the table would stay unreadable
        found = f"reader features {features}" if features else f"partition columns {partitions}"
        raise SchemaMismatchError(
            f"{table}: the Delta table there has {found}, which a write keeps (idxlake reads plain Parquet tables "
            f"partitioned by {list(PARTITION_BY)}); delete that table or write to another path")
    try:
        meta = meta_from_schema(pa.schema(dt.schema().to_arrow()), where=table)
    except SchemaMismatchError:
        if mode != "overwrite":
            raise
        meta = None  # overwrite may replace any Delta table
    return dt, meta, dt.version()


def _check_compatible(old: TableMeta, new: TableMeta, table: str) -> None:
    if GENERIC not in (old.dataset, new.dataset) and old.dataset != new.dataset:
        raise SchemaMismatchError(f"{table}: table holds {old.dataset}, the source is {new.dataset}; use "
                                  "--mode overwrite to replace the whole table, or another table")
    for attr in ("shape", "dtype", "label_dtype"):
        if getattr(old, attr) != getattr(new, attr):
            raise SchemaMismatchError(
                f"{table}: table holds {attr} {getattr(old, attr)}, the source has {getattr(new, attr)}; "
                "use --mode overwrite to replace the whole table, or another table")


def _headers(sources: Mapping[str, SplitSource]) -> tuple[TableMeta, int]:
    """Read and cross-check every header: the shape/dtype part of the table metadata, and the image bytes."""
    first = None
    total = 0
    for src in sources.values():
        with IdxFile(src.images) as images, IdxFile(src.labels) as labels:
            if labels.header.record_shape:
                raise SourceError(f"{src.labels.name}: labels must be 1-D, header says {labels.header.describe()}")
            if images.header.count != labels.header.count:
                raise SourceError(
                    f"split {src.split!r}: {src.images.name} has {images.header.count} records but "
                    f"{src.labels.name} has {labels.header.count}; files from different datasets?")
            total += images.header.payload_nbytes
            if images.header.record_nbytes >= MAX_RECORD_BYTES:
                raise SourceError(f"{src.images.name}: one record is {images.header.record_nbytes} bytes "
                                  f"({images.header.describe()}); idxlake stores records up to 2 GiB each")
            key = (images.header.record_shape, images.header.dtype, labels.header.dtype)
            if first is None:
                first = (key, src.images.name, images.header)
            elif key != first[0]:
                raise SourceError(f"{src.images.name}: records are {images.header.describe()}, but {first[1]} "
                                  f"has {first[2].describe()}; mixed datasets?")
    assert first is not None
    (shape, dtype, label_dtype), _, _ = first
    return TableMeta(dataset=GENERIC, shape=shape, dtype=dtype.name, label_dtype=label_dtype.name,
                     scale=pixel_scale(dtype.name)), total


def _stream(src: SplitSource, meta: TableMeta, schema: pa.Schema, out: dict[str, ScannedSplit], *,
            id_offset: int, chunk_records: int,
            progress: Callable[[int], None] | None) -> Generator[pa.RecordBatch, None, None]:
    """Record batches of one split (no partition column); leaves its :class:`ScannedSplit` in ``out``."""
    label_type = schema.field(LABEL).type
    acc = SplitAccumulator(meta.scale)
    with IdxFile(src.images) as images, IdxFile(src.labels) as labels, \
            contextlib.closing(prefetch(images.chunks(chunk_records), depth=1)) as decoded:  # its thread: stopped
        start = 0  # before the files close, on errors too (a kept exception kept it polling, holding two chunks)
        for img, lab in zip(decoded, labels.chunks(chunk_records), strict=True):
            n = len(img)
            acc.add(img, lab, labels_name=src.labels.name, images_name=src.images.name, first_row=start)
            if meta.transposed:
                img = np.ascontiguousarray(np.swapaxes(img, -1, -2))
            yield pa.record_batch([pa.array(np.arange(id_offset + start, id_offset + start + n, dtype=np.int64)),
                                   pa.array(lab).cast(label_type), image_array(img, meta.record_nbytes)],
                                  schema=schema)
            start += n
            if progress:
                progress(img.nbytes)
        assert images.digest is not None and labels.digest is not None
        out[src.split] = ScannedSplit(src, images.header, labels.header, images.digest, labels.digest,
                                      acc.stats, acc.label_min if start else 0.0, acc.label_max if start else 0.0)


def ingest(
    source: str | Path | Sequence[str | Path] | None,
    table: str,
    *,
    dataset: str | None = None,
    mode: IngestMode = "replace",
    storage_options: Mapping[str, str] | None = None,
    source_storage_options: Mapping[str, str] | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    codec: Codec = DEFAULT_CODEC,
    compression_level: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    allow_duplicate: bool = False,
) -> IngestResult:
    """Ingest IDX files into a Delta table in one atomic commit.

    Args:
        source: Directory or explicit files (local, or URIs on the table's store, read with
            ``storage_options``); ``None`` for the bundled MNIST.
        table: Table path or URI (``s3://...`` with ``storage_options``).
        dataset: Registered dataset name or ``"generic"``; inferred from hashes and names if ``None``.
        mode: ``"replace"`` (default) replaces exactly the ingested splits and is a no-op when
            the table already holds these sources; ``"append"`` adds rows (ids continue after
            the existing ones); ``"overwrite"`` replaces the whole table; ``"error"`` refuses
            an existing table.
        storage_options: delta-rs storage options for object stores.
        source_storage_options: Options for a source on an object store; default: ``storage_options``
            when the source is on the table's store, else none (the environment only).
        row_group_rows: Rows per Parquet row group (the loader's streaming unit).
        codec: Parquet compression codec.
        compression_level: The codec's level (``None``: its default). LZ4_RAW 1-12 (3 and above
            are LZ4HC: slower to write, smaller and faster to decode), ZSTD up to 22 (negative:
            faster). Parquet footers do not record it: pass it to :func:`optimize` too.
        progress: Called with the number of image bytes just processed.
        on_total: Called once with the total bytes ``progress`` will report.
        allow_duplicate: Let ``mode="append"`` add an images file the split already holds (same
            sha256). Refused by default: rerunning an append that did land would duplicate its rows.

    Returns:
        An :class:`IngestResult`.

    Raises:
        IdxFormatError, SourceError: bad input (the table is left unchanged).
        IngestConfigError: an unknown codec, or a compression level it does not have.
        TableExistsError: ``mode="error"`` and the table exists.
        SchemaMismatchError: the source does not fit the existing table.
        SourceError: also for an append of sources the split already holds (see ``allow_duplicate``).
        CommitConflictError: another writer created the table or committed first; nothing was written.
    """
    t0 = time.perf_counter()
    compression_level = check_compression(codec, compression_level)
    if dataset is not None and dataset != GENERIC:
        try:
            get_dataset(dataset)
        except KeyError as exc:
            raise SourceError(str(exc.args[0])) from None
    sources = discover(bundled_mnist() if source is None else source, dataset=dataset,
                       storage_options=source_options(source, table, storage_options, source_storage_options))
    dt, old, old_version = _existing(table, storage_options, mode)
    if mode == "error" and old is not None:
        raise TableExistsError(f"{table}: table exists (version {old_version}) and --mode error was given")
    meta, total = _headers(sources)
    named = named_spec(dataset, next(iter(sources.values())).prefix)
    meta = replace(meta, transposed=bool(named and named.transposed))
    if old is not None and mode in ("replace", "append"):
        try:
            _check_compatible(old, replace(meta, dataset=named.name if named else GENERIC), table)
        except SchemaMismatchError:
            validate_fully(sources)  # a damaged source is reported as such, not as a table mismatch
            raise
        if mode == "append" and not allow_duplicate:
            refuse_duplicate_early(old, sources, table, old_version)
        meta = replace(meta, transposed=old.transposed)
        if mode == "replace" and already_holds(old, sources) and not changed_elsewhere(  # rows another writer
                dt.history(), sources, txn_key=TXN_KEY):  # changed (an UPDATE) are replaced, not kept
            logger.info("%s: already holds these sources at version %s; nothing to do", table, old_version)
            return IngestResult(table=table, version=old_version or 0, mode=mode, dataset=old.dataset,
                                verified=all(old.splits[k].verified for k in sources),
                                rows={k: old.splits[k].rows for k in sources}, noop=True,
                                seconds=time.perf_counter() - t0,
                                sources={k: [f.name for f in old.splits[k].sources] for k in sources},
                                split_verified={k: old.splits[k].verified for k in sources})
    offsets = {k: old.splits[k].rows if old and mode == "append" and k in old.splits else 0 for k in sources}
    chunk_records = max(1, min(row_group_rows, MAX_ROW_GROUP_BYTES // max(meta.record_nbytes, 1)))
    schema = arrow_schema(meta)
    scanned: dict[str, ScannedSplit] = {}
    if on_total:
        on_total(total)
    with open_pending(table, storage_options) as pending:
        for split, src in sources.items():  # closed when the writer stops early: its files and thread too
            with contextlib.closing(_stream(src, meta, file_schema(schema), scanned, id_offset=offsets[split],
                                            chunk_records=chunk_records, progress=progress)) as batches:
                write_split(pending, split, batches, file_schema=file_schema(schema), row_group_rows=chunk_records,
                            codec=codec, compression_level=compression_level)
        spec, verified = identify(scanned, dataset)
        meta = _final_meta(meta, spec, verified, scanned, old, mode, table)
        rows = {k: s.images.count for k, s in scanned.items()}
        lineage = {"idxlake_version": __version__, "mode": mode, "dataset": meta.dataset, "verified": verified,
                   "rows": rows, "sources": {k: [f.__dict__ for f in s.source_files()] for k, s in scanned.items()}}
        if old is not None and mode == "append" and not allow_duplicate:
            refuse_duplicate(old, scanned, table, old_version)
        version = commit(table, dt, pending, schema=arrow_schema(meta),
                         mode="create" if dt is None or mode == "error" else mode, splits=list(scanned),
                         storage_options=storage_options, name=Path(table.rstrip("/")).name or None,
                         description=meta.describe(), lineage=lineage)
    logger.info("%s: wrote %s rows as version %d", table, rows, version)
    return IngestResult(table=table, version=version, mode=mode, dataset=meta.dataset, verified=verified, rows=rows,
                        seconds=time.perf_counter() - t0, bytes_read=total,
                        sources={k: [s.source.images.name, s.source.labels.name] for k, s in scanned.items()},
                        split_verified={k: meta.splits[k].verified for k in scanned})


def _final_meta(meta: TableMeta, spec: Any, verified: bool, scanned: Mapping[str, ScannedSplit],
                old: TableMeta | None, mode: str, table: str) -> TableMeta:
    """The table metadata to commit: identity, class names and every split's facts."""
    if spec is not None:
        meta = replace(meta, dataset=spec.name, class_names=spec.class_names)
    if old is not None:  # every commit changes the metadata, so concurrent idxlake writers always conflict
        meta = replace(meta, revision=old.revision + 1)
    new = {k: SplitMeta(rows=s.images.count, stats=s.stats, sources=s.source_files(), verified=verified)
           for k, s in scanned.items()}
    if old is None or mode == "overwrite":
        return meta.with_splits(new)
    _check_compatible(old, meta, table)
    if spec is None:  # unrecognised files added to a known table keep its identity (unverified) if they fit it
        if old.dataset in DATASETS:
            check_fits(DATASETS[old.dataset], scanned, hint=f"the table holds {old.dataset}: use another table")
        meta = replace(meta, dataset=old.dataset, class_names=old.class_names)
    splits = dict(old.splits)
    for k, m in new.items():
        prev = old.splits.get(k)
        splits[k] = m if mode == "replace" or prev is None else SplitMeta(
            prev.rows + m.rows, prev.stats + m.stats, prev.sources + m.sources, verified=False)
    return meta.with_splits(splits)
