"""The idxlake table contract: columns, types, partitioning and self-describing metadata.

A table holds one row per IDX record::

    split  string   partition column ("train" / "test")
    id     int64    position of the record in its source IDX file (0-based)
    label  int8/16/32 or float32/64: smallest signed type holding the label IDX dtype
    image  binary   one record's raw C-order bytes, little-endian, ``prod(shape) * itemsize`` long

Everything needed to decode and use the rows lives in the Delta schema itself, as
field metadata of the ``image`` column (Spark sees it as column metadata):
``"idxlake"`` holds a JSON document (:class:`TableMeta`) and ``"comment"`` a
human line. It is rewritten in the same commit as the data, so it is atomic with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa

from idxlake.schemas.dtypes import DTYPES_BY_NAME, IdxDtype
from idxlake.schemas.errors import SchemaMismatchError

FORMAT_VERSION = 1
"""Version of this contract, stored in every table."""

META_KEY = "idxlake"
"""Field-metadata key (on the ``image`` column) holding the :class:`TableMeta` JSON."""

SPLIT, ID, LABEL, IMAGE = "split", "id", "label", "image"
COLUMNS: tuple[str, ...] = (SPLIT, ID, LABEL, IMAGE)
"""Column names, in table order (none is a SQL reserved word)."""

PARTITION_BY: tuple[str, ...] = (SPLIT,)
"""Partition columns."""

ROW_GROUP_ROWS = 8192
"""Rows per Parquet row group: the unit of streaming reads (see benchmarks/)."""


@dataclass(frozen=True)
class SourceFile:
    """One ingested IDX file, as recorded in the table and the commit lineage.

    Attributes:
        role: ``"images"`` or ``"labels"``.
        name: File name as found (no directory).
        sha256: sha256 of the uncompressed IDX bytes (header included).
        nbytes: Size of the uncompressed IDX bytes.
        md5: md5 of the file as stored (the ``.gz`` bytes when compressed).
        compressed: True when the file was gzip-compressed.
    """

    role: str
    name: str
    sha256: str
    nbytes: int
    md5: str
    compressed: bool


@dataclass(frozen=True)
class PixelStats:
    """Additive pixel moments in scaled units (uint8 values divided by 255).

    Attributes:
        count: Number of pixel values.
        total: Sum of the scaled values.
        total_sq: Sum of the squared scaled values.
    """

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float:
        """Population mean (NaN when empty)."""
        return self.total / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0, as torchvision's 0.3081)."""
        if not self.count:
            return math.nan
        return math.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0))

    def __add__(self, other: PixelStats) -> PixelStats:
        return PixelStats(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq)


@dataclass(frozen=True)
class SplitMeta:
    """What the table records about one split.

    Attributes:
        rows: Number of rows in the split.
        stats: Pixel moments of the split.
        sources: Files the split was ingested from (several after appends).
        verified: True when every source matched the dataset's published hashes.
    """

    rows: int
    stats: PixelStats
    sources: tuple[SourceFile, ...] = ()
    verified: bool = False


@dataclass(frozen=True)
class TableMeta:
    """The self-description of an idxlake table (stored as ``image`` field metadata).

    Attributes:
        dataset: Registry name (``"mnist"``) or ``"generic"``.
        shape: Shape of one image record, e.g. ``(28, 28)``.
        dtype: numpy name of the image element type (bytes are little-endian).
        label_dtype: numpy name of the source labels' IDX dtype.
        class_names: Names of label values ``0..n-1``, or empty when unknown.
        transposed: True when the source stored images transposed (fixed in the table).
        scale: Divisor applied to values before statistics (255 for uint8, else 1).
        splits: Split name -> :class:`SplitMeta`.
        revision: Incremented by every idxlake commit, so that two concurrent writers always
            change the metadata and the loser gets a Delta commit conflict instead of a silent
            interleaving.
        format_version: Contract version.
    """

    dataset: str
    shape: tuple[int, ...]
    dtype: str
    label_dtype: str
    class_names: tuple[str, ...] = ()
    transposed: bool = False
    scale: float = 1.0
    splits: Mapping[str, SplitMeta] = field(default_factory=dict)
    revision: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def image_dtype(self) -> IdxDtype:
        """The :class:`IdxDtype` of the image elements."""
        return DTYPES_BY_NAME[self.dtype]

    @property
    def record_nbytes(self) -> int:
        """Length in bytes of one ``image`` value."""
        return math.prod(self.shape) * self.image_dtype.itemsize

    @property
    def rows(self) -> int:
        """Total rows over all splits."""
        return sum(s.rows for s in self.splits.values())

    def normalization(self) -> tuple[float, float]:
        """Mean and std to normalise with: the ``train`` split's if present, else all splits pooled."""
        if "train" in self.splits:
            stats = self.splits["train"].stats
        else:
            stats = sum((s.stats for s in self.splits.values()), PixelStats())
        return stats.mean, stats.std

    def with_splits(self, splits: Mapping[str, SplitMeta]) -> TableMeta:
        """Return a copy whose splits are ``splits``, sorted by name."""
        return replace(self, splits=dict(sorted(splits.items())))

    def describe(self) -> str:
        """One human line, used as the column comment and table description."""
        shape = "x".join(map(str, self.shape))
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        return f"{self.dataset}: {shape} {self.dtype} image bytes (C order, little-endian){classes}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the format stored in the table and printed by ``info --json``)."""
        doc = asdict(self)
        doc["shape"] = list(self.shape)
        doc["class_names"] = list(self.class_names)
        for name, split in self.splits.items():  # derived, for readers; null (not NaN) when empty
            doc["splits"][name]["mean"] = split.stats.mean if split.stats.count else None
            doc["splits"][name]["std"] = split.stats.std if split.stats.count else None
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TableMeta:
        """Inverse of :meth:`to_json`; ignores derived keys."""
        splits = {
            name: SplitMeta(rows=int(s["rows"]), stats=PixelStats(**s["stats"]),
                            sources=tuple(SourceFile(**f) for f in s.get("sources", ())),
                            verified=bool(s.get("verified", False)))
            for name, s in doc.get("splits", {}).items()
        }
        return cls(dataset=doc["dataset"], shape=tuple(int(d) for d in doc["shape"]), dtype=doc["dtype"],
                   label_dtype=doc["label_dtype"], class_names=tuple(doc.get("class_names", ())),
                   transposed=bool(doc.get("transposed", False)), scale=float(doc.get("scale", 1.0)),
                   splits=splits, revision=int(doc.get("revision", 0)),
                   format_version=int(doc.get("format_version", FORMAT_VERSION)))


