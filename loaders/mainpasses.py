"""Warm passes in the main process, over the decode cache a ring's DataLoader workers filled.

A warm pass without a ``transform`` or ``sample_transform`` is one ``index_select`` per column per
batch: memory-bound work that costs more to ship through the ring than to do (measured on 2 cores:
2 workers reached 0.46-0.64x of 0 workers warm). Once the shared cache
(:mod:`idxlake.loaders.sharedcache`) holds the rows of a pass, the loader therefore iterates the
dataset in the main process, over that cache (:func:`serves_in_main`). The order depends only on
(seed, epoch, selection, lanes), never on the number of workers, so the batches and their order are
those the workers would have yielded. The workers keep the work that pays: cold passes (decode) and
transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from idxlake.loaders.arena import Arena
from idxlake.loaders.sharedcache import SharedArena, dataset_cache, publish_trust
from idxlake.loaders.shares import worker_batches
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError

logger = logging.getLogger(__name__)


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
        info = self.arena.start_generation()
        publish_trust(ring, info)
        return int(info[0])

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
