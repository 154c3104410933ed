"""Ingest pass 2: stream validated IDX records as Arrow batches into one atomic Delta commit.

``ingest(source, table)`` is the batch ETL job: discover the files, validate and hash
them (:mod:`pipeline.scan`), then stream bounded record batches into
``deltalake.write_deltalake``. Exactly one Delta commit is made; the table metadata
(:class:`schemas.TableMeta`, with the new statistics and hashes) rides in that same
commit, and lineage goes into its ``commitInfo``. Any failure (a bad file, a full
disk, Ctrl-C) leaves the table at its previous version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.delta_out import Codec, commit, file_schema, image_array, open_pending, write_split
from pipeline.idx import DEFAULT_CHUNK_BYTES, IdxFile
from pipeline.scan import ScannedSplit, identify, pixel_scale, scan_split
from pipeline.sources import bundled_mnist, discover
from schemas import (
    GENERIC,
    LABEL,
    ROW_GROUP_ROWS,
    IdxlakeError,
    SchemaMismatchError,
    SourceError,
    SplitMeta,
    TableExistsError,
    TableMeta,
    TableNotFoundError,
    arrow_schema,
    meta_from_schema,
    open_table,
)

logger = logging.getLogger(__name__)

IngestMode = Literal["replace", "append", "overwrite", "error"]
MAX_ROW_GROUP_BYTES = 64 << 20
"""Row groups are capped at this many image bytes (bounds memory for large records)."""
DEFAULT_CODEC: Codec = "LZ4_RAW"
"""Chosen by benchmarks/bench_loader.py: LZ4 decodes ~2x faster than ZSTD for ~1.3x the bytes."""


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did.

    Attributes:
        table: Table URI.
        version: Table version after the ingest (unchanged for a no-op).
        mode: The write mode used.
        dataset: Registry name or ``"generic"``.
        verified: True when every source matched the dataset's published hashes.
        rows: Rows written per split.
        noop: True when the table already held exactly these sources.
        seconds: Wall time.
        bytes_read: Uncompressed IDX bytes processed (both passes counted once).
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


def _existing(table: str, storage_options: Mapping[str, str] | None) -> tuple[Any, TableMeta | None, int | None]:
    try:
        dt = open_table(table, storage_options=storage_options)
    except TableNotFoundError:
        return None, None, None
    return dt, meta_from_schema(pa.schema(dt.schema().to_arrow()), where=table), dt.version()


def _check_compatible(old: TableMeta, new: TableMeta, table: str) -> None:
    if GENERIC not in (old.dataset, new.dataset) and old.dataset != new.dataset:
        raise SchemaMismatchError(
            f"{table}: table holds {old.dataset}, the source is {new.dataset}; use --mode overwrite to "
            "replace the whole table, or another table")
    for attr in ("shape", "dtype", "label_dtype"):
        if getattr(old, attr) != getattr(new, attr):
            raise SchemaMismatchError(
                f"{table}: table holds {attr} {getattr(old, attr)}, the source has {getattr(new, attr)}; "
                "use --mode overwrite to replace the whole table, or another table")


def _batches(scanned: ScannedSplit, meta: TableMeta, schema: pa.Schema, *, id_offset: int, chunk_records: int,
             progress: Callable[[int], None] | None) -> Iterator[pa.RecordBatch]:
    """Record batches (without the partition column) of one split, ``chunk_records`` rows each."""
    label_type = schema.field(LABEL).type
    src = scanned.source
    with IdxFile(src.images) as images, IdxFile(src.labels) as labels:
        start = 0
        for img, lab in zip(images.chunks(chunk_records), labels.chunks(chunk_records), strict=True):
            n = len(img)
            if meta.transposed:
                img = np.ascontiguousarray(np.swapaxes(img, -1, -2))
            yield pa.record_batch([
                pa.array(np.arange(id_offset + start, id_offset + start + n, dtype=np.int64)),
                pa.array(lab).cast(label_type),
                image_array(img, meta.record_nbytes),
            ], schema=schema)
            start += n
            if progress:
                progress(img.nbytes)
        for f, digest in ((images, scanned.images_digest), (labels, scanned.labels_digest)):
            if f.digest is None or f.digest.sha256 != digest.sha256:
                raise SourceError(f"{f.name}: file changed while it was being ingested; run the ingest again")


def ingest(
    source: str | Path | Sequence[str | Path] | None,
    table: str,
    *,
    dataset: str | None = None,
    mode: IngestMode = "replace",
    storage_options: Mapping[str, str] | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    codec: Codec = DEFAULT_CODEC,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest IDX files into a Delta table in one atomic commit.

    Args:
        source: Directory or explicit files; ``None`` for the bundled MNIST.
        table: Table path or URI (``s3://...`` with ``storage_options``).
        dataset: Registered dataset name or ``"generic"``; inferred from hashes and names if ``None``.
        mode: ``"replace"`` (default) replaces exactly the ingested splits and is a no-op when
            the table already holds these sources; ``"append"`` adds rows (ids continue after
            the existing ones); ``"overwrite"`` replaces the whole table; ``"error"`` refuses
            an existing table.
        storage_options: delta-rs storage options for object stores.
        row_group_rows: Rows per Parquet row group (the loader's streaming unit).
        codec: Parquet compression codec.
        chunk_bytes: Decoded bytes per chunk in pass 1 (bounds memory).
        progress: Called with the number of uncompressed bytes just processed.
        on_total: Called once with the total bytes ``progress`` will report.

    Returns:
        An :class:`IngestResult`.

    Raises:
        IdxFormatError, SourceError: bad input (nothing is written).
        TableExistsError: ``mode="error"`` and the table exists.
        SchemaMismatchError: the source does not fit the existing table.
    """
    t0 = time.perf_counter()
    if dataset is not None and dataset != GENERIC:
        from schemas import get_dataset

        try:
            get_dataset(dataset)
        except KeyError as exc:
            raise SourceError(str(exc.args[0])) from None
    sources = discover(bundled_mnist() if source is None else source, dataset=dataset)
    dt, old, old_version = _existing(table, storage_options)
    if mode == "error" and old is not None:
        raise TableExistsError(f"{table}: table exists (version {old_version}) and --mode error was given")
    total = 0
    scanned: dict[str, ScannedSplit] = {}
    for split, src in sources.items():
        scanned[split] = scan_split(src, progress=progress, chunk_bytes=chunk_bytes)
        total += scanned[split].images.payload_nbytes
    if on_total:
        on_total(2 * total)
    spec, verified = identify(scanned, dataset)
    first = next(iter(scanned.values()))
    for s in scanned.values():
        if (s.images.record_shape, s.images.dtype, s.labels.dtype) != (
                first.images.record_shape, first.images.dtype, first.labels.dtype):
            raise SourceError(f"{s.source.images.name}: records are {s.images.describe()}, but "
                              f"{first.source.images.name} has {first.images.describe()}; mixed datasets?")
    new_meta = TableMeta(
        dataset=spec.name if spec else GENERIC, shape=first.images.record_shape, dtype=first.images.dtype.name,
        label_dtype=first.labels.dtype.name, class_names=spec.class_names if spec else (),
        transposed=bool(spec and spec.transposed), scale=pixel_scale(first.images.dtype.name))
    new_splits = {k: SplitMeta(rows=s.images.count, stats=s.stats, sources=s.source_files(), verified=verified)
                  for k, s in scanned.items()}
    rows = {k: s.images.count for k, s in scanned.items()}
    result_args = dict(table=table, mode=mode, dataset=new_meta.dataset, verified=verified, rows=rows,
                       sources={k: [f.name for f in m.sources] for k, m in new_splits.items()})

    if old is not None and mode in ("replace", "append"):
        _check_compatible(old, new_meta, table)
        if spec is None:  # unrecognised files added to a known table keep its identity (unverified)
            new_meta = replace(new_meta, dataset=old.dataset, class_names=old.class_names,
                               transposed=old.transposed)
    if old is not None and mode == "replace" and all(
            k in old.splits and old.splits[k].sources == m.sources for k, m in new_splits.items()):
        logger.info("%s: already holds these sources at version %s; nothing to do", table, old_version)
        return IngestResult(version=old_version or 0, noop=True, seconds=time.perf_counter() - t0,
                            bytes_read=total, **result_args)

    offsets = {k: 0 for k in scanned}
    splits = dict(new_splits)
    if old is not None and mode == "replace":
        splits = {**old.splits, **new_splits}
    elif old is not None and mode == "append":
        splits = dict(old.splits)
        for k, m in new_splits.items():
            prev = old.splits.get(k)
            offsets[k] = prev.rows if prev else 0
            splits[k] = m if prev is None else SplitMeta(prev.rows + m.rows, prev.stats + m.stats,
                                                         prev.sources + m.sources, verified=False)
    meta = new_meta.with_splits(splits)

    lineage = {
        "idxlake_version": __version__, "mode": mode, "dataset": meta.dataset, "verified": verified,
        "rows": rows, "sources": {k: [f.__dict__ for f in m.sources] for k, m in new_splits.items()},
    }
    schema = arrow_schema(meta)
    chunk_records = max(1, min(row_group_rows, MAX_ROW_GROUP_BYTES // max(meta.record_nbytes, 1)))
    pending = open_pending(table, storage_options)
    try:
        for k, s in scanned.items():
            write_split(pending, k, _batches(s, meta, file_schema(schema), id_offset=offsets[k],
                                             chunk_records=chunk_records, progress=progress),
                        file_schema=file_schema(schema), row_group_rows=chunk_records, codec=codec)
        commit(table, dt, pending, schema=schema, mode="create" if dt is None else mode,  # type: ignore[arg-type]
               splits=list(scanned), storage_options=storage_options, name=Path(table.rstrip("/")).name or None,
               description=meta.describe(), lineage=lineage)
    except BaseException as exc:
        pending.discard()
        if isinstance(exc, IdxlakeError | KeyboardInterrupt) or not isinstance(exc, Exception):
            raise
        raise IdxlakeError(f"{table}: write failed, table left at version {old_version}: {exc}") from exc
    version = open_table(table, storage_options=storage_options).version()
    logger.info("%s: wrote %s rows as version %d", table, rows, version)
    return IngestResult(version=version, seconds=time.perf_counter() - t0, bytes_read=total, **result_args)
