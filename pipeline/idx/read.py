"""Streaming, validating decoder for IDX files (raw or gzip-compressed).

IDX layout: magic ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian uint32 dims,
then the big-endian payload in C order. Compression is detected from the first
bytes (gzip magic ``1f 8b``), never from the file name. Records are produced in
bounded chunks, so memory is set by the chunk size and not by the file size; the
gzip stream is read to its end so its CRC is always checked, and the sha256 of the
uncompressed bytes plus the md5 of the stored bytes are computed on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from idxlake.pipeline.idx.gzipcheck import diagnose
from idxlake.pipeline.idx.header import IdxHeader, parse_header
from idxlake.schemas import IdxFormatError

logger = logging.getLogger(__name__)

_ISAL_ERRORS: tuple[type[BaseException], ...] = ()
try:  # ISA-L gzip is ~2.5x faster than zlib at decompression; optional.
    from isal import igzip as _gzip_impl
    from isal import igzip_lib, isal_zlib

    GZIP_BACKEND = "isal"
    _ISAL_ERRORS = (igzip_lib.IsalError, isal_zlib.error)  # type: ignore[assignment]
except ImportError:  # pragma: no cover - exercised only without isal installed
    _gzip_impl = gzip  # type: ignore[misc]
    GZIP_BACKEND = "zlib"

GZIP_MAGIC = b"\x1f\x8b"
MAX_COUNTED_EXTRA = 1 << 20
"""Extra bytes after the payload are counted up to this many (then "at least N")."""
DEFAULT_CHUNK_BYTES = 8 << 20
"""Default decoded bytes per chunk: the unit that bounds memory."""

_BAD_GZIP: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, gzip.BadGzipFile, *_ISAL_ERRORS)


@dataclass(frozen=True)
class IdxDigest:
    """Hashes of a fully read IDX file.

    Attributes:
        sha256: Of the uncompressed IDX bytes (header + payload).
        md5: Of the bytes as stored (the ``.gz`` bytes when compressed).
        nbytes: Uncompressed size.
        compressed: Whether the file was gzip-compressed.
    """

    sha256: str
    md5: str
    nbytes: int
    compressed: bool


class _HashingReader(io.RawIOBase):
    """Raw reader that md5-hashes every byte it hands out."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self.md5.update(memoryview(buffer)[:n])
            self.consumed += n
        return n or 0

    def drain(self) -> None:
        """Hash whatever the decompressor did not need to read."""
        while chunk := self._raw.read(1 << 20):
            self.md5.update(chunk)
            self.consumed += len(chunk)


GZIP_DEFLATE = 8
GZIP_RESERVED_FLAGS = 0xE0
"""FLG bits 5-7 (RFC 1952): reserved, must be zero; ``gzip -t`` refuses a file with any set."""


def _check_gzip_header(head: bytes, name: str) -> None:
    """Accept only what ``gzip -t`` accepts: method deflate, no reserved flag bits."""
    if len(head) < 4:
        raise IdxFormatError(f"{name}: file is {len(head)} bytes, shorter than a gzip header (10 bytes); the file "
                             "is damaged, re-download it")
    if head[2] != GZIP_DEFLATE:
        raise IdxFormatError(f"{name}: gzip header names compression method {head[2]}, "
                             f"expected {GZIP_DEFLATE} (deflate); the file is damaged, re-download it")
    if head[3] & GZIP_RESERVED_FLAGS:
        raise IdxFormatError(f"{name}: gzip header has reserved flag bits set (FLG=0x{head[3]:02x}); "
                             "`gzip -t` refuses such a file: it is damaged, re-download it")


