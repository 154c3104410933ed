"""Where a pass keeps its decoded row groups: the :class:`Arena`, and the :class:`Region` that raw reads land in.

A batch is one gather per column of the arena, so every row group in use must sit in the arena's
tensors. pyarrow's decoded row groups are copied in (on the main thread, ~4 ms of MNIST train's
cold epoch: one pass over 47 MB). An uncompressed image chunk read raw (:mod:`idxlake.loaders.pages`)
is read by its reader thread straight into a slot of the arena's :class:`Region`, placed so that
its page's records fall on the region's rows: the arena's image column is a strided view of the
region (``[length][record]`` rows, stride ``record + 4``), and nothing is copied.
"""

from __future__ import annotations

import logging
import threading
import weakref

import numpy as np
import torch

from idxlake.loaders.decode import Batch
from idxlake.loaders.gather import numpy_now
from idxlake.loaders.mapped import AddressSpace, local_paths
from idxlake.loaders.plan import Plan
from idxlake.schemas import IMAGE

logger = logging.getLogger(__name__)

SPARE_SLOTS = 4
"""Region slots beyond the units in use and the ``prefetch_depth`` reads in flight: the reads of an abandoned
pass still running (one per reader thread, 2) and a unit put while the future that held it is not yet dropped."""


class Region:
    """Slots for raw image chunks in one buffer, viewed as ``[rows, *shape]`` records at stride ``record + 4``.

    A slot is free again once the arena has released its unit and every view of the chunk read into
    it is gone (a read-ahead future, an abandoned pass), so a slot is never written while read.

    With ``files``, the slots are the head of an :class:`~idxlake.loaders.mapped.AddressSpace` into which
    those local files are mapped (:attr:`space`): records read from a mapped file are in the range too.

    Args:
        slots: Number of slots.
        slot_rows: Records a slot holds (the largest unit's rows).
        record: Bytes of one record.
        files: Local paths and recorded sizes of the data files to map, or ``None``.
    """

    def __init__(self, slots: int, slot_rows: int, record: int,
                 files: tuple[list[str], list[int]] | None = None) -> None:
        self.slots, self.stride, self.record = slots, record + 4, record
        self.span = slot_rows + 1  # rows per slot: the first holds the page header
        self.rows = slots * self.span
        self.space: AddressSpace | None = None
        if files is not None:
            try:
                self.space = AddressSpace(self.rows * self.stride, *files)
                if len(self.space.bytes) * record >= 1 << 62:  # image_rows' elements must count in an int64
                    raise OverflowError(f"{len(self.space.bytes)} bytes of {record}-byte records")
            except (OSError, ValueError, OverflowError) as exc:  # e.g. no address space: read into slots
                self.space = None
                logger.debug("no address space for mapped files (%s); chunks are read into slots", exc)
        self.buffer = (self.space.bytes[:self.rows * self.stride] if self.space is not None
                       else np.empty(self.rows * self.stride, np.uint8))
        self.records = np.ndarray((self.rows, record), np.uint8, self.buffer, 4, (self.stride, 1))
        self._base = self.buffer.ctypes.data
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.RLock()  # a finalizer may run inside a locked section (a GC pass)
        self.reserve = 0  # free slots reads leave for copies (:meth:`slot`): live row groups not yet in

    def free_slots(self) -> int:
        """Slots free now."""
        return len(self._free)

    def _take(self, leave: int = 0) -> int | None:
        with self._lock:
            return self._free.pop() if len(self._free) > leave else None

    def _give_back(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _held(self, slot: int, start: int, size: int) -> np.ndarray:
        # An array over a memoryview owns nothing: every view of it keeps it alive (see buffers.BufferPool)
        out = np.frombuffer(self.buffer.data[start:start + size], np.uint8)
        weakref.finalize(out, self._give_back, slot)
        return out

    def chunk(self, size: int, header: int) -> np.ndarray | None:
        """A buffer for a chunk of ``size`` bytes whose page body starts ``header`` bytes in, placed so that
        the body's first record is a region row; ``None`` when no slot is free or the chunk does not fit."""
        if header > self.stride or size - header > (self.span - 1) * self.stride:
            return None
        slot = self._take(self.reserve)  # never the slots a copy into the arena may still need
        if slot is None:
            return None
        start = (slot * self.span + 1) * self.stride - header
        return self._held(slot, start, size)

    def slot(self) -> tuple[int, np.ndarray]:
        """A whole free slot for a copy: its first record row and the array holding it."""
        slot = self._take()
        if slot is None:  # reads leave ``reserve`` free, and a pass starts with that many (Arena.reset)
            raise RuntimeError("idxlake: arena region has no free slot")
        return slot * self.span + 1, self._held(slot, slot * self.span * self.stride, self.span * self.stride)

    def image_rows(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Every byte of the slots (and mapped files) as the start of a ``uint8`` record of ``shape``: the
        arena's image column, indexed by byte offset (:meth:`byte`), so slot and file records are rows alike."""
        data = self.space.bytes if self.space is not None else self.buffer
        inner = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]
        return torch.from_numpy(data).as_strided((len(data) - self.record + 1, *shape), (1, *inner))

    def byte(self, tensor: torch.Tensor) -> int | None:
        """The byte offset (in :meth:`image_rows`) of the tensor's first record when it views records at this
        region's stride in its slots or in a mapped file, else ``None``."""
        row = self.row(tensor)
        if row is not None:
            return row * self.stride + 4
        if self.space is None or tensor.dtype != torch.uint8 or tensor.dim() == 0 or len(tensor) == 0 \
                or tensor.stride(0) != self.stride:
            return None
        return self.space.in_file(tensor, (len(tensor) - 1) * self.stride + self.record)

    def row(self, tensor: torch.Tensor) -> int | None:
        """The region row of the tensor's first record when it views this region's records, else ``None``."""
        if tensor.dtype != torch.uint8 or tensor.dim() == 0 or len(tensor) == 0 or tensor.stride(0) != self.stride:
            return None
        offset = tensor.data_ptr() - self._base - 4
        if offset < 0 or offset % self.stride or offset // self.stride + len(tensor) > self.rows:
            return None
        return offset // self.stride


class Arena:
    """Decoded rows of the units in use, in preallocated tensors (one per column).

    Args:
        plan: The plan.
        cache: Keep every unit for later epochs (the arena holds the whole selection at plan
            offsets); otherwise ``slots`` reusable slots of the largest unit's rows.
        slots: Slots when not caching.
        region: Keep the image column in a :class:`Region` with ``spare`` more slots than ``slots``
            (raw reads land there); streaming arenas of 1-byte images only.
        spare: Slots for reads in flight (``prefetch_depth`` + :data:`SPARE_SLOTS`).
    """

    def __init__(self, plan: Plan, *, cache: bool, slots: int = 0, region: bool = False, spare: int = 0) -> None:
        rows = plan.unit_rows
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.cache, self.live = cache, slots
        self.slot_rows = int(rows.max()) if len(rows) else 0
        self.capacity = int(self.offsets[-1]) if cache else slots * self.slot_rows
        self.free = [] if cache else list(range(slots - 1, -1, -1))
        self.shift = np.zeros(len(rows), dtype=np.int64)  # arena row = ref + shift[unit]
        self.ishift = np.zeros(len(rows), dtype=np.int64)  # region arenas: image byte = ref * stride + ishift[unit]
        self.resident = np.zeros(len(rows), dtype=bool)
        self.tensors: Batch = {}
        self.decoded = 0  # units decoded into this arena (instrumentation and tests)
        self.copied = 0  # of them, copied in (not read straight into the region)
        self.region: Region | None = None
        self.held: dict[int, object] = {}  # unit -> what keeps its region slot (region arenas)
        if region and not cache and self.slot_rows:
            meta = plan.snapshot.meta
            paths = local_paths(plan)
            # mapped files: twice the slots, so that a later pass needing more still reuses this arena and its
            # mappings; their records stay in the files, and a slot never used is address space only
            self.region = Region((slots if paths is None else 2 * slots) + spare, self.slot_rows, meta.record_nbytes,
                                 None if paths is None else (paths, [f.size for f in plan.files]))
            self.region.reserve = slots  # reads take a slot only while copies keep one each
            self.capacity = self.region.rows
            shape = (1, *meta.shape) if len(meta.shape) == 2 else tuple(meta.shape)  # as UnitReader.read
            self.tensors[IMAGE] = self.region.image_rows(shape)  # indexed by byte (``ishift``)

    @property
    def used(self) -> int:
        """Rows resident."""
        return int(np.diff(self.offsets)[self.resident].sum())

    def put(self, unit: int, data: Batch) -> None:
        """Take a decoded unit in: no copy when its image was read into this arena's region."""
        n = int(self.offsets[unit + 1] - self.offsets[unit])
        if any(k not in self.tensors for k in data):  # the first put: the columns, in the unit's order
            self.tensors = {k: self.tensors[k] if k in self.tensors else
                            torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in data.items()}
        direct = at = None
        if self.region is not None:  # the image: in a slot it was read into, in a mapped file, or copied in
            image = data.get(IMAGE)
            direct = self.region.row(image) if image is not None else None
            at = self.region.byte(image) if image is not None else None
            # a slot for the other columns (and the image when copied), unless the image was read into one
            start, self.held[unit] = (direct, image) if direct is not None else self.region.slot()
            self.ishift[unit] = (at if at is not None else start * self.region.stride + 4) \
                - int(self.offsets[unit]) * self.region.stride
        else:
            start = int(self.offsets[unit]) if self.cache else self.free.pop() * self.slot_rows
        for k, v in data.items():  # numpy: one thread, torch's intra-op pool left asleep (``take``)
            if k == IMAGE and at is not None:
                continue
            if k == IMAGE and self.region is not None:  # the records of a slot (the column views all bytes)
                np.copyto(self.region.records[start:start + n], v.numpy().reshape(n, -1))
                continue
            if numpy_now():
                np.copyto(self.tensors[k][start:start + n].numpy(), v.numpy())
            else:
                self.tensors[k][start:start + n].copy_(v)
        self.copied += at is None
        self.shift[unit] = start - int(self.offsets[unit])
        self.resident[unit] = True
        self.decoded += 1
        if self.region is not None:  # units in use hold their slots: copies still to come need the rest
            self.region.reserve = max(0, self.live - len(self.held))

    def reset(self, slots: int, spare: int = 0) -> bool:
        """Reuse this streaming arena for a pass needing ``slots`` slots: ``False`` if too small."""
        if self.cache:
            return False
        self.held.clear()  # slots still viewed (reads of the last pass in flight) come back when those end
        if self.region is not None:  # free ones counted too: a kept traceback may pin some (reads ahead do)
            if slots + spare > self.region.slots or self.region.free_slots() < slots:
                return False
            self.region.reserve = self.live = slots
        elif slots * self.slot_rows > self.capacity:
            return False
        self.free = list(range(self.capacity // max(self.slot_rows, 1) - 1, -1, -1))
        self.resident[:] = False
        return True

    def release(self, unit: int) -> None:
        """The consumer is done with ``unit`` (kept when caching)."""
        if not self.cache:
            self.resident[unit] = False
            if self.region is not None:
                self.held.pop(unit, None)
                self.region.reserve = max(0, self.live - len(self.held))
            else:
                self.free.append(int((self.offsets[unit] + self.shift[unit]) // self.slot_rows))


def pass_arena(plan: Plan, cache: Arena | None, slots: Arena | None, live: int, *, region: bool = False,
               depth: int = 0) -> Arena:
    """The arena of a pass: the cache, else the reusable slots when big enough, else new slots (with a
    region of ``live + depth +`` :data:`SPARE_SLOTS` slots when ``region``; ``depth``: the reads in flight)."""
    spare = depth + SPARE_SLOTS
    if cache is not None:
        return cache
    if slots is not None and (slots.region is not None) == region and slots.reset(live, spare):  # no new pages
        return slots
    return Arena(plan, cache=False, slots=live, region=region, spare=spare)
