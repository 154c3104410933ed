"""Registry of the six IDX element types and how each maps to numpy and Arrow.

IDX stores data big-endian; idxlake stores image bytes in the table in
little-endian (native on every platform we support) C order, so multi-byte
dtypes are byte-swapped once during ingest and never again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class IdxDtype:
    """One IDX element type.

    Attributes:
        code: The third magic byte (0x08 ... 0x0E).
        name: The numpy dtype name, e.g. ``"uint8"``.
        label_type: Arrow type used for the ``label`` column when labels have this dtype:
            the smallest *signed* type holding every value of the dtype (Spark has no unsigned types).
    """

    code: int
    name: str
    label_type: pa.DataType

    @property
    def big_endian(self) -> np.dtype:
        """The numpy dtype of the data as stored in an IDX file."""
        return np.dtype(self.name).newbyteorder(">")

    @property
    def little_endian(self) -> np.dtype:
        """The numpy dtype of the data as stored in the table's ``image`` bytes."""
        return np.dtype(self.name).newbyteorder("<")

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return np.dtype(self.name).itemsize

    @property
    def is_integer(self) -> bool:
        """True for the four integer types."""
        return np.issubdtype(np.dtype(self.name), np.integer)


IDX_DTYPES: dict[int, IdxDtype] = {
    0x08: IdxDtype(0x08, "uint8", pa.int16()),
    0x09: IdxDtype(0x09, "int8", pa.int8()),
    0x0B: IdxDtype(0x0B, "int16", pa.int16()),
    0x0C: IdxDtype(0x0C, "int32", pa.int32()),
    0x0D: IdxDtype(0x0D, "float32", pa.float32()),
    0x0E: IdxDtype(0x0E, "float64", pa.float64()),
}
"""IDX dtype code -> :class:`IdxDtype`; the single place that knows the codes."""

DTYPES_BY_NAME: dict[str, IdxDtype] = {d.name: d for d in IDX_DTYPES.values()}
"""numpy dtype name -> :class:`IdxDtype`."""


def dtype_by_name(name: str) -> IdxDtype:
    """Look up an IDX dtype by its numpy name.

    Args:
        name: e.g. ``"uint8"`` or ``"float32"``.

    Returns:
        The matching :class:`IdxDtype`.

    Raises:
        KeyError: if ``name`` is not one of the six IDX types.
    """
    try:
        return DTYPES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an IDX dtype; expected one of {sorted(DTYPES_BY_NAME)}") from None
