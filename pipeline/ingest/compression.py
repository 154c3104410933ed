"""The Parquet compression an ingest writes: codecs, their pyarrow names, and levels checked up front."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from idxlake.schemas import IngestConfigError

Codec = Literal["LZ4_RAW", "ZSTD", "SNAPPY", "UNCOMPRESSED"]
"""The codecs an ingest writes (``--codec``)."""
PYARROW_CODECS: dict[str, str] = {"LZ4_RAW": "lz4_raw", "SNAPPY": "snappy", "UNCOMPRESSED": "none", "ZSTD": "zstd"}
"""Codec -> pyarrow's name for it."""


def check_compression(codec: Codec, level: int | None) -> None:
    """Refuse a compression level its codec does not have (before anything is written).

    Raises:
        IngestConfigError: naming the codec's range, or that it has no levels.
    """
    if level is None:
        return
    name = PYARROW_CODECS[codec]
    if name == "none" or not pa.Codec.supports_compression_level(name):
        raise IngestConfigError(f"codec {codec} has no compression levels; drop --compression-level or use "
                                "LZ4_RAW (1-12) or ZSTD")
    low, high = pa.Codec.minimum_compression_level(name), pa.Codec.maximum_compression_level(name)
    if not low <= level <= high:
        raise IngestConfigError(f"compression level {level} is outside {codec}'s range {low}..{high}")