class IdxFile:
    """An open IDX file, decoded in bounded chunks.

    Use as a context manager::

        with IdxFile(path) as f:
            for chunk in f.chunks():      # np.ndarray [n, *record_shape], native byte order
                ...
            digest = f.digest             # after the last chunk

    Args:
        path: File to read.
        name: Name used in messages (default: the file name).
    """

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._open()
        except BaseException:
            self._raw.close()
            raise

    def _open(self) -> None:
        self._hasher = _HashingReader(self._raw)
        magic = self._raw.read(4)
        self._raw.seek(0)
        self.compressed = magic[:2] == GZIP_MAGIC
        if self.compressed:
            _check_gzip_header(magic, self.name)
        buffered = io.BufferedReader(self._hasher, 1 << 20)
        self._stream: io.BufferedIOBase = (_gzip_impl.GzipFile(fileobj=buffered, mode="rb") if self.compressed
                                  else buffered)
        self._sha = hashlib.sha256()
        self._offset = 0
        self.digest: IdxDigest | None = None
        head = self._read(4)
        if len(head) == 4 and head[0] == 0 and head[1] == 0 and head[3] > 0:
            head += self._read(4 * head[3])
        self.header = parse_header(head, self.name)

    def __enter__(self) -> IdxFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""
        self._raw.close()

    def _gzip_error(self, exc: BaseException) -> IdxFormatError:
        header = getattr(self, "header", None)
        promise = f"; the IDX header promises {header.nbytes + header.payload_nbytes} ({header.describe()})" \
            if header else ""
        try:
            found = diagnose(self.path)  # the decoder's own error says little, and where only roughly
        except OSError:
            found = f"gzip stream {'truncated' if isinstance(exc, EOFError) else 'corrupt'} after " \
                    f"{self._offset} uncompressed bytes"
        fix = ("strip the trailing bytes or re-download the file (`gzip -t` warns about them, idxlake refuses)"
               if "trailing bytes" in found else "re-download the file")
        return IdxFormatError(f"{self.name}: {found}{promise} ({exc}); {fix}")

    def _readinto(self, view: memoryview) -> int:
        filled = 0
        try:
            while filled < len(view):
                n = self._stream.readinto(view[filled:])
                if not n:
                    break
                filled += n
        except _BAD_GZIP as exc:
            raise self._gzip_error(exc) from exc
        self._sha.update(view[:filled])
        self._offset += filled
        return filled

    def _read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self._readinto(memoryview(buf))
        return bytes(buf[:got])

    def chunks(self, records: int | None = None, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Yield the records in order, ``records`` at a time (the last chunk may be shorter).

        Args:
            records: Records per chunk; default: as many as fit in ``chunk_bytes``.
            chunk_bytes: Decoded bytes per chunk when ``records`` is not given.

        Yields:
            Arrays of shape ``[n, *record_shape]`` in native (little-endian) byte order. Each
            array owns fresh memory.

        Raises:
            IdxFormatError: when the payload is shorter or longer than the header promises,
                or the gzip stream is truncated or corrupt (CRC).
        """
        header = self.header
        per_chunk = records or max(1, chunk_bytes // max(header.record_nbytes, 1))
        be, le = header.dtype.big_endian, header.dtype.little_endian
        remaining = header.count
        while remaining:
            n = min(per_chunk, remaining)
            need = n * header.record_nbytes
            if header.record_nbytes <= chunk_bytes:
                buf = np.empty(need, dtype=np.uint8)
                got = self._readinto(memoryview(buf.data))
            else:  # records larger than a chunk: grown as the bytes arrive, so a truncated file never
                grown = bytearray()  # allocates what its header promises (a 1 TiB record)
                while len(grown) < need and (piece := self._read(min(chunk_bytes, need - len(grown)))):
                    grown += piece
                buf, got = np.frombuffer(grown, dtype=np.uint8), len(grown)
            if got < need:
                payload = self._offset - header.nbytes
                raise IdxFormatError(
                    f"{self.name}: payload is {payload} bytes, header promises {header.payload_nbytes} "
                    f"({header.describe()}); file truncated?")
            arr = buf.view(be)
            if be.itemsize > 1 and np.little_endian:
                arr = arr.byteswap(inplace=True).view(le)
            yield arr.reshape((n, *header.record_shape))
            remaining -= n
        self._finish()

    def _finish(self) -> None:
        extra = self._read(1 << 16)
        if extra:
            total = len(extra)
            while total < MAX_COUNTED_EXTRA and (more := self._read(1 << 20)):  # a gzip bomb is not read to its end
                total += len(more)
            counted = f"{total}" if total < MAX_COUNTED_EXTRA else f"at least {total}"
            raise IdxFormatError(
                f"{self.name}: payload is longer than the header promises ({self.header.describe()} = "
                f"{self.header.payload_nbytes} bytes): {counted} extra bytes from byte offset "
                f"{self.header.nbytes + self.header.payload_nbytes}; wrong header or concatenated files?")
        self._hasher.drain()
        self.digest = IdxDigest(sha256=self._sha.hexdigest(), md5=self._hasher.md5.hexdigest(),
                                nbytes=self._offset, compressed=self.compressed)

    def read_all(self) -> np.ndarray:
        """Decode the whole file into one array (for small files and tests)."""
        parts = list(self.chunks())
        if not parts:
            return np.empty((0, *self.header.record_shape), dtype=self.header.dtype.little_endian)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_idx(path: str | Path) -> np.ndarray:
    """Decode a whole IDX file (raw or .gz) into an array of native byte order.

    Args:
        path: The file.

    Raises:
        IdxFormatError: if the file is malformed.
    """
    with IdxFile(path) as f:
        return f.read_all()


def scan_idx(path: str | Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[IdxHeader, IdxDigest]:
    """Validate a whole file and hash it, holding one chunk at a time.

    Returns:
        The header and the digest.
    """
    with IdxFile(path) as f:
        for _ in f.chunks(chunk_bytes=chunk_bytes):
            pass
        assert f.digest is not None
        return f.header, f.digest