def arrow_schema(meta: TableMeta) -> pa.Schema:
    """The Arrow schema of a table described by ``meta`` (what ingest writes).

    Args:
        meta: The table's metadata; stored on the ``image`` field.

    Returns:
        Schema with columns :data:`COLUMNS`, column comments and the metadata JSON.
    """
    label_type = DTYPES_BY_NAME[meta.label_dtype].label_type
    image_md = {"comment": meta.describe(), META_KEY: json.dumps(meta.to_json(), sort_keys=True, allow_nan=False)}
    return pa.schema([
        pa.field(SPLIT, pa.string(), nullable=False, metadata={"comment": "dataset split; partition column"}),
        pa.field(ID, pa.int64(), nullable=False,
                 metadata={"comment": "0-based position of the record in its source IDX file"}),
        pa.field(LABEL, label_type, nullable=False,
                 metadata={"comment": "class label; class names are in the image column metadata"}),
        pa.field(IMAGE, pa.binary(), nullable=False, metadata=image_md),
    ])


def meta_from_schema(schema: pa.Schema, *, where: str = "table") -> TableMeta:
    """Read and check the contract of an Arrow schema (e.g. of a Delta table).

    Args:
        schema: Arrow schema, with field metadata.
        where: Name of the table, for error messages.

    Returns:
        The :class:`TableMeta` stored on the ``image`` field.

    Raises:
        SchemaMismatchError: if a column is missing or of the wrong kind, or the metadata is absent.
    """
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise SchemaMismatchError(
            f"{where}: not an idxlake table: missing column(s) {missing}; found {schema.names}, "
            f"expected {list(COLUMNS)}. Create it with `idxlake ingest`.")
    image = schema.field(IMAGE)
    if not (pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type)
            or pa.types.is_binary_view(image.type)):
        raise SchemaMismatchError(f"{where}: column 'image' is {image.type}, expected binary")
    raw = (image.metadata or {}).get(META_KEY.encode())
    if raw is None:
        raise SchemaMismatchError(
            f"{where}: column 'image' carries no {META_KEY!r} metadata (shape, dtype, statistics); "
            "the table was not written by idxlake. Re-ingest it with `idxlake ingest`.")
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("splits", {}), dict):
            raise TypeError(f"expected a JSON object with a 'splits' object, got {type(doc).__name__}")
        meta = TableMeta.from_json(doc)
        if meta.dtype not in DTYPES_BY_NAME or meta.label_dtype not in DTYPES_BY_NAME:
            raise ValueError(f"dtype {meta.dtype!r} / label_dtype {meta.label_dtype!r}: expected IDX dtypes "
                             f"({', '.join(sorted(DTYPES_BY_NAME))})")
        if not meta.shape or min(meta.shape) < 1:
            raise ValueError(f"shape {list(meta.shape)}: expected positive dimensions")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SchemaMismatchError(f"{where}: unreadable {META_KEY!r} metadata on column 'image': {exc}") from exc
    if meta.format_version > FORMAT_VERSION:
        raise SchemaMismatchError(
            f"{where}: table format version {meta.format_version} is newer than this idxlake "
            f"understands ({FORMAT_VERSION}); upgrade idxlake.")
    return meta
