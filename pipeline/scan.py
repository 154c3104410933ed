"""Ingest pass 1: validate and hash every source file, compute pixel statistics, identify the dataset.

Reads each file once in bounded chunks, before anything is written, so that a bad
file is reported before a single Parquet byte exists and so the table metadata
(statistics, hashes) can be committed atomically with the data in pass 2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.idx import DEFAULT_CHUNK_BYTES, IdxDigest, IdxFile, IdxHeader
from pipeline.sources import SplitSource
from schemas import DATASETS, GENERIC, DatasetSpec, PixelStats, SourceError, SourceFile

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ScannedSplit:
    """Pass-1 facts about one split.

    Attributes:
        source: The split's files.
        images: Header of the images file.
        labels: Header of the labels file.
        images_digest: Hashes of the images file.
        labels_digest: Hashes of the labels file.
        stats: Pixel moments (scaled).
        label_min: Smallest label value.
        label_max: Largest label value.
    """

    source: SplitSource
    images: IdxHeader
    labels: IdxHeader
    images_digest: IdxDigest
    labels_digest: IdxDigest
    stats: PixelStats
    label_min: float
    label_max: float

    def source_files(self) -> tuple[SourceFile, ...]:
        """The split's files as recorded in the table."""
        return tuple(
            SourceFile(role=role, name=path.name, sha256=d.sha256, nbytes=d.nbytes, md5=d.md5,
                       compressed=d.compressed)
            for role, path, d in (("images", self.source.images, self.images_digest),
                                  ("labels", self.source.labels, self.labels_digest)))


def pixel_scale(dtype_name: str) -> float:
    """Divisor applied before statistics: 255 for uint8 pixels, 1 otherwise."""
    return 255.0 if dtype_name == "uint8" else 1.0


def chunk_stats(chunk: np.ndarray, scale: float) -> PixelStats:
    """Pixel moments of one chunk, exact for uint8 (via a histogram)."""
    if chunk.dtype == np.uint8:
        hist = np.bincount(chunk.reshape(-1), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64) / scale
        return PixelStats(int(chunk.size), float(hist @ values), float(hist @ (values * values)))
    flat = chunk.reshape(-1).astype(np.float64) / scale
    return PixelStats(int(flat.size), float(flat.sum()), float(flat @ flat))


def scan_split(source: SplitSource, *, progress: Progress | None = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ScannedSplit:
    """Validate, hash and summarise one split's two files.

    Raises:
        IdxFormatError: a file is malformed.
        SourceError: the files do not pair up (counts, label shape).
    """
    with IdxFile(source.labels) as lf:
        if lf.header.record_shape:
            raise SourceError(f"{source.labels.name}: labels must be 1-D, header says {lf.header.describe()}")
        labels = lf.read_all()
        labels_header, labels_digest = lf.header, lf.digest
    assert labels_digest is not None
    with IdxFile(source.images) as f:
        if f.header.count != labels_header.count:
            raise SourceError(
                f"split {source.split!r}: {source.images.name} has {f.header.count} records but "
                f"{source.labels.name} has {labels_header.count}; files from different datasets?")
        scale = pixel_scale(f.header.dtype.name)
        stats = PixelStats()
        for chunk in f.chunks(chunk_bytes=chunk_bytes):
            stats = stats + chunk_stats(chunk, scale)
            if progress:
                progress(chunk.nbytes)
        images_header, images_digest = f.header, f.digest
    assert images_digest is not None
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        row = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise SourceError(f"{source.labels.name}: label at row {row} is {labels[row]}; labels must be finite")
    lo = float(labels.min()) if labels.size else 0.0
    hi = float(labels.max()) if labels.size else 0.0
    return ScannedSplit(source, images_header, labels_header, images_digest, labels_digest, stats, lo, hi)


def _matches(spec: DatasetSpec, scanned: Mapping[str, ScannedSplit]) -> bool:
    """True when every scanned file carries a published hash of ``spec``."""
    for split, s in scanned.items():
        files = spec.splits.get(split)
        if files is None:
            return False
        for digest, sha, md5 in ((s.images_digest, files.images_sha256, files.images_md5),
                                 (s.labels_digest, files.labels_sha256, files.labels_md5)):
            if not ((sha and digest.sha256 == sha) or (md5 and digest.compressed and digest.md5 == md5)):
                return False
    return True


def identify(scanned: Mapping[str, ScannedSplit], dataset: str | None) -> tuple[DatasetSpec | None, bool]:
    """Decide which registered dataset the files are, and whether they are verified official data.

    Args:
        scanned: Pass-1 results per split.
        dataset: ``--dataset`` as given (a registry name, ``"generic"``), or ``None`` to infer.

    Returns:
        ``(spec or None for generic, verified)``.

    Raises:
        SourceError: when the files contradict the named dataset (shape, split size, label range).
    """
    if dataset is None:
        spec = next((s for s in DATASETS.values() if _matches(s, scanned)), None)
        if spec is None:
            prefix = next(iter(scanned.values())).source.prefix
            spec = next((s for s in DATASETS.values() if prefix and s.file_prefix == prefix), None)
        if spec is None:
            return None, False
    elif dataset == GENERIC:
        return None, False
    else:
        spec = DATASETS[dataset]
    for split, s in scanned.items():
        if s.images.record_shape != spec.shape:
            raise SourceError(f"{s.source.images.name}: records are {s.images.describe()}, but {spec.title} "
                              f"images are {'x'.join(map(str, spec.shape))}; wrong --dataset?")
        if s.labels.dtype.is_integer is False or s.label_min < 0 or s.label_max >= spec.num_classes:
            raise SourceError(
                f"{s.source.labels.name}: labels span {s.label_min:g}..{s.label_max:g}, but {spec.title} has "
                f"classes 0..{spec.num_classes - 1}; wrong --dataset or corrupt labels?")
        expected = spec.splits.get(split)
        if expected and s.images.count != expected.rows:
            logger.info("%s: %d rows, %s publishes %d", split, s.images.count, spec.title, expected.rows)
    return spec, _matches(spec, scanned)
