"""``BufferImage``: a PIL image mapped read-only over one row of a map-style dataset's buffer."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

MAPPED_MODES = frozenset({"L", "RGBA"})
"""Modes whose pixels PIL keeps in the record's own layout, so an image can map its row."""


class BufferImage(Image.Image):
    """A PIL image mapped read-only over one row of the dataset's buffer, as ``Image.frombuffer``.

    It is a plain ``PIL.Image.Image`` in every respect but one: while it still maps that row,
    ``np.array(image)`` (what ``ToTensor``, ``PILToTensor`` and v2 ``ToImage`` call) copies the row
    directly instead of encoding it through ``tobytes()`` (about 1 us instead of 5). Any change
    (``paste``, ``putpixel``, ...) makes PIL copy the pixels first, as for every read-only image,
    and the image then converts through PIL's own path; derived images (``crop``, ``rotate``, ...)
    are ordinary PIL images.
    """

    _row: np.ndarray | None = None
    _core: Any = None

    @classmethod
    def over(cls, row: np.ndarray, mode: str | None, size: tuple[int, int] | None) -> Image.Image:
        """The image of ``row`` (a read-only, C-contiguous uint8 view of the buffer): mapped for the
        modes PIL maps (``L``, ``RGBA``), else (``RGB``, stored 4 bytes a pixel by PIL) a plain copy."""
        mode, size = mode or "L", size or (0, 0)
        if mode not in MAPPED_MODES:
            return Image.frombuffer(mode, size, row, "raw", mode, 0, 1)
        return _make(cls, row, mode, size)

    def _mapped(self) -> bool:
        """Whether the image still maps its row (PIL replaces ``im`` when it copies before a change)."""
        return self._row is not None and self.im is self._core

    @property
    def __array_interface__(self) -> dict[str, Any]:
        if self._row is not None and self.im is self._core:
            return self._row.__array_interface__  # a read-only view of the row: np.array copies it
        return super().__array_interface__

    def frombytes(self, data: Any, decoder_name: str = "raw", *args: Any) -> None:
        """As PIL's, but on a copy of the pixels: PIL's own ``frombytes`` writes into a mapped
        buffer, which here is the dataset's."""
        if self._mapped():
            self.im = self.im.copy()
            self.readonly = 0
        super().frombytes(data, decoder_name, *args)



def _make_direct(cls: type[BufferImage], row: np.ndarray, mode: str, size: tuple[int, int]) -> BufferImage:
    """One image object over ``core.map_buffer``, what ``Image.frombuffer`` builds through three (0.8
    vs 3.5 us); it sets PIL's private ``_mode`` / ``_size``, so it is used only once checked to work."""
    image = cls()
    image.im = Image.core.map_buffer(row, size, "raw", 0, (mode, 0, 1))
    image._mode, image._size, image.readonly = mode, size, 1
    image._row, image._core = row, image.im
    return image


def _make_frombuffer(cls: type[BufferImage], row: np.ndarray, mode: str, size: tuple[int, int]) -> BufferImage:
    """``Image.frombuffer``, re-classed: the public way."""
    image = Image.frombuffer(mode, size, row, "raw", mode, 0, 1)
    image.__class__ = cls
    assert isinstance(image, cls)
    image._row, image._core = row, image.im
    return image


def _direct_works() -> bool:
    """Whether :func:`_make_direct` builds the same image as ``Image.frombuffer`` on this Pillow."""
    row = np.arange(24, dtype=np.uint8).reshape(4, 6)
    row.flags.writeable = False
    try:
        image = _make_direct(BufferImage, row, "L", (6, 4))
        reference = Image.frombuffer("L", (6, 4), row, "raw", "L", 0, 1)
        return (image.mode, image.size, image.readonly, image.tobytes(), image.getpixel((5, 3))) == (
            reference.mode, reference.size, reference.readonly, reference.tobytes(), reference.getpixel((5, 3)))
    except Exception:  # another Pillow's internals: use the public constructor
        return False


_make = _make_direct if _direct_works() else _make_frombuffer
