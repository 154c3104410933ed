"""One address range for a streaming arena's image bytes: its region's slots, and local data files mapped in.

Reading an uncompressed image chunk from a local file costs a copy out of the page cache (MNIST
train: 47 MB an epoch, ~9.5 ms of ``readinto`` here). A memory map costs no copy, but a batch is one
gather per column, so every row a batch may draw must lie in one tensor. An :class:`AddressSpace` is
one anonymous, unreserved mapping: the region's slots at its start, then an area per data file of
the plan, into which the file is mapped read-only (``MAP_FIXED``) when a reader first needs it. The
arena gathers images from a byte-strided view of the whole range (row ``i`` starts at byte ``i``),
indexed by each record's byte offset, so records in slots and in mapped files are rows alike.

A file stays mapped while the arena lives, so later epochs neither copy nor fault its pages in:
they read the page cache in place (each pass still parses the pages and verifies their CRC-32
before a row is served). Those pages are the kernel's, shared and reclaimable: they count as the
process's ``RssFile``, while its anonymous memory stays bounded by the slots.

Linux on x86-64 and arm64 only, and only files on a local disk or in memory
(:mod:`idxlake.loaders.mounts`): a mapped page whose read fails raises ``SIGBUS`` where a read
raises an error, which on FUSE, NFS or SMB a network error or another host's ``VACUUM`` can cause.
Elsewhere, and when a mapping fails, chunks are read into the slots. A local data file truncated
in place while mapped still raises ``SIGBUS``: Delta never rewrites a data file.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
import sys
import threading

import numpy as np
import pyarrow.fs as pafs
import torch

from idxlake.loaders.mounts import mappable
from idxlake.loaders.plan import Plan

logger = logging.getLogger(__name__)

MAP_LOCAL_FILES = True
"""Map local data files into a raw-page arena's address space (``False``: read them into slots; the
benchmarks compare both). Read when an arena is made."""

PAGE = mmap.PAGESIZE
_MAP_FIXED, _MAP_NORESERVE, _PROT_NONE = 0x10, 0x4000, 0  # Linux on x86-64 and arm64 (not in Python's mmap)
MAX_SPACE = 1 << 44
"""Largest address range reserved (16 TiB): a plan whose files exceed it reads into slots."""
MAX_FILES = 4096
"""Files mapped into one range at most (each adds up to two of the process's ``vm.max_map_count``
mappings, 65530 by default); the rest are read into slots."""


def _round(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _libc_mmap():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).mmap
    except (OSError, AttributeError):  # pragma: no cover - a libc without mmap
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return fn


_MMAP = _libc_mmap()


def local_paths(plan: Plan) -> list[str] | None:
    """The local paths of the plan's files when they are on a local filesystem, mapping is on and
    available here; else ``None``."""
    if not MAP_LOCAL_FILES or _MMAP is None or not plan.files:
        return None
    if not isinstance(plan.snapshot.filesystem(), pafs.LocalFileSystem):
        return None
    paths = [plan.snapshot.file_path(f) for f in plan.files]
    return paths if mappable(paths) else None


class AddressSpace:
    """``head`` writable bytes, then an area per file for its read-only mapping, in one range.

    Args:
        head: Bytes at the start (the region's slots), zero-filled on first touch.
        paths: Local files the range has an area for (sized from ``sizes``).
        sizes: Each file's size in bytes as recorded (its area has that many, page-rounded, plus a page).

    Raises:
        OSError: the range could not be reserved.
    """

    def __init__(self, head: int, paths: list[str], sizes: list[int]) -> None:
        self.head = _round(max(head, 1))
        self.paths = paths
        self.starts = np.concatenate([[self.head], self.head + np.cumsum([_round(s) + PAGE for s in sizes])])
        size = int(self.starts[-1])
        if size > MAX_SPACE:
            raise OSError(f"{size} bytes of address space needed, at most {MAX_SPACE} reserved")
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.bytes = np.frombuffer(self._map, np.uint8)  # every view of the range keeps the mapping alive
        self.base = self.bytes.ctypes.data
        self.mapped: dict[int, int] = {}  # file -> bytes mapped (its size when mapped)
        self.failed: set[int] = set()
        self._lock = threading.Lock()
        self._inaccessible(self.head, size - self.head)  # the files' areas: no access, and no commit charge

    def _inaccessible(self, start: int, size: int) -> bool:
        """Cover ``size`` bytes from ``start`` with a fresh no-access anonymous mapping (also where a failed
        ``MAP_FIXED`` may have left a hole another allocation could take)."""
        if _MMAP is None or size <= 0:
            return False
        addr = self.base + start
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
        return bool(_MMAP(addr, size, _PROT_NONE, flags, -1, 0) == addr)

    def file(self, index: int) -> int | None:
        """Map file ``index`` (once) and return its mapped size, or ``None`` when it cannot be mapped
        (then it is read as before): larger than its area, or the mapping failed."""
        with self._lock:
            if index in self.mapped:
                return self.mapped[index]
            if index in self.failed or _MMAP is None or len(self.mapped) >= MAX_FILES:
                return None
            try:
                fd = os.open(self.paths[index], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self.failed.add(index)  # the read that follows reports what is wrong
                return None
            try:
                size = os.fstat(fd).st_size
                area = int(self.starts[index + 1] - self.starts[index])
                if size and _round(size) <= area:
                    addr = self.base + int(self.starts[index])
                    got = _MMAP(addr, _round(size), mmap.PROT_READ, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
                    if got == addr:
                        self.mapped[index] = size
                        return size
                    logger.debug("mapping %s failed (errno %d); it is read instead", self.paths[index],
                                 ctypes.get_errno())
                    if not self._inaccessible(int(self.starts[index]), area):  # pragma: no cover - no memory
                        raise OSError(f"cannot restore the area of {self.paths[index]} in the arena's range")
            finally:
                os.close(fd)
            self.failed.add(index)
            return None

    def view(self, index: int, offset: int, size: int) -> np.ndarray:
        """``size`` bytes of mapped file ``index`` from byte ``offset`` (within its mapped size)."""
        start = int(self.starts[index]) + offset
        if offset < 0 or offset + size > self.mapped[index]:
            raise ValueError(f"bytes {offset}..{offset + size} are outside the {self.mapped[index]} mapped")
        return self.bytes[start:start + size]

    def in_file(self, array: np.ndarray | torch.Tensor, nbytes: int) -> int | None:
        """The byte offset in this range of the array's first element when its ``nbytes`` lie in one
        mapped file's bytes, else ``None`` (memory elsewhere, in the slots, or in an unmapped area)."""
        ptr = array.data_ptr() if isinstance(array, torch.Tensor) else array.__array_interface__["data"][0]
        at = ptr - self.base
        if not self.head <= at < len(self.bytes):
            return None
        index = int(np.searchsorted(self.starts, at, side="right")) - 1
        size = self.mapped.get(index)
        return at if size is not None and at + nbytes <= int(self.starts[index]) + size else None
