"""Reusable chunk buffers for raw page reads (:mod:`idxlake.loaders.pages`)."""

from __future__ import annotations

import mmap
import threading
import weakref

import numpy as np


def _allocate(size: int) -> np.ndarray:
    """``size`` fresh bytes: an anonymous memory map of their own from 1 MB on (see :class:`BufferPool`).

    Raises:
        MemoryError: no memory for them.
    """
    if size < 1 << 20:
        return np.empty(size, np.uint8)
    try:
        return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)
    except (OSError, OverflowError) as exc:  # ENOMEM, or a size past the address space
        raise MemoryError(f"cannot map {size} bytes for a chunk buffer ({exc})") from None


class BufferPool:
    """Reusable chunk buffers: a fresh 6 MB buffer costs ~1500 page faults (~1.3 ms) to fill, a reused one none.

    A buffer comes back to the pool when the last view of it dies, so a decoded unit that waits in
    a read-ahead future, or that a consumer still holds, is never overwritten.

    Buffers of 1 MB or more are anonymous memory maps of their own, so a freed one goes back to the
    system at once (from malloc, glibc's raised mmap threshold would keep them in its heap: a
    map-style dataset that decoded through a pool held 10 MB more than its buffer after loading).

    Args:
        keep: Free buffers kept at most (the rest are freed).
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.largest = 0
        self._free: list[np.ndarray] = []
        self._lock = threading.RLock()  # a finalizer may run inside a locked section (a GC pass)
        self.allocated = 0  # buffers made (instrumentation and tests)

    def take(self, size: int) -> np.ndarray:
        """A ``uint8`` array of ``size`` bytes, back in the pool once it and every view of it are gone."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if len(b) >= size]
            base = self._free.pop(fits[0]) if fits else None
        if base is None:
            n = max(self.largest, size)
            base = _allocate(n)
            self.largest = max(self.largest, size)  # after the allocation: a failed one changes nothing
            self.allocated += 1
        # An array over a memoryview owns nothing, so every view of it keeps *it* alive (a plain slice of
        # ``base`` would not: numpy points views at the owner), and its finalizer runs after the last view.
        out = np.frombuffer(base.data[:size], np.uint8)
        weakref.finalize(out, self._give_back, base)
        return out

    def _give_back(self, base: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(base)

