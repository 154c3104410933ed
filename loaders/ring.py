"""Batches from DataLoader workers through a per-worker shared-memory ring of reusable slots.

torch sends every tensor a worker yields through its sharing strategy: with the default
``file_descriptor`` strategy that is a socket connection and a handshake per tensor storage, plus a
fresh shared-memory segment per batch (measured: 125k samples/s for MNIST batches).
:class:`RingDataLoader` allocates, before it starts its workers, :func:`slot_count` slots per
worker in shared memory (``share_memory_()``, inherited by forked workers, sent once to spawned ones),
each of :data:`GROUP_ROWS` rows. A worker packs its next ``GROUP_ROWS // batch_size`` batches end to end
into its next slot (round robin; gathered straight into it, :mod:`idxlake.loaders.slotwriter`) and
yields only ``(worker, slot, places)``: fewer, larger transfers. The main process hands the batches on
in the plain DataLoader's order (one of each worker in turn, :func:`in_order`) as views of the slot
itself, *leased*: the slot goes back to its worker only when the last tensor viewing it (a batch, or
anything sliced from one) is freed, which a ``weakref.finalize`` on the numpy array under the views'
storage reports. At most :data:`LEASES` slots of a worker are leased at a time; beyond that (a loop that
keeps its batches), and for pinned batches, each slot column is copied out once into one fresh tensor
whose views are the batches, and the slot is free again at once. Each slot has a state in shared memory
(:data:`FREE`, :data:`SENT`, :data:`LEASED`): a worker writes only into a free slot; when it starts a
pass it takes back its slots still marked sent, whose tokens belong to an abandoned pass (torch drops a
persistent worker's outstanding results when the next epoch starts, and a new worker's predecessors are
gone), so they are never read. No torch setting changes: the sharing strategy stays the process's own.
Keys a ``transform`` adds, or tensors whose shape or dtype do not fit the slot, travel the usual way.

Why :func:`slot_count` slots are enough: a worker yields a token only for a task the main process sent;
usually at most ``prefetch_factor`` of its tasks are outstanding, and the main process leases or copies
a slot as soon as its token arrives (at most :data:`LEASES` leased per worker). torch may give one
worker up to ``prefetch_factor x workers`` tasks once the others are done; that worker may then wait for
a slot (:mod:`idxlake.loaders.slotwriter`: as long as the main process lives), but never holds up the
main process: torch hands results on in task order, the task it waits for is the oldest of some worker,
and that worker's slots are free or leased (its earlier tokens were handed on). A ring is never shared
by two sets of workers: an iterator started while workers of an earlier one may still write (two live
iterators with non-persistent workers, or one ended by a worker's error) gets a spare ring.

The rings also carry the workers' one decode cache in shared memory; once it holds a pass's rows and
the dataset has no transform, the pass runs in the main process (:mod:`idxlake.loaders.mainpasses`).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from idxlake.loaders.arena import Arena
from idxlake.loaders.mainpasses import WorkerCache
from idxlake.loaders.misuse import StreamBatch
from idxlake.loaders.resume import check_reaches_workers
from idxlake.loaders.sharedcache import alive, new_trust
from idxlake.schemas import ID, IMAGE, LABEL, LoaderConfigError


@dataclass(frozen=True)
class Token:
    """What a worker yields for a slot it filled, instead of the batches.

    Neither a mapping nor a sequence: the DataLoader's ``default_convert`` (applied to every item
    with ``batch_size=None``) hands it on untouched instead of walking and copying every place
    (measured: 12 ms of a worker's MNIST pass). Extras are converted in the worker instead.

    Attributes:
        worker: The worker.
        slot: Its slot holding the batches.
        places: Per batch, ``(column, first row, rows)`` of each column in the slot.
        extras: Per batch, what travels outside the slot (keys a transform adds, misfits).
    """

    worker: int
    slot: int
    places: list[list[tuple[str, int, int]]]
    extras: list[dict[str, Any]]

    def pin_memory(self) -> Token:
        """What the DataLoader's pin thread calls (``pin_memory=True`` on an accelerator): the extras
        pinned as a plain ``DataLoader`` pins a batch; the slot columns are pinned by :func:`receive`."""
        from torch.utils.data._utils.pin_memory import pin_memory  # the DataLoader's own (nested data)

        return Token(self.worker, self.slot, self.places, [pin_memory(e) if e else e for e in self.extras])

Slots = list[dict[str, torch.Tensor]]


def slot_layout(dataset: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape (rows first) and dtype of each column of one batch of ``dataset`` as it yields it."""
    meta, rows = dataset.meta, dataset.batch_size
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name in dataset.plan.columns:
        if name == IMAGE:
            shape = (1, *meta.shape) if len(meta.shape) == 2 else tuple(meta.shape)
            native = np.empty(0, dtype=meta.image_dtype.little_endian.newbyteorder("="))
            dtype = torch.float32 if dataset.image_dtype == "float32" else torch.from_numpy(native).dtype
            layout[name] = ((rows, *shape), dtype)
        elif name in (LABEL, ID):
            layout[name] = ((rows,), torch.int64)
    return layout


GROUP_ROWS = 4096
"""Rows a worker packs into one slot: ``max(1, GROUP_ROWS // batch_size)`` consecutive batches of
the worker travel as one token (fewer, larger transfers: the per-item queue cost is paid once)."""

GROUP_BYTES = 16 << 20
"""At most this many bytes of rows per slot (larger records: fewer batches per token, at least one)."""


def group_size(dataset: Any) -> int:
    """Batches per token for ``dataset``: :data:`GROUP_ROWS` rows, fewer for records so large that
    those would exceed :data:`GROUP_BYTES`, at least one batch."""
    row_bytes = sum(int(np.prod(shape[1:], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
                    for shape, dtype in slot_layout(dataset).values())
    rows = min(GROUP_ROWS, GROUP_BYTES // max(row_bytes, 1))
    return max(1, rows // max(int(dataset.batch_size), 1))


def slot_count(prefetch_factor: int) -> int:
    """Slots per worker: ``prefetch_factor + 2 + LEASES`` (see the module docstring)."""
    return prefetch_factor + 2 + LEASES


LEASES = 2
"""Slots of one worker the main process may lend out at once (as views); a further token is copied out."""

FREE, SENT, LEASED = 0, 1, 2
"""Slot states: writable by its worker; holding a token on its way; lent out as views."""

@dataclass
class Ring:
    """The slots of every worker and their flags (1: free), all in shared memory.

    Attributes:
        slots: Per worker, its slots (column name -> tensor of :func:`group_size` batches).
        state: ``uint8 [workers, slots]``: :data:`FREE`, :data:`SENT` or :data:`LEASED`.
        leased: Per worker, slots lent out now (main process only).
        cache: The workers' shared decode cache, or ``None``; ``trust``: what each pass's workers trust
            in it, ``passes``: the ring's passes so far (:func:`~idxlake.loaders.sharedcache.publish_trust`).
    """

    slots: list[Slots]
    state: torch.Tensor
    leased: list[int]
    _views: tuple[np.ndarray, list[list[dict[str, np.ndarray]]]] | None = field(default=None, repr=False)
    cache: Arena | None = None
    trust: torch.Tensor = field(default_factory=new_trust)
    passes: int = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots, "state": self.state, "leased": [0] * len(self.slots), "_views": None,
                "cache": self.cache, "trust": self.trust, "passes": self.passes}

    def views(self) -> tuple[np.ndarray, list[list[dict[str, np.ndarray]]]]:
        """Numpy views of the flags and of every slot column, made once per process (a numpy flag
        set or slice costs ~0.2 us; the tensor indexing and ``.numpy()`` it replaces a few us)."""
        if self._views is None:
            self._views = (self.state.numpy(), [[{k: v.numpy() for k, v in slot.items()} for slot in worker]
                                                for worker in self.slots])
        return self._views


def make_ring(dataset: Any, workers: int, slots: int, cache: Arena | None = None) -> Ring:
    """``slots`` shared-memory slots of :func:`group_size` batches for each of ``workers`` workers
    (and their shared decode ``cache``, if any)."""
    group = group_size(dataset)
    layout = slot_layout(dataset)
    return Ring([[{k: torch.empty((shape[0] * group, *shape[1:]), dtype=dtype).share_memory_()
                   for k, (shape, dtype) in layout.items()} for _ in range(slots)] for _ in range(workers)],
                torch.full((workers, slots), FREE, dtype=torch.uint8).share_memory_(), [0] * workers, cache=cache)


class _Lease:
    """A slot lent out: free again (its flag set, the worker's count down) when the numpy arrays
    under every column's views are gone."""

    def __init__(self, ring: Ring, worker: int, k: int, columns: int) -> None:
        self.ring, self.worker, self.k, self.left = ring, worker, k, columns
        ring.leased[worker] += 1

    def drop(self) -> None:
        self.left -= 1
        if not self.left:
            self.ring.leased[self.worker] -= 1
            self.ring.views()[0][self.worker, self.k] = FREE


def receive(ring: Ring, item: Any, *, pin: bool = False) -> tuple[int, list[Any]]:
    """Main side: a token back into ``(worker, batches)`` (anything else: ``(-1, [item])``).

    The batches are views of the slot, leased (see the module docstring), or, with ``pin`` or
    when the worker has :data:`LEASES` slots lent out already, views of one copy of each slot
    column (pinned with ``pin``: that copy is also the pinning copy, the DataLoader's pin thread
    only saw the token), the slot freed at once.
    """
    if not isinstance(item, Token):
        return -1, [item]
    worker, k, places = item.worker, item.slot, item.places
    flags, arrays = ring.views()
    ends: dict[str, int] = {}  # rows of each column the batches use
    for rows in places:
        for name, at, n in rows:
            ends[name] = max(ends.get(name, 0), at + n)
    fresh: dict[str, torch.Tensor] = {}
    if not pin and ends and ring.leased[worker] < LEASES:
        parts = {name: arrays[worker][k][name][:end] for name, end in ends.items()}  # before leasing
        lease = _Lease(ring, worker, k, len(parts))
        flags[worker, k] = LEASED
        for name, array in parts.items():  # the storage of the views below holds each array
            weakref.finalize(array, lease.drop)
            fresh[name] = torch.from_numpy(array)
    else:
        slot = ring.slots[worker][k]
        for name, end in ends.items():
            src = slot[name][:end]
            fresh[name] = (torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src) if pin
                           else src.clone())
        flags[worker, k] = FREE
    out = []
    for rows, extra in zip(places, item.extras, strict=True):  # slices: torch.split's multi-output views
        batch = StreamBatch({name: fresh[name][at:at + n] for name, at, n in rows})  # refuse grad in-place ops
        batch.update(extra)
        out.append(batch)
    return worker, out


def in_order(items: Iterator[Any], ring: Ring, workers: int, *, pin: bool) -> Iterator[Any]:
    """The batches in the plain DataLoader's order: one of each worker in turn, skipping the
    workers that are done (a worker's token holds several of its consecutive batches)."""
    queues: list[deque[Any]] = [deque() for _ in range(workers)]
    turn, done = 0, False
    while True:
        while not queues[turn] and not done:
            item = next(items, _END)
            if item is _END:
                done = True
                break
            worker, batches = receive(ring, item, pin=pin)
            if worker < 0:
                yield from batches
            else:
                queues[worker].extend(batches)
        if queues[turn]:
            yield queues[turn].popleft()
        elif not any(queues):
            return
        turn = (turn + 1) % workers


_END = object()


def pin_batch(batch: Any) -> Any:
    """``batch`` with its tensors in pinned memory (what the DataLoader's ``pin_memory`` does)."""
    return type(batch)({k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})


class RingDataLoader(DataLoader):
    """A ``DataLoader(dataset, batch_size=None)`` for :class:`DeltaIterableDataset` whose workers
    hand batches over through a shared-memory ring (see the module docstring).

    Args:
        dataset: The dataset.
        num_workers: DataLoader workers (0: the dataset's own iterator, in this process, without
            the DataLoader's per-batch machinery; ``pin_memory`` still applies).
        prefetch_factor: Batches each worker prepares ahead (torch's meaning).
        warm_passes: ``"main"``: once the workers' shared decode cache holds the whole selection and
            the dataset has no transform, passes run in the main process over it (faster: see
            :mod:`idxlake.loaders.mainpasses`); ``"workers"``: always in the workers.
        **kwargs: Other ``DataLoader`` options (``persistent_workers``, ``multiprocessing_context``...).

    Raises:
        LoaderConfigError: ``batch_size``, ``sampler`` or ``collate_fn`` was given (the dataset batches).
    """

    def __init__(self, dataset: Any, *, num_workers: int = 0, prefetch_factor: int | None = None,
                 warm_passes: Literal["main", "workers"] = "main", **kwargs: Any) -> None:
        for key in ("batch_size", "sampler", "batch_sampler", "collate_fn"):
            if key in kwargs:
                raise LoaderConfigError(f"RingDataLoader: {key} is not an option (the dataset yields whole batches)")
        self._cache = WorkerCache(warm_passes)  # the workers' shared decode cache (made with the first workers)
        if num_workers and prefetch_factor is None:
            prefetch_factor = 2
        super().__init__(dataset, batch_size=None, num_workers=num_workers, prefetch_factor=prefetch_factor,
                         **kwargs)
        self._ring = make_ring(dataset, num_workers, slot_count(prefetch_factor or 0)) if num_workers else None
        self._spares: list[Ring] = []  # rings of further iterators live at the same time
        self._users: dict[int, list[Any]] = {}  # id(ring) -> the worker processes of the iterator using it

    def _idle_ring(self) -> Ring:
        """The ring of a new iterator: the loader's own, unless workers of an earlier iterator may still
        write into it, then a spare no such workers use, made when there is none. That is two iterators
        alive at once (non-persistent workers, as a plain ``DataLoader`` allows), or one ended by a
        worker's error whose other workers run until torch shuts them down (when the iterator is freed,
        possibly only by the cyclic GC: the exception's traceback holds it). Persistent workers keep
        the ring they started with (torch resets their single iterator)."""
        assert self._ring is not None  # made with the workers
        if self.persistent_workers:
            return self._ring
        for ring in (self._ring, *self._spares):
            if not any(alive(p) for p in self._users.get(id(ring), ())):  # exited (waitpid), not only shut down
                return ring
        self._spares.append(make_ring(self.dataset, self.num_workers, len(self._ring.slots[0]), self._cache.arena))
        return self._spares[-1]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        ds: Any = self.dataset
        if self.num_workers:  # warm and nothing to transform: in this process (mainpasses.py)
            self._cache.before_workers(ds, [self._ring, *self._spares])
            if not self._cache.serves(ds, self.num_workers):
                return self._worker_iter(ds)
        pin = self.pin_memory and torch.accelerator.is_available()  # the dataset's own iterator: no per-batch
        return (pin_batch(b) for b in ds) if pin else iter(ds)  # fetcher, sampler or profiler hooks

    def _worker_iter(self, ds: Any) -> Iterator[Any]:
        ds.settle_resume()
        started = self.persistent_workers and self._iterator is not None
        check_reaches_workers(ds._resume, epoch=ds.epoch, started=started, uri=ds.snapshot.uri)
        ring = ds._ring = self._idle_ring()  # workers (forked or spawned) take it from the dataset
        generation = self._cache.start(ring)  # before torch sends the workers their first tasks
        try:
            it = super().__iter__()
        finally:
            ds._ring = None
        pin = bool(getattr(it, "_pin_memory", False))  # what torch decided (no accelerator: no pinning)
        self._users[id(ring)] = list(getattr(it, "_workers", ()))
        self._cache.started(generation, it)
        return self._cache.track(in_order(it, ring, self.num_workers, pin=pin), generation, len(ds))
