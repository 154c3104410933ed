"""IDX writer: the inverse of :mod:`idxlake.pipeline.idx.read`, used by ``export`` and by test fixtures."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from idxlake.schemas import DTYPES_BY_NAME, IdxFormatError


def idx_header(dtype: str | np.dtype, dims: tuple[int, ...]) -> bytes:
    """Encode an IDX header.

    Args:
        dtype: Element type (one of the six IDX types).
        dims: All dimensions, record count first.

    Raises:
        IdxFormatError: for a dtype IDX cannot hold or no dims.
    """
    name = np.dtype(dtype).name
    if name not in DTYPES_BY_NAME:
        raise IdxFormatError(f"dtype {name} cannot be stored in IDX; use one of {sorted(DTYPES_BY_NAME)}")
    if not dims:
        raise IdxFormatError("IDX needs at least one dimension")
    return bytes([0, 0, DTYPES_BY_NAME[name].code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def write_idx_chunks(path: str | Path, chunks: Iterable[np.ndarray], *, dtype: str, dims: tuple[int, ...],
                     compress: bool | None = None) -> Path:
    """Write an IDX file from chunks of records (memory bounded by one chunk).

    Args:
        path: Output file; compressed when ``compress`` is true (default: name ends in ``.gz``).
        chunks: Arrays of records in order, any byte order; together exactly ``dims``.
        dtype: Element type name.
        dims: All dimensions, record count first.
        compress: Force or forbid gzip.

    Raises:
        IdxFormatError: if the chunks do not add up to ``dims``.
    """
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    header = idx_header(dtype, dims)
    be = DTYPES_BY_NAME[np.dtype(dtype).name].big_endian
    written = 0
    try:
        with open(path, "wb") as raw:
            # mtime=0 and no file name: identical content gives identical bytes.
            out: BinaryIO = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
                             if compress else raw)  # type: ignore[assignment]
            with out:
                out.write(header)
                for chunk in chunks:
                    if tuple(chunk.shape[1:]) != tuple(dims[1:]):
                        raise IdxFormatError(f"{path.name}: chunk of shape {chunk.shape} does not match dims {dims}")
                    out.write(np.ascontiguousarray(chunk, dtype=be).tobytes())
                    written += chunk.shape[0]
        if written != dims[0]:
            raise IdxFormatError(f"{path.name}: wrote {written} records, header says {dims[0]}")
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a partial IDX file behind
        raise
    return path


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` (records along axis 0) as an IDX file.

    Args:
        path: Output file; gzip when ``compress`` (default: name ends in ``.gz``).
        array: Any of the six IDX dtypes, ``ndim >= 1``.
        compress: Force or forbid gzip.
    """
    return write_idx_chunks(path, [array], dtype=array.dtype.name, dims=tuple(array.shape), compress=compress)
