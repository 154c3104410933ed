"""The Parquet compression an ingest writes: codecs, their pyarrow names, and levels checked up front."""

from __future__ import annotations

import operator
from typing import Literal

import pyarrow as pa

from idxlake.schemas import IngestConfigError

Codec = Literal["LZ4_RAW", "ZSTD", "SNAPPY", "UNCOMPRESSED"]
"""The codecs an ingest writes (``--codec``)."""
PYARROW_CODECS: dict[str, str] = {"LZ4_RAW": "lz4_raw", "SNAPPY": "snappy", "UNCOMPRESSED": "none", "ZSTD": "zstd"}
"""Codec -> pyarrow's name for it."""


def check_compression(codec: str, level: object) -> int | None:
    """Check a codec and a compression level before anything is written.

    Args:
        codec: One of :data:`Codec`.
        level: The codec's level, or ``None`` for its default; any integer type (not ``bool``).

    Returns:
        The level as an ``int`` (``None`` stays ``None``).

    Raises:
        IngestConfigError: an unknown codec, a level that is not an integer, one outside the codec's
            range, or a level for a codec that has none.
    """
    if codec not in PYARROW_CODECS:
        raise IngestConfigError(f"unknown codec {codec!r}; use one of {', '.join(sorted(PYARROW_CODECS))}")
    if level is None:
        return None
    try:
        if isinstance(level, bool):
            raise TypeError
        level = operator.index(level)  # type: ignore[arg-type]
    except TypeError:
        raise IngestConfigError(f"compression level must be an integer, got {level!r}") from None
    name = PYARROW_CODECS[codec]
    if name == "none" or not pa.Codec.supports_compression_level(name):
        raise IngestConfigError(f"codec {codec} has no compression levels; give no level, or use LZ4_RAW "
                                "(1-12) or ZSTD")
    low, high = pa.Codec.minimum_compression_level(name), pa.Codec.maximum_compression_level(name)
    if not low <= level <= high:
        raise IngestConfigError(f"compression level {level} is outside {codec}'s range {low}..{high}")
    return level


ONE_PAGE_BYTES = 1 << 30
"""Page size limit of an ``UNCOMPRESSED`` file: a row group's image chunk is one page (below ~1 GiB)."""


def page_options(codec: Codec, row_group_rows: int) -> dict[str, int]:
    """Writer page options: one data page per column chunk for ``UNCOMPRESSED``, so the loader reads the
    records where they lie in the page (``loaders/pages.py``); pyarrow's defaults (1 MB pages) otherwise."""
    if codec != "UNCOMPRESSED":
        return {}
    return {"data_page_size": ONE_PAGE_BYTES, "max_rows_per_page": max(row_group_rows, 1)}
