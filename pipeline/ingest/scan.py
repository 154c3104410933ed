"""Per-split facts gathered while records stream by: pixel moments, label range, hashes; dataset identity.

Statistics and hashes are accumulated during the single decoding pass, so the table
metadata committed with the data (in the same Delta commit) costs no extra read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from idxlake.pipeline.idx.read import IdxDigest, IdxHeader
from idxlake.pipeline.ingest.sources import SplitSource
from idxlake.schemas import DATASETS, GENERIC, DatasetSpec, PixelStats, SourceError, SourceFile

logger = logging.getLogger(__name__)

# Squares of the small integer types fit one step wider: 255**2 < 2**16, 128**2 < 2**15.
_SQUARE_TYPES = {np.dtype(np.uint8): (np.uint16, np.uint64), np.dtype(np.int8): (np.int16, np.int64)}


def pixel_scale(dtype_name: str) -> float:
    """Divisor applied before statistics: 255 for uint8 pixels, 1 otherwise."""
    return 255.0 if dtype_name == "uint8" else 1.0


def chunk_stats(chunk: np.ndarray, scale: float) -> PixelStats:
    """Pixel moments of one chunk; exact (integer arithmetic) for 8-bit data."""
    flat = chunk.reshape(-1)
    if flat.dtype in _SQUARE_TYPES:
        wide, acc = _SQUARE_TYPES[flat.dtype]
        total = int(flat.sum(dtype=acc))
        squares = flat.astype(wide)
        np.multiply(squares, squares, out=squares)
        total_sq = int(squares.sum(dtype=np.uint64))
        return PixelStats(int(flat.size), total / scale, total_sq / (scale * scale))
    values = flat.astype(np.float64) / scale
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused with the file's name by the caller
        return PixelStats(int(flat.size), float(values.sum()), float(values @ values))


@dataclass
class SplitAccumulator:
    """Running statistics of one split while its chunks stream past."""

    scale: float
    stats: PixelStats = field(default_factory=PixelStats)
    label_min: float = math.inf
    label_max: float = -math.inf

    def add(self, images: np.ndarray, labels: np.ndarray, *, labels_name: str, first_row: int,
            images_name: str = "images") -> None:
        """Fold in one chunk; reject non-finite labels and pixels, and moments that overflow float64."""
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            bad = np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))[0]
            raise SourceError(f"{images_name}: record at row {first_row + int(bad)} holds a non-finite pixel "
                              f"({images[bad][~np.isfinite(images[bad])].flat[0]}); the table's pixel statistics "
                              "and the loaders' normalisation need finite values: clean the source")
        self.stats = self.stats + chunk_stats(images, self.scale)
        if not math.isfinite(self.stats.total_sq):
            raise SourceError(f"{images_name}: the squares of the pixels up to row {first_row + len(images) - 1} "
                              "overflow float64 (values near 1e154 or larger); rescale the source")
        if labels.size:
            if labels.dtype.kind == "f" and not np.isfinite(labels).all():
                row = first_row + int(np.flatnonzero(~np.isfinite(labels))[0])
                raise SourceError(f"{labels_name}: label at row {row} is {labels[row - first_row]}; "
                                  "labels must be finite")
            self.label_min = min(self.label_min, float(labels.min()))
            self.label_max = max(self.label_max, float(labels.max()))


@dataclass(frozen=True)
class ScannedSplit:
    """Facts about one fully read split.

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
    label_min: float = 0.0
    label_max: float = 0.0

    def source_files(self) -> tuple[SourceFile, ...]:
        """The split's files as recorded in the table."""
        return source_files(self.source, self.images_digest, self.labels_digest)


def source_files(source: SplitSource, images: IdxDigest, labels: IdxDigest) -> tuple[SourceFile, ...]:
    """Table records of a split's two files."""
    return tuple(SourceFile(role=role, name=path.name, sha256=d.sha256, nbytes=d.nbytes, md5=d.md5,
                            compressed=d.compressed)
                 for role, path, d in (("images", source.images, images), ("labels", source.labels, labels)))


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


def named_spec(dataset: str | None, prefix: str) -> DatasetSpec | None:
    """The dataset known before reading any data: ``--dataset`` or an EMNIST-style file prefix."""
    if dataset is not None:
        return DATASETS.get(dataset)
    return next((s for s in DATASETS.values() if prefix and s.file_prefix == prefix), None)


def identify(scanned: Mapping[str, ScannedSplit], dataset: str | None) -> tuple[DatasetSpec | None, bool]:
    """Decide which registered dataset the files are, and whether they are verified official data.

    Args:
        scanned: Per-split facts.
        dataset: ``--dataset`` as given (a registry name, ``"generic"``), or ``None`` to infer.

    Returns:
        ``(spec or None for generic, verified)``.

    Raises:
        SourceError: when the files contradict the named dataset (shape, label range).
    """
    if dataset == GENERIC:
        return None, False
    prefix = next(iter(scanned.values())).source.prefix
    spec = named_spec(dataset, prefix)
    if spec is None:
        spec = next((s for s in DATASETS.values() if _matches(s, scanned)), None)
    if spec is None:
        return None, False
    check_fits(spec, scanned, hint="wrong --dataset")
    return spec, _matches(spec, scanned)


def check_fits(spec: DatasetSpec, scanned: Mapping[str, ScannedSplit], *, hint: str) -> None:
    """Refuse files whose record shape or label range ``spec`` does not allow.

    Raises:
        SourceError: naming the file, what it holds and what ``spec`` allows, ending ``{hint}?``.
    """
    for s in scanned.values():
        if s.images.record_shape != spec.shape:
            raise SourceError(f"{s.source.images.name}: records are {s.images.describe()}, but {spec.title} "
                              f"images are {'x'.join(map(str, spec.shape))}; {hint}?")
        if not s.labels.dtype.is_integer or s.label_min < 0 or s.label_max >= spec.num_classes:
            raise SourceError(
                f"{s.source.labels.name}: labels span {s.label_min:g}..{s.label_max:g}, but {spec.title} has "
                f"classes 0..{spec.num_classes - 1}; {hint} or corrupt labels?")
