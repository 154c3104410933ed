"""The decode cache of a ring's DataLoader workers, in shared memory, and warm passes in the main process.

Without it every worker keeps a private cache of the selection. A worker's lanes cover other row
groups every epoch, so each private cache ends up holding the whole selection: ``num_workers``
copies, and every worker decodes every row group once. :class:`RingDataLoader`
(:mod:`idxlake.loaders.ring`) instead allocates one :class:`SharedArena` before it starts its
workers, when the projected columns fit the cache budget (:func:`~idxlake.loaders.stream.fits_cache`)
and :data:`SHM_FRACTION` of the free space of ``/dev/shm``. Each worker decodes into it only the
row groups nobody has decoded yet, so the first epoch fills it once for all workers, and memory is
one copy per rank.

A warm pass without a ``transform`` or ``sample_transform`` is one ``index_select`` per column per
batch: memory-bound work that costs more to ship through the ring than to do (measured on 2 cores:
2 workers reached 0.46-0.64x of 0 workers warm). Once the shared cache holds the whole selection,
the loader therefore iterates the dataset in the main process, over that cache
(:func:`serves_in_main`). The order depends only on (seed, epoch, selection, lanes), never on
the number of workers, so the batches and their order are those the workers would have yielded.
The workers keep the work that pays: cold passes (decode) and transforms.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import get_worker_info

from idxlake.loaders.decode import Batch
from idxlake.loaders.plan import Plan
from idxlake.loaders.shares import worker_batches
from idxlake.loaders.stream import Arena, fits_cache, row_bytes
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError

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
        self._writers = {g: w for g, w in self._writers.items() if any(p.is_alive() for p in w[1])}
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
        trusted = (self._stamps > 0) & (self._stamps < self._stamp)
        if overflow:
            trusted &= self._stamps < self._floor
        elif count:
            trusted &= ~np.isin(self._stamps, info[2:2 + count])
        self.resident |= trusted

    def main_pass(self) -> None:
        """The main process looks: trust the generations up to the latest whose pass ran to its end, but
        none whose workers may still be copying in."""
        trusted = (self._stamps > 0) & (self._stamps <= self._generations[1])
        unsettled = self.unsettled()
        self.resident |= trusted & ~np.isin(self._stamps, unsettled) if unsettled else trusted


TRUST_SLOTS = 10
"""Numbers the main process publishes per ring for its workers' pass (:meth:`SharedArena.start_generation`)."""


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
        shared.worker_pass(ring.trust)
        return shared
    if isinstance(current, SharedArena) and get_worker_info() is not None:
        current = None  # a plain DataLoader's forked worker inherited it: it writes only a ring's, in its protocol
    return current or (Arena(plan, cache=True) if fits_cache(plan, cache_bytes) else None)


def serves_in_main(dataset: Any, cache: Arena | None) -> bool:
    """Whether the next pass runs in the main process: the dataset has no ``transform`` or
    ``sample_transform`` (workers would only gather and ship), and ``cache`` holds the rows of the pass.

    That is the whole selection, or, for a DDP rank (whose workers fill only the row groups of its
    lanes, other ones every epoch), the row groups of this rank's pass; that pass is then planned
    here, once: the pass itself uses the plan (:func:`~idxlake.loaders.lookahead.choose`).
    """
    if (cache is None or dataset.transform is not None or dataset.sample_transform is not None
            or getattr(dataset, "_normalize", None) is not None):  # float32 output: compute, in the workers
        return False
    dataset.settle_resume()
    resume = dataset._resume if dataset._resume is not None and dataset._resume.epoch == dataset.epoch else None
    if resume is not None and resume.num_workers not in (None, 1):  # a worker's state: for the workers
        return False
    if isinstance(cache, SharedArena):
        cache.main_pass()
    if bool(np.all(cache.resident)):
        return True
    world = World.detect(*dataset._dist())
    if world.world_size == 1:  # one rank reads everything
        return False
    start, skip = (resume.start, resume.skip) if resume is not None else (0, 0)  # the pass a pending resume leaves
    body, tail = dataset._steps(world.rank, world.world_size)
    batches = worker_batches(body + len(tail), worker=0, num_workers=1, start=start)[skip:]
    plan = dataset._pass_plan(dataset.epoch, world, tail, batches)
    if not bool(np.all(cache.resident[plan.sched.order])):
        return False
    dataset._next = plan
    return True


class WorkerCache:
    """The shared cache of one :class:`~idxlake.loaders.ring.RingDataLoader`'s workers, and where its
    warm passes run.

    Args:
        warm_passes: ``"main"``: in the main process once :func:`serves_in_main`; ``"workers"``: always
            in the workers.

    Raises:
        LoaderConfigError: another ``warm_passes``.
    """

    def __init__(self, warm_passes: Literal["main", "workers"]) -> None:
        if warm_passes not in ("main", "workers"):
            raise LoaderConfigError(f"RingDataLoader: warm_passes must be 'main' or 'workers', got {warm_passes!r}")
        self.warm_passes = warm_passes
        self.arena: SharedArena | None = None
        self.made = self.served = False

    def before_workers(self, dataset: Any, rings: Sequence[Any]) -> None:
        """Make the cache (once, before the loader's first workers start: they take it with the rings)."""
        if not self.made:
            self.made, self.arena = True, dataset_cache(dataset)
            for ring in rings:
                ring.cache = self.arena

    def start(self, ring: Any) -> int:
        """A pass of the workers starts, on ``ring``: its generation (0 without a shared cache), and what
        its workers trust, in ``ring.trust``."""
        if self.arena is None:
            return 0
        ring.trust.copy_(torch.from_numpy(self.arena.start_generation()))
        return int(ring.trust[0])

    def started(self, generation: int, iterator: Any) -> None:
        """The torch iterator whose workers run the pass of ``generation``."""
        if self.arena is not None:
            self.arena.started(generation, iterator)

    def track(self, batches: Iterator[Any], generation: int, total: int) -> Iterator[Any]:
        """``batches`` of the workers' pass ``generation``; when they run to their end, or all ``total``
        batches of the rank have arrived (a loop calling ``next`` ``len(loader)`` times), the main process
        may trust what that pass copied into the cache: a worker copies a row group in before it sends
        the batches gathered from it (see :class:`SharedArena`)."""
        if self.arena is None:
            return batches
        return self._tracked(batches, self.arena, generation, total)

    @staticmethod
    def _tracked(batches: Iterator[Any], arena: SharedArena, generation: int, total: int) -> Iterator[Any]:
        for n, batch in enumerate(batches, 1):
            if n == total:
                arena.complete_generation(generation)
            yield batch
        arena.complete_generation(generation)

    def serves(self, dataset: Any, workers: int) -> bool:
        """Whether the next pass runs in the main process (then over the shared cache)."""
        if self.warm_passes != "main" or not serves_in_main(dataset, self.arena):
            return False
        if not self.served:
            self.served = True
            logger.info("%s: warm and without transforms, passes run in the main process over the decode cache "
                        "its %d DataLoader workers filled", dataset.plan.describe(), workers)
        dataset._cache = self.arena
        return True
