"""Where a gzip stream that failed to decode goes wrong, in compressed and uncompressed bytes.

Decoding stops at the first error with little to say (``EOFError: Compressed file ended before the
end-of-stream marker``), and some bytes decoded in the failing read are lost to it. After a failure
this module walks the file again with ``zlib`` (members one by one, bounded memory) to tell a
truncated stream from a complete one followed by trailing bytes, and where.
"""

from __future__ import annotations

import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
_PIECE = 1 << 16


def diagnose(path: str | Path) -> str:
    """What is wrong with the gzip file ``path``, as a phrase (``"gzip stream truncated at compressed byte
    23572787 of 23572787, after 16777216 uncompressed bytes"``)."""
    decoded, members, offset = 0, 0, 0
    with open(path, "rb") as fh:
        data, d = b"", None
        while True:
            if not data:
                data = fh.read(_PIECE)
                if not data:
                    break
            if d is None:
                if len(data) < 2 and (more := fh.read(_PIECE)):
                    data += more
                if data[:2] != GZIP_MAGIC:
                    return (f"{len(data) + _rest(fh)} trailing bytes after the end of the gzip stream "
                            f"(at compressed byte {offset}, after {decoded} uncompressed bytes in {members} "
                            "member(s))")
                d = zlib.decompressobj(wbits=31)
            try:
                decoded += _drain(d, data)
            except zlib.error as exc:
                if "incorrect data check" in str(exc):
                    return (f"gzip CRC check failed: member {members + 1} decodes, but its data does not match its "
                            f"checksum (compressed bytes {offset}..{offset + len(data)})")
                return (f"gzip data corrupt in compressed bytes {offset}..{offset + len(data)} (after {decoded} "
                        f"uncompressed bytes): {exc}")
            used = len(data) - len(d.unused_data)
            offset += used
            data = d.unused_data
            if d.eof:
                members, d = members + 1, None
    if d is not None:
        return f"gzip stream truncated at compressed byte {offset}, after {decoded} uncompressed bytes"
    return f"gzip stream decodes completely: {decoded} uncompressed bytes in {members} member(s)"


def _drain(d: zlib._Decompress, data: bytes) -> int:
    """Bytes ``data`` decodes to, counted in bounded pieces (nothing kept)."""
    total = len(d.decompress(data, _PIECE))
    while d.unconsumed_tail and not d.eof:
        total += len(d.decompress(d.unconsumed_tail, _PIECE))
    return total


def _rest(fh) -> int:  # type: ignore[no-untyped-def]
    here = fh.tell()
    fh.seek(0, 2)
    return fh.tell() - here
