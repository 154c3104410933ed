"""IDX headers: magic ``00 00 <dtype> <ndim>`` and big-endian uint32 dims, parsed and validated."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from idxlake.schemas import IDX_DTYPES, IdxDtype, IdxFormatError

MAX_PAYLOAD_BYTES = 1 << 40
"""Headers promising more than 1 TiB are rejected as absurd (corrupt dims)."""


@dataclass(frozen=True)
class IdxHeader:
    """A parsed IDX header.

    Attributes:
        dtype: Element type.
        dims: All dimensions; ``dims[0]`` is the record count.
    """

    dtype: IdxDtype
    dims: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the header itself."""
        return 4 + 4 * len(self.dims)

    @property
    def count(self) -> int:
        """Number of records."""
        return self.dims[0]

    @property
    def record_shape(self) -> tuple[int, ...]:
        """Shape of one record (empty for 1-D files such as labels)."""
        return self.dims[1:]

    @property
    def record_nbytes(self) -> int:
        """Bytes per record."""
        return math.prod(self.record_shape) * self.dtype.itemsize

    @property
    def payload_nbytes(self) -> int:
        """Bytes of data the header promises."""
        return self.count * self.record_nbytes

    def describe(self) -> str:
        """E.g. ``"60000x28x28 uint8"``."""
        return f"{'x'.join(map(str, self.dims))} {self.dtype.name}"



def parse_header(head: bytes, name: str) -> IdxHeader:
    """Parse and validate an IDX header.

    Args:
        head: The first bytes of the uncompressed stream (at least the full header).
        name: File name for messages.

    Raises:
        IdxFormatError: naming the byte offset, what was found and what was expected.
    """
    if len(head) == 0:
        raise IdxFormatError(f"{name}: file is empty (0 bytes of IDX data); expected a 4-byte IDX magic")
    if len(head) < 4:
        raise IdxFormatError(f"{name}: header truncated at byte {len(head)}: need 4 magic bytes; file truncated?")
    if head[0] != 0 or head[1] != 0:
        raise IdxFormatError(
            f"{name}: bytes 0-1 are 0x{head[0]:02x}{head[1]:02x}, expected 0x0000 (IDX magic); "
            "not an IDX file (or an unsupported compression)?")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x} ({d.name})" for c, d in IDX_DTYPES.items())
        raise IdxFormatError(f"{name}: byte 2: unknown IDX dtype code 0x{code:02x}; expected one of {known}")
    if ndim == 0:
        raise IdxFormatError(f"{name}: byte 3: ndim is 0; an IDX file has at least one dimension")
    need = 4 + 4 * ndim
    if len(head) < need:
        raise IdxFormatError(
            f"{name}: header truncated: {ndim} dims need {need} header bytes, file has {len(head)}; truncated?")
    dims = struct.unpack(f">{ndim}I", head[4:need])
    header = IdxHeader(IDX_DTYPES[code], tuple(dims))
    if any(d == 0 for d in header.record_shape):
        raise IdxFormatError(f"{name}: bytes 8-{need - 1}: record dims {header.record_shape} contain 0; "
                             "records would be empty")
    if header.payload_nbytes > MAX_PAYLOAD_BYTES:
        raise IdxFormatError(
            f"{name}: bytes 4-{need - 1}: dims {header.describe()} promise {header.payload_nbytes} bytes "
            f"(> {MAX_PAYLOAD_BYTES}); corrupt header?")
    return header
