"""The decode cache of a ring's DataLoader workers, in shared memory.

Without it every worker keeps a private cache of the selection. A worker's lanes cover other row
groups every epoch, so each private cache ends up holding the whole selection: ``num_workers``
copies, and every worker decodes every row group once. :class:`RingDataLoader`
(:mod:`idxlake.loaders.ring`) instead allocates one :class:`SharedArena` before it starts its
workers, when the projected columns fit the cache budget (:func:`~idxlake.loaders.stream.fits_cache`)
and :data:`SHM_FRACTION` of the free space of ``/dev/shm``. Each worker decodes into it only the
row groups nobody has decoded yet, so the first epoch fills it once for all workers, and memory is
one copy per rank. Warm passes then run in the main process (:mod:`idxlake.loaders.mainpasses`).
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from idxlake.loaders.arena import Arena
from idxlake.loaders.decode import Batch
from idxlake.loaders.plan import Plan
from idxlake.loaders.stream import fits_cache, row_bytes

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
"""Where torch's shared memory lives on Linux (``shm_open``)."""

SHM_FRACTION = 0.5
"""The shared cache takes at most this fraction of the free space of :data:`SHM_DIR` (a full
tmpfs is a SIGBUS on the first write, not an error, so the check comes before allocating)."""


class SharedArena(Arena):
    """A cache :class:`~idxlake.loaders.stream.Arena` whose columns are in shared memory, so that the
    main process and every worker (forked or spawned) see one copy.

    Which row groups are in is published through shared stamps, and each process keeps what it may
    trust in its own ``resident`` flags. A stamp is the generation (one per pass of the workers,
    counted by the main process before it starts them) in which a row group was copied in. A worker
    trusts, besides its own copies, only the stamps of earlier generations, and the main process only
    those of generations whose pass ran to its end: the messages of those passes (the tokens, each
    worker's end of pass) order the copies before the reads, where a stamp seen mid-copy would not.
    Workers of an earlier pass that may still be copying in (an abandoned iterator that lives on, or
    one a worker's error ended, of any loader over the dataset) are tracked by the main process: no
    one trusts their stamps until their pass completes or their workers are gone (:meth:`unsettled`);
    later workers copy those row groups in again and stamp them as theirs. Each pass learns what it
    trusts from its ring (``Ring.trust``), written before its workers get their first task.

    Args:
        plan: The plan.
        first: The decoded first unit: it gives the columns' dtypes and shapes, and goes in.
    """

    def __init__(self, plan: Plan, first: Batch) -> None:
        super().__init__(plan, cache=True)
        self.stamps = torch.zeros(len(plan.units), dtype=torch.int64).share_memory_()
        self.generations = torch.tensor([1, 0], dtype=torch.int64).share_memory_()  # started, completed
        self.tensors = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype).share_memory_()
                        for k, v in first.items()}
        self._views()
        self.put(0, first)

    def _views(self) -> None:
        self._stamps, self._generations, self._stamp = self.stamps.numpy(), self.generations.numpy(), 0
        self._unsettled: frozenset[int] = frozenset()  # a worker: generations it does not trust
        self._floor = 0  # a worker: nor any from this one on (0: none)
        # main process: unfinished generation -> its torch iterator and worker processes
        self._writers: dict[int, tuple[weakref.ref[Any], list[Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_stamps", "_generations", "_writers"):  # views rebuilt on the shared tensors
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()
        self.decoded = 0  # this process's own decodes

    def put(self, unit: int, data: Batch) -> None:
        """Copy a decoded unit in, and stamp it: with this worker's pass's generation if nobody has, or
        if the stamp is one of an earlier pass this worker does not trust (its workers may still copy
        in, the same bytes: now this copy, complete, is behind the stamp); in the main process, if
        nobody has, with the latest started generation (running workers never trust it, later ones
        start after this copy)."""
        super().put(unit, data)
        stamp = int(self._stamps[unit])
        distrusted = stamp in self._unsettled or bool(self._floor and stamp >= self._floor)
        if not stamp or (self._stamp and stamp < self._stamp and distrusted):
            self._stamps[unit] = self._stamp or self._generations[0]

    def unsettled(self) -> list[int]:
        """Main process: the generations whose workers may still be copying in: their pass did not run
        to its end and some of their workers are alive (an abandoned pass whose iterator lives on, or
        one a worker's error ended, until torch has joined them: ``waitpid`` orders what they wrote).
        Others are forgotten: their workers exited, or torch's reset of persistent workers waited for
        them."""
        self._writers = {g: w for g, w in self._writers.items() if any(alive(p) for p in w[1])}
        return sorted(self._writers)

    def start_generation(self) -> np.ndarray:
        """Main process, before the workers of a pass start: what they trust (:data:`TRUST_SLOTS`
        numbers, for :meth:`worker_pass`): the new pass's generation, and the :meth:`unsettled` ones
        (their count, then them; beyond ``TRUST_SLOTS - 2``, only the lowest: none from it on)."""
        unsettled = self.unsettled()
        self._generations[0] += 1
        info = np.zeros(TRUST_SLOTS, dtype=np.int64)
        info[0], info[1] = self._generations[0], len(unsettled)
        shown = unsettled if len(unsettled) <= TRUST_SLOTS - 2 else unsettled[:1]
        info[2:2 + len(shown)] = shown
        return info

    def started(self, generation: int, iterator: Any) -> None:
        """Main process: ``iterator``'s workers copy in for ``generation`` (persistent workers: earlier
        generations of the same iterator are settled, torch's reset waited for them)."""
        self._writers = {g: w for g, w in self._writers.items() if w[0]() is not iterator}
        self._writers[generation] = (weakref.ref(iterator), list(getattr(iterator, "_workers", [])))

    def complete_generation(self, generation: int) -> None:
        """Main process: the workers' pass of ``generation`` ran to its end."""
        self._writers.pop(generation, None)
        self._generations[1] = max(int(self._generations[1]), generation)

    def worker_pass(self, info: np.ndarray | torch.Tensor) -> None:
        """A worker's pass starts (after the main process sent it work), with what the main process
        published for it (:meth:`start_generation`): trust earlier generations, but no unsettled one."""
        info = np.asarray(info)
        self._stamp, count = int(info[0]), int(info[1])
        overflow = count > TRUST_SLOTS - 2
        self._unsettled = frozenset() if overflow else frozenset(info[2:2 + count].tolist())
        self._floor = int(info[2]) if overflow else 0
        stamps = self._stamps.copy()  # one snapshot: sibling workers stamp concurrently (isin reads twice)
        trusted = (stamps > 0) & (stamps < self._stamp)
        if overflow:
            trusted &= stamps < self._floor
        elif count:
            trusted &= ~np.isin(stamps, info[2:2 + count])
        self.resident |= trusted

    def main_pass(self) -> None:
        """The main process looks: trust the generations up to the latest whose pass ran to its end, but
        none whose workers may still be copying in."""
        stamps = self._stamps.copy()  # one snapshot, as in :meth:`worker_pass`
        trusted = (stamps > 0) & (stamps <= self._generations[1])
        unsettled = self.unsettled()
        self.resident |= trusted & ~np.isin(stamps, unsettled) if unsettled else trusted


TRUST_SLOTS = 10
"""Numbers the main process publishes per ring for its workers' pass (:meth:`SharedArena.start_generation`)."""

TRUST_DEPTH = 4
"""Passes of a ring whose trust is kept: a persistent worker may take up its pass (``iter(dataset)``,
after acknowledging torch's reset) once the main process has published the next pass's."""


def new_trust() -> torch.Tensor:
    """A ring's trust table in shared memory: row ``p % TRUST_DEPTH`` for its pass ``p``."""
    return torch.zeros((TRUST_DEPTH, TRUST_SLOTS), dtype=torch.int64).share_memory_()


def publish_trust(ring: Any, info: np.ndarray) -> None:
    """Main process, before a pass's workers are started or reset: ``info`` for the ring's next pass.
    ``ring.passes`` is a plain number: workers started now take its value (forked or pickled)."""
    ring.passes += 1
    ring.trust[ring.passes % TRUST_DEPTH] = torch.from_numpy(info)


def pass_trust(ring: Any) -> np.ndarray:
    """A ring's worker, as its pass starts: what the main process published for that pass. Its first
    pass is the ``passes`` it was started with, each later one (a persistent worker's) the next."""
    pid, seen = os.getpid(), ring.__dict__.get("_seen")
    ring._seen = (pid, seen[1] + 1 if seen is not None and seen[0] == pid else ring.passes)
    return ring.trust[ring._seen[1] % TRUST_DEPTH].numpy().copy()


def alive(process: Any) -> bool:
    """Whether a worker process may run (``waitpid``; one this process did not start: as far as it knows)."""
    return getattr(process, "_parent_pid", os.getpid()) != os.getpid() or bool(process.is_alive())


def shm_room() -> int:
    """Free bytes in :data:`SHM_DIR` (0 where there is none: no shared cache)."""
    try:
        st = os.statvfs(SHM_DIR)
    except (OSError, AttributeError):
        return 0
    return int(st.f_bavail) * int(st.f_frsize)


def shared_cache(dataset: Any) -> SharedArena | None:
    """The shared cache for ``dataset``'s workers, or ``None`` (each worker then decides on a cache
    of its own): the selection is empty, over the cache budget, or does not fit ``/dev/shm``."""
    plan: Plan = dataset.plan
    if not len(plan.units) or not fits_cache(plan, dataset.cache_bytes):
        return None
    need, room = plan.num_rows * row_bytes(plan), shm_room()
    if need > SHM_FRACTION * room:
        logger.info("%s: the decode cache (%.1f MB) does not fit %s (%.1f MB free): each DataLoader worker "
                    "keeps its own", plan.describe(), need / 1e6, SHM_DIR, room / 1e6)
        return None
    first = dataset._reader.read(plan.units[0])
    try:
        arena = SharedArena(plan, first)
    except (RuntimeError, OSError) as exc:  # shm_open / mmap / ftruncate refused: e.g. other ranks took the room
        logger.warning("%s: no decode cache in shared memory (%s): each DataLoader worker keeps its own",
                       plan.describe(), exc)
        return None
    logger.debug("%s: decode cache of %.1f MB in shared memory for the DataLoader workers", plan.describe(),
                 need / 1e6)
    return arena


_ARENAS: weakref.WeakKeyDictionary[Any, SharedArena] = weakref.WeakKeyDictionary()
"""Main process: each dataset's shared cache, so that every loader over it (a new one per epoch too)
uses one."""


def dataset_cache(dataset: Any) -> SharedArena | None:
    """The shared cache of ``dataset``'s workers: the one an earlier loader over it made (it lives as
    long as the dataset), else a new one (see :func:`shared_cache`); none when the selection no longer
    fits an explicit ``cache_bytes`` (the default budget is not checked again: the arena's own memory
    lowers what is available)."""
    arena = _ARENAS.get(dataset)
    if arena is not None and (dataset.cache_bytes is None or fits_cache(dataset.plan, dataset.cache_bytes)):
        return arena
    _ARENAS.pop(dataset, None)
    arena = shared_cache(dataset)
    if arena is not None:
        _ARENAS[dataset] = arena
    return arena


def cache_for(current: Arena | None, ring: Any, plan: Plan, cache_bytes: int | None) -> Arena | None:
    """The cache arena of a pass: the ring's shared cache in a ring's worker, else the process's own
    (made when the selection fits the cache budget)."""
    shared = getattr(ring, "cache", None)
    if shared is not None:
        shared.worker_pass(pass_trust(ring))
        return shared
    if isinstance(current, SharedArena) and get_worker_info() is not None:
        current = None  # a plain DataLoader's forked worker inherited it: it writes only a ring's, in its protocol
    return current or (Arena(plan, cache=True) if fits_cache(plan, cache_bytes) else None)
