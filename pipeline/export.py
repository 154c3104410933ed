"""Export a table split back to IDX files whose uncompressed bytes equal the ingested sources.

Every Parquet page read is CRC-checked. Each file is written under a temporary name, read
back, and its sha256 (of the uncompressed IDX bytes) compared with the lineage hash of the
ingested source; only when every file of the export matches are they renamed into place.
On a mismatch nothing is kept and :class:`DataCorruptionError` names the file.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from idxlake.pipeline.idx.read import scan_idx
from idxlake.pipeline.idx.write import idx_header, write_idx_chunks
from idxlake.schemas import (
    DATASETS,
    DTYPES_BY_NAME,
    ID,
    IMAGE,
    LABEL,
    DataCorruptionError,
    SchemaMismatchError,
    TableSnapshot,
    fs_path,
    snapshot,
)
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
        verified: True when both files were read back and their sha256 equals the lineage of the
            ingest; False when the split has no single source to compare with (built by appends).
    """

    split: str
    images: Path
    labels: Path
    rows: int
    verified: bool = False


def export_names(snap: TableSnapshot, split: str, *, compress: bool = True) -> tuple[str, str]:
    """File names for a split: the dataset's canonical names, else MNIST-style names."""
    meta = snap.meta
    files = DATASETS[meta.dataset].splits.get(split) if meta.dataset in DATASETS else None
    gz = ".gz" if compress else ""
    if files:
        return files.images.removesuffix(".gz") + gz, files.labels.removesuffix(".gz") + gz
    stem = {"test": "t10k"}.get(split, split)
    return f"{stem}-images-idx{len(meta.shape) + 1}-ubyte{gz}", f"{stem}-labels-idx1-ubyte{gz}"


def _rel(snap: TableSnapshot, path: str) -> str:
    """``path`` relative to the table root, as the Delta log names it."""
    return path.removeprefix(fs_path(snap.uri).rstrip("/") + "/")


def _read(snap: TableSnapshot, path: str, row_group: int, column: str) -> pa.ChunkedArray:
    """One column of one row group, every page CRC-checked; errors name table, version and file."""
    try:
        with snap.filesystem().open_input_file(path) as fh:
            parquet = pq.ParquetFile(fh, page_checksum_verification=True)
            return parquet.read_row_group(row_group, columns=[column])[column]
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataCorruptionError(f"{snap.uri}@v{snap.version}: data file {_rel(snap, path)} row group "
                                  f"{row_group} cannot be read: {exc}; run `idxlake verify {snap.uri}`") from exc


def _num_row_groups(snap: TableSnapshot, path: str) -> int:
    try:
        with snap.filesystem().open_input_file(path) as fh:
            return int(pq.ParquetFile(fh).metadata.num_row_groups)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataCorruptionError(f"{snap.uri}@v{snap.version}: data file {_rel(snap, path)}: footer cannot be "
                                  f"read: {exc}; run `idxlake verify {snap.uri}`") from exc


def ordered_row_groups(snap: TableSnapshot, split: str) -> list[tuple[str, int, int, int]]:
    """(path, row_group, min id, rows) of every row group of ``split``, in id order; checks ids are 0..n-1."""
    snap.check_files(snap.files_of([split]))
    groups = []
    for f in snap.files_of([split]):
        path = snap.file_path(f)
        for i in range(_num_row_groups(snap, path)):
            ids = _read(snap, path, i, ID)
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


def chunks(snap: TableSnapshot, groups: list[tuple[str, int, int, int]], column: str) -> Iterator[np.ndarray]:
    """The records of ``column`` (images as ``[n, *shape]`` in source orientation, or labels), in id order."""
    meta = snap.meta
    for path, i, _, _ in groups:
        col = _read(snap, path, i, column).combine_chunks()
        if column == LABEL:
            labels = col.to_numpy()
            kind = np.dtype(meta.label_dtype).kind
            info = np.iinfo(meta.label_dtype) if kind in "iu" else None
            if labels.size and info is not None and (labels.min() < info.min or labels.max() > info.max):
                raise DataCorruptionError(f"{snap.uri}@v{snap.version}: {path} row group {i}: labels span "
                                          f"{labels.min()}..{labels.max()}, outside {meta.label_dtype}; "
                                          f"run `idxlake verify {snap.uri}`")
            yield labels.astype(meta.label_dtype)
            continue
        if not pa.types.is_binary(col.type):  # binary_view (files delta-rs' DML wrote), large_binary
            col = col.cast(pa.binary())
        lengths = pc.min_max(pc.binary_length(col))
        low, high = lengths["min"].as_py(), lengths["max"].as_py()
        if len(col) and (low != meta.record_nbytes or high != meta.record_nbytes or col.null_count):
            raise DataCorruptionError(
                f"{snap.uri}@v{snap.version}: {path} row group {i}: image values of {low}..{high} bytes "
                f"({col.null_count} null), the table's records are {meta.record_nbytes}; "
                f"run `idxlake verify {snap.uri}`")
        offsets, data = col.buffers()[1], col.buffers()[2]
        start = np.frombuffer(offsets, dtype=np.int32, count=1, offset=col.offset * 4)[0]
        n = len(col)
        raw = np.frombuffer(data, dtype=np.uint8, count=n * meta.record_nbytes, offset=start)
        images = raw.view(meta.image_dtype.little_endian).reshape((n, *meta.shape))
        yield np.swapaxes(images, -1, -2) if meta.transposed else images


