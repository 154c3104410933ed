"""Decompress an ``LZ4_RAW`` PLAIN ``image`` column chunk straight into the arena.

pyarrow decodes an LZ4_RAW ``BYTE_ARRAY`` chunk in three passes over its values: LZ4 into a page
buffer, the PLAIN values copied out into a binary array, and (in the loader) that array copied
into the arena; and it checks each page's CRC-32 with a slow software CRC. A PLAIN page's
decompressed bytes are the records as ``[length][record]`` back to back, so this module checks
each page's CRC-32 on its stored bytes (ISA-L), decompresses each page (``cramjam``'s LZ4 block
decoder, the GIL released) to where its records belong in one output buffer (a region slot when
one is free: the arena then copies nothing), and checks every length prefix in one comparison.

Every size is checked before it reaches the decoder: a page's values go into exactly the bytes
its header promises for its value count (``count x (record + 4)``), inside the output, and must
fill them.
"""

from __future__ import annotations

import cramjam
import numpy as np

from idxlake.loaders.pages import PageError, check_lengths, chunk_pages


def decompress_pages(buf: np.ndarray, out: np.ndarray, *, record: int, rows: int, start: int,
                     verify: bool) -> np.ndarray:
    """The records of a PLAIN, LZ4_RAW, required ``BYTE_ARRAY`` column chunk, decompressed into ``out``.

    Args:
        buf: The chunk's bytes as stored (``uint8``).
        out: ``rows x (record + 4)`` bytes (``uint8``, contiguous) for the values, length prefixes included.
        record: Bytes every value must have.
        rows: Values the row group holds.
        start: The chunk's byte offset in its file (for messages).
        verify: Check each page's CRC-32 when the page has one.

    Returns:
        A ``[rows, record]`` ``uint8`` view of ``out`` (stride ``record + 4``).

    Raises:
        PageError: a header that does not parse or overruns the chunk, a CRC mismatch, a page that does
            not decompress to the size its header promises, a value count that is not the row group's
            (``corrupt`` set), or a value that is not ``record`` bytes long (``corrupt`` unset).
    """
    stride, pos, seen = record + 4, 0, 0
    if len(out) != rows * stride:
        raise ValueError(f"an output of {len(out)} bytes for {rows} values of {stride}")
    for page in chunk_pages(buf, start=start, verify=verify, compressed=True):
        want = page.count * stride
        if page.size - page.skip != want:
            raise PageError(f"page at byte {page.at} holds {page.size - page.skip} value bytes once decompressed "
                            f"for {page.count} values; {record}-byte values need {want}", page.at)
        if pos + want > len(out):
            raise PageError(f"chunk at byte {start} holds more than the row group's {rows} values", page.at)
        values, into = page.data[page.skip:], out[pos:pos + want]
        if page.compressed:
            try:
                # output_len: a raw block (without it, cramjam first reads a 4-byte size prefix)
                got = int(cramjam.lz4.decompress_block_into(values.data, into.data, output_len=want))
            except cramjam.DecompressionError as exc:
                raise PageError(f"page at byte {page.at} does not decompress as LZ4_RAW ({exc})", page.at) from None
            if got != want:
                raise PageError(f"page at byte {page.at} decompresses to {got} bytes, its header promises {want}",
                                page.at)
        elif len(values) == want:
            into[:] = values
        else:
            raise PageError(f"page at byte {page.at} holds {len(values)} value bytes for {page.count} values; "
                            f"{record}-byte values need {want}", page.at)
        check_lengths(out, pos, page.count, record=record, seen=seen, at=page.at)
        pos, seen = pos + want, seen + page.count
    if seen != rows:
        raise PageError(f"chunk at byte {start} holds {seen} values, the row group {rows}", start)
    return np.ndarray((rows, record), np.uint8, out, 4, (stride, 1))
