"""Export a table split back to IDX files whose uncompressed bytes equal the ingested sources."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from idxlake.pipeline.idx.write import write_idx_chunks
from idxlake.schemas import DATASETS, ID, IMAGE, LABEL, SchemaMismatchError, TableSnapshot, snapshot
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedSplit:
    """Files written for one split.

    Attributes:
        split: Split name.
        images: Path of the images file.
        labels: Path of the labels file.
        rows: Records written.
    """

    split: str
    images: Path
    labels: Path
    rows: int


def export_names(snap: TableSnapshot, split: str, *, compress: bool = True) -> tuple[str, str]:
    """File names for a split: the dataset's canonical names, else MNIST-style names."""
    meta = snap.meta
    files = DATASETS[meta.dataset].splits.get(split) if meta.dataset in DATASETS else None
    gz = ".gz" if compress else ""
    if files:
        return files.images.removesuffix(".gz") + gz, files.labels.removesuffix(".gz") + gz
    stem = {"test": "t10k"}.get(split, split)
    return f"{stem}-images-idx{len(meta.shape) + 1}-ubyte{gz}", f"{stem}-labels-idx1-ubyte{gz}"


def _ordered_row_groups(snap: TableSnapshot, split: str) -> list[tuple[str, int, int, int]]:
    """(path, row_group, min id, rows) of every row group of ``split``, in id order; checks ids are 0..n-1."""
    fs = snap.filesystem()
    snap.check_files(snap.files_of([split]))
    groups = []
    for f in snap.files_of([split]):
        path = snap.file_path(f)
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            for i in range(pf.metadata.num_row_groups):
                ids = pf.read_row_group(i, columns=[ID])[ID]
                if len(ids) == 0:
                    continue
                lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
                if hi - lo + 1 != len(ids) or not pc.all(pc.equal(pc.subtract(ids, lo),
                                                                  np.arange(len(ids)))).as_py():
                    raise SchemaMismatchError(
                        f"{snap.uri}: row group {i} of {f.uri} holds ids out of order; run "
                        "`idxlake optimize` or re-ingest before exporting")
                groups.append((path, i, lo, len(ids)))
    groups.sort(key=lambda g: g[2])
    expected = 0
    for path, i, lo, n in groups:
        if lo != expected:
            raise SchemaMismatchError(f"{snap.uri}: split {split!r} ids are not contiguous near id {expected} "
                                      f"({path} row group {i} starts at {lo}); cannot export exact IDX")
        expected += n
    return groups


def _chunks(snap: TableSnapshot, groups: list[tuple[str, int, int, int]], column: str) -> Iterator[np.ndarray]:
    meta = snap.meta
    fs = snap.filesystem()
    for path, i, _, _ in groups:
        with fs.open_input_file(path) as fh:
            col = pq.ParquetFile(fh).read_row_group(i, columns=[column])[column].combine_chunks()
        if column == LABEL:
            yield col.to_numpy().astype(meta.label_dtype)
            continue
        offsets, data = col.buffers()[1], col.buffers()[2]
        start = np.frombuffer(offsets, dtype=np.int32, count=1, offset=col.offset * 4)[0]
        n = len(col)
        raw = np.frombuffer(data, dtype=np.uint8, count=n * meta.record_nbytes, offset=start)
        images = raw.view(meta.image_dtype.little_endian).reshape((n, *meta.shape))
        yield np.swapaxes(images, -1, -2) if meta.transposed else images


def export(table: str, outdir: str | Path, *, splits: list[str] | None = None, version: int | None = None,
           storage_options: Mapping[str, str] | None = None, compress: bool = True,
           as_of: Timestamp | None = None) -> list[ExportedSplit]:
    """Write each split of a table as an IDX images/labels pair.

    Streams one row group at a time. The uncompressed output is byte-identical to the
    ingested source files (EMNIST's transposition is undone).

    Args:
        table: Table URI.
        outdir: Directory to write into (created).
        splits: Splits to export (default: all).
        version: Table version (default: latest).
        storage_options: Object-store options.
        compress: Write ``.gz`` files (default) or raw IDX.
        as_of: Instead of ``version``: the version that was latest at this timestamp.

    Returns:
        One :class:`ExportedSplit` per split.
    """
    snap = snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits or sorted(snap.meta.splits):
        if split not in snap.meta.splits:
            raise SchemaMismatchError(f"{table}: no split {split!r}; the table has {sorted(snap.meta.splits)}")
        groups = _ordered_row_groups(snap, split)
        rows = sum(n for *_, n in groups)
        image_name, label_name = export_names(snap, split, compress=compress)
        shape = snap.meta.shape
        if snap.meta.transposed:
            shape = (*shape[:-2], shape[-1], shape[-2])
        images = write_idx_chunks(out / image_name, _chunks(snap, groups, IMAGE), dtype=snap.meta.dtype,
                                  dims=(rows, *shape), compress=compress)
        labels = write_idx_chunks(out / label_name, _chunks(snap, groups, LABEL), dtype=snap.meta.label_dtype,
                                  dims=(rows,), compress=compress)
        logger.info("exported %s: %d rows to %s", split, rows, out)
        written.append(ExportedSplit(split, images, labels, rows))
    return written
