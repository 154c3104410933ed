"""Read an uncompressed PLAIN ``image`` column chunk straight from its Parquet pages.

pyarrow decodes an uncompressed ``BYTE_ARRAY`` column by copying every value out of its page
and verifying each page's CRC with a slow software CRC-32 (MNIST train's images: 17.4 ms of CPU an
epoch, verified). Those pages already hold the records as ``[length][record]`` back to back, so
this module reads the column chunk's bytes into a reusable buffer, parses the page headers (the
Thrift compact protocol, every size checked against the chunk before it is used), verifies each
page's CRC-32 with ISA-L, checks every length prefix in one vectorised comparison, and returns the
records as ``[n, record]`` views of that buffer (4.8 ms for the same epoch: ``benchmarks/bench_decode.py``).

Only chunks that have this layout take this path (:func:`plain_chunk`): ``UNCOMPRESSED``,
``BYTE_ARRAY`` with ``PLAIN`` values, no dictionary, a required, non-repeated column, data pages v1
or v2. Everything else is read by pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from idxlake.loaders.buffers import BufferPool  # noqa: F401 (re-exported: pages.BufferPool)

try:  # ISA-L's CRC-32 runs at ~16 GB/s here, zlib's at ~4
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a core dependency
    from zlib import crc32 as _crc32

CODECS = frozenset({"UNCOMPRESSED", "LZ4_RAW"})
"""Codecs whose image chunks are read here (LZ4_RAW by :mod:`idxlake.loaders.lz4pages`); others: pyarrow."""

RAW_PAGES = True
"""Read uncompressed PLAIN image chunks from their pages (``False``: always pyarrow; the benchmarks compare both).
Read when a reader first reads a row group: set it before a dataset's first pass."""

DATA_PAGE, DATA_PAGE_V2 = 0, 3
"""Parquet ``PageType`` values read here (any other page type in an image chunk is refused)."""
_PAGE_FIELDS = {1: None, 2: None, 3: None, 4: None, 5: {1: None, 2: None},
                8: {1: None, 2: None, 4: None, 5: None, 6: None, 7: None}}
"""PageHeader fields read: type, uncompressed and compressed size, crc, DataPageHeader's num_values and
encoding, and DataPageHeaderV2's num_values, num_nulls, encoding, the two level lengths and is_compressed."""
PLAIN = 0
"""Parquet ``Encoding.PLAIN``: the only value encoding read here."""
_PLAIN_ENCODINGS = frozenset({"PLAIN", "RLE", "BIT_PACKED"})


class PageError(ValueError):
    """A page of a chunk does not read; ``offset`` is its byte offset in the file."""

    def __init__(self, message: str, offset: int, *, corrupt: bool = True) -> None:
        super().__init__(message)
        self.offset = offset
        self.corrupt = corrupt  # False: readable, but not the records the contract promises


@dataclass(frozen=True)
class Chunk:
    """Where an image column chunk lies in its file, and its codec (``UNCOMPRESSED`` or ``LZ4_RAW``)."""

    offset: int
    size: int
    codec: str = "UNCOMPRESSED"


@dataclass(frozen=True)
class Page:
    """A data page of a chunk, its header checked (:func:`chunk_pages`)."""

    at: int  # byte offset of its header in the file
    data: np.ndarray  # its bytes as stored, after the header
    count: int  # values
    skip: int  # bytes of levels before the values (data page v2; never compressed)
    size: int  # bytes once decompressed (levels and values)
    compressed: bool  # its values are compressed with the chunk's codec


def plain_chunk(metadata: pq.FileMetaData, row_group: int, column: int, *, record: int,
                file_size: int | None = None) -> Chunk | None:
    """The chunk of ``column`` in ``row_group`` when it has the layout this module reads, else ``None``
    (pyarrow then reads it, and reports what is wrong with it): also when the footer places it past the
    end of the file (``file_size``), or gives it more bytes than ``record``-byte values and their page
    headers can take, so that a damaged footer never sizes a buffer."""
    meta = metadata.row_group(row_group).column(column)
    schema = metadata.schema.column(column)
    rows = metadata.row_group(row_group).num_rows
    if meta.total_compressed_size > 2 * rows * (record + 4) + (1 << 20):
        return None
    if meta.data_page_offset < 4 or (file_size is not None
                                     and meta.data_page_offset + meta.total_compressed_size > file_size):
        return None  # before the file's magic, or past its end
    codec = {"UNCOMPRESSED": "UNCOMPRESSED", "LZ4": "LZ4_RAW"}.get(meta.compression)  # pyarrow's "LZ4": LZ4_RAW
    if (codec is None or codec not in CODECS or meta.physical_type != "BYTE_ARRAY" or meta.has_dictionary_page
            or not set(meta.encodings) <= _PLAIN_ENCODINGS or schema.max_definition_level != 0
            or schema.max_repetition_level != 0 or meta.total_compressed_size <= 0):
        return None
    return Chunk(int(meta.data_page_offset), int(meta.total_compressed_size), codec)