def idx_dims(snap: TableSnapshot, rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """IDX dims of the images and labels files of a split with ``rows`` records (source orientation)."""
    shape = snap.meta.shape
    if snap.meta.transposed:
        shape = (*shape[:-2], shape[-1], shape[-2])
    return (rows, *shape), (rows,)


def idx_sha256(snap: TableSnapshot, groups: list[tuple[str, int, int, int]], column: str) -> str:
    """sha256 of the uncompressed IDX file ``export`` would write for ``column``, computed from the table."""
    rows = sum(n for *_, n in groups)
    image_dims, label_dims = idx_dims(snap, rows)
    dtype = snap.meta.dtype if column == IMAGE else snap.meta.label_dtype
    be = DTYPES_BY_NAME[np.dtype(dtype).name].big_endian
    digest = hashlib.sha256(idx_header(dtype, image_dims if column == IMAGE else label_dims))
    for chunk in chunks(snap, groups, column):
        digest.update(np.ascontiguousarray(chunk, dtype=be).data)
    return digest.hexdigest()


def lineage_sha256(snap: TableSnapshot, split: str) -> tuple[str, str] | None:
    """The (images, labels) sha256 the ingest recorded for ``split``; ``None`` unless it has exactly one pair."""
    sources = snap.meta.splits[split].sources
    images = [s.sha256 for s in sources if s.role == "images"]
    labels = [s.sha256 for s in sources if s.role == "labels"]
    return (images[0], labels[0]) if len(images) == len(labels) == 1 else None


def export(table: str, outdir: str | Path, *, splits: list[str] | None = None, version: int | None = None,
           storage_options: Mapping[str, str] | None = None, compress: bool = True,
           as_of: Timestamp | None = None) -> list[ExportedSplit]:
    """Write each split of a table as an IDX images/labels pair.

    Streams one row group at a time. The uncompressed output is byte-identical to the
    ingested source files (EMNIST's transposition is undone): each file is read back and
    its sha256 compared with the lineage before it is renamed into place.

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

    Raises:
        DataCorruptionError: a page checksum failed, or a written file's sha256 differs from the
            lineage; no file of the export is kept.
    """
    snap = snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = splits or sorted(snap.meta.splits)
    for split in chosen:
        if split not in snap.meta.splits:
            raise SchemaMismatchError(f"{table}: no split {split!r}; the table has {sorted(snap.meta.splits)}")
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    written = []
    try:
        for split in chosen:
            groups = ordered_row_groups(snap, split)
            rows = sum(n for *_, n in groups)
            names = export_names(snap, split, compress=compress)
            image_dims, label_dims = idx_dims(snap, rows)
            expected = lineage_sha256(snap, split)
            paths = []
            for column, name, dtype, dims in ((IMAGE, names[0], snap.meta.dtype, image_dims),
                                              (LABEL, names[1], snap.meta.label_dtype, label_dims)):
                tmp = out / f".{name}.{uuid.uuid4().hex[:8]}.partial"
                staged.append((tmp, out / name))
                write_idx_chunks(tmp, chunks(snap, groups, column), dtype=dtype, dims=dims, compress=compress)
                if expected is not None:
                    got = scan_idx(tmp)[1].sha256
                    want = expected[0] if column == IMAGE else expected[1]
                    if got != want:
                        raise DataCorruptionError(
                            f"{table}@v{snap.version}: exported {name} (split {split!r}) has sha256 {got}, the "
                            f"ingested source had {want}; nothing was kept. Run `idxlake verify {table}`")
                paths.append(out / name)
            logger.info("exported %s: %d rows to %s", split, rows, out)
            written.append(ExportedSplit(split, paths[0], paths[1], rows, verified=expected is not None))
        for tmp, final in staged:
            tmp.replace(final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return written