def _varint(b: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _count(b: memoryview, i: int, n: int) -> int:
    if n > len(b) - i:  # every element takes a byte at least: a count past the header is damage
        raise ValueError(f"a container of {n} elements in {len(b) - i} bytes")
    return n


def _skip(b: memoryview, i: int, kind: int, depth: int, *, element: bool = False) -> int:
    if depth > 16:
        raise ValueError("structures nested too deep")
    if kind in (1, 2):  # a field's boolean lives in its header; a container's booleans take a byte each
        return i + 1 if element else i
    if kind == 3:
        return i + 1
    if kind in (4, 5, 6):
        return _varint(b, i)[1]
    if kind == 7:
        return i + 8
    if kind == 8:
        n, i = _varint(b, i)
        return i + n
    if kind in (9, 10):  # list, set
        head = b[i]
        i += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, i = _varint(b, i)
        for _ in range(_count(b, i, n)):
            i = _skip(b, i, elem, depth + 1, element=True)
        return i
    if kind == 11:  # map
        n, i = _varint(b, i)
        if n:
            kinds = b[i]
            i += 1
            for _ in range(_count(b, i, n)):
                i = _skip(b, _skip(b, i, kinds >> 4, depth + 1, element=True), kinds & 0x0F, depth + 1, element=True)
        return i
    if kind == 12:
        return _struct(b, i, None, depth + 1)[1]
    raise ValueError(f"unknown Thrift type {kind}")


def _struct(b: memoryview, i: int, want: dict | None, depth: int = 0) -> tuple[dict[int, Any], int]:
    """Read a compact-protocol struct from ``b[i:]``: the integer fields and sub-structs named in
    ``want`` (field id -> ``None`` for an integer, a dict for a struct), every other field skipped."""
    out: dict[int, Any] = {}
    field = 0
    while True:
        head = b[i]
        i += 1
        if head == 0:
            return out, i
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field += delta
        else:
            raw, i = _varint(b, i)
            field = (raw >> 1) ^ -(raw & 1)
        sub = want.get(field, False) if want is not None else False
        if sub is None and kind in (1, 2):  # a boolean field: its value is its type (1 true, 2 false)
            out[field] = int(kind == 1)
        elif sub is None and kind in (3, 4, 5, 6):
            if kind == 3:
                out[field], i = b[i] - 256 * (b[i] > 127), i + 1
            else:
                raw, i = _varint(b, i)
                out[field] = (raw >> 1) ^ -(raw & 1)
        elif isinstance(sub, dict) and kind == 12:
            out[field], i = _struct(b, i, sub, depth + 1)
        else:
            i = _skip(b, i, kind, depth)


def chunk_pages(buf: np.ndarray, *, start: int, verify: bool, compressed: bool) -> Iterator[Page]:
    """The data pages of a PLAIN, required ``BYTE_ARRAY`` column chunk, each header parsed and checked.

    Args:
        buf: The chunk's bytes as stored (``uint8``).
        start: The chunk's byte offset in its file (for messages).
        verify: Check each page's CRC-32 (of its bytes as stored) when the page has one (as pyarrow does).
        compressed: The chunk has a codec (data page v1 values always compressed, v2 per its header).

    Raises:
        PageError: a header that does not parse or overruns the chunk, a CRC mismatch, a page type,
            encoding, null count or level length that is not this layout.
    """
    view, size, i = buf.data, len(buf), 0
    while i < size:
        at = start + i
        try:
            header, body = _struct(view, i, _PAGE_FIELDS)
        except (IndexError, ValueError, RecursionError) as exc:
            why = "it runs past the chunk" if isinstance(exc, IndexError) else str(exc)
            raise PageError(f"page header at byte {at} does not parse ({why})", at) from None
        kind, length, full = header.get(1), header.get(3), header.get(2)
        if not isinstance(length, int) or length < 0 or body + length > size:
            raise PageError(f"page at byte {at} claims {length} bytes, the chunk has {size - body} left", at)
        page = buf[body:body + length]
        crc = header.get(4)
        if verify and isinstance(crc, int) and _crc32(page) != crc & 0xFFFFFFFF:
            raise PageError(f"page at byte {at}: CRC-32 {_crc32(page):#010x} computed, {crc & 0xFFFFFFFF:#010x} "
                            "stored", at)
        packed = compressed
        if kind == DATA_PAGE:
            count, skip, encoding = header.get(5, {}).get(1), 0, header.get(5, {}).get(2)
        elif kind == DATA_PAGE_V2:
            v2 = header.get(8, {})
            count, skip, encoding = v2.get(1), (v2.get(5) or 0) + (v2.get(6) or 0), v2.get(4)
            packed = compressed and v2.get(7, 1) == 1  # is_compressed: true unless written false
            if not 0 <= skip <= length:
                raise PageError(f"page at byte {at} claims {skip} bytes of levels in {length}", at)
            if v2.get(2):
                raise PageError(f"page at byte {at} has {v2.get(2)} nulls in a required column", at)
        else:
            raise PageError(f"page at byte {at} has type {kind}, expected a data page", at)
        if encoding != PLAIN:
            raise PageError(f"page at byte {at} has encoding {encoding}, expected PLAIN (0)", at)
        if not isinstance(count, int) or count < 0:
            raise PageError(f"page at byte {at} claims {count} values", at)
        full = full if packed else length
        if not isinstance(full, int) or full < skip:
            raise PageError(f"page at byte {at} claims {full} bytes once decompressed, with {skip} of levels", at)
        yield Page(at, page, count, skip, full, packed)
        i = body + length


def check_lengths(data: np.ndarray, offset: int, count: int, *, record: int, seen: int, at: int) -> None:
    """The ``count`` 4-byte length prefixes in ``data`` from byte ``offset``, one every ``record + 4`` bytes,
    are all ``record`` (one vectorised comparison); ``seen``: values before these (for messages).

    Raises:
        PageError: ``corrupt`` unset (readable, but not this table's records).
    """
    lengths = np.ndarray((count,), "<i4", data, offset, (record + 4,))
    if count and not (lengths == record).all():
        bad = int(np.argmax(lengths != record))
        raise PageError(f"value {seen + bad} (page at byte {at}) is {int(lengths[bad])} bytes, expected {record}", at,
                        corrupt=False)


def read_pages(buf: np.ndarray, *, record: int, rows: int, start: int, verify: bool) -> list[np.ndarray]:
    """The records of a PLAIN, uncompressed, required ``BYTE_ARRAY`` column chunk.

    Args:
        buf: The chunk's bytes (``uint8``).
        record: Bytes every value must have.
        rows: Values the row group holds.
        start: The chunk's byte offset in its file (for messages).
        verify: Check each page's CRC-32 when the page has one (as pyarrow does).

    Returns:
        One ``[n, record]`` ``uint8`` view of ``buf`` per data page, in order.

    Raises:
        PageError: a header that does not parse or overruns the chunk, a CRC mismatch, a page type or
            size that is not this layout (``corrupt`` set), or a value that is not ``record`` bytes long
            (``corrupt`` unset).
    """
    stride, seen, parts = record + 4, 0, []
    for page in chunk_pages(buf, start=start, verify=verify, compressed=False):
        values = len(page.data) - page.skip
        if values != page.count * stride:
            raise PageError(f"page at byte {page.at} holds {values} value bytes for {page.count} values; "
                            f"{record}-byte values need {page.count * stride}", page.at)
        if page.count:
            check_lengths(page.data, page.skip, page.count, record=record, seen=seen, at=page.at)
            parts.append(np.ndarray((page.count, record), np.uint8, page.data, page.skip + 4, (stride, 1)))
        seen += page.count
    if seen != rows:
        raise PageError(f"chunk at byte {start} holds {seen} values, the row group {rows}", start)
    return parts
