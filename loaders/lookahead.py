"""Read the next epoch's first row groups while this epoch's last batches are consumed.

A cold pass (no cache) over a small table needs most of its row groups before its first
batches: the lanes advance together, so the first global steps touch every lane's window.
Decoding them only when the pass starts leaves the reader threads idle at the end of every
epoch and the consumer idle at the start of the next. Training loops ask for epoch ``e + 1``
right after ``e``. So when a pass's epoch is above the previous pass's in this process (a first
pass, or an epoch iterated again, never reads ahead), once it has submitted every read it needs,
it plans the same consumer's full pass over ``e + 1`` (the order is a pure function of its
parameters) in a reader thread, behind its own reads and off the consumer's thread (a plan of MNIST
train is ~4 ms, a fifth of a cold epoch; a pass whose last batch comes first waits for it then), and
reads that pass's first row groups, keeping at most ``prefetch_depth`` reads in flight or done ahead.
The next pass takes them when it is that pass (same epoch, topology and first batch); any other
pass (a resume, another epoch) discards them. What a pass yields never changes: only when its row
groups are decoded.

A warm pass (every unit in the cache) reads nothing, so its planning, the order of the epoch, is
the one cost a pass adds to the gathers. When torch's intra-op threads leave a CPU of this process
free (:func:`spare_core`), a warm pass over an advancing epoch plans the next pass in a reader
thread while it yields. Otherwise a pass in the main process that ends with every unit in the cache
starts that planning as it ends, so that it runs beside the training loop's own end-of-epoch work
instead of at the next pass's start (not in a DataLoader worker: there it ran beside the other
workers' last batches, and epochs got slower). The next pass takes that plan if it is that pass, and
plans in place without waiting for it otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import get_worker_info

from idxlake.loaders.decode import Batch
from idxlake.loaders.order import consumer_rows, lane_order
from idxlake.loaders.plan import Plan
from idxlake.loaders.stream import Schedule, schedule
from idxlake.loaders.world import World

logger = logging.getLogger(__name__)

PassKey = tuple[int, int, int, int, int, int, int]


@dataclass(frozen=True)
class OrderKey:
    """The parameters of an epoch's order besides the selection (see :func:`~idxlake.loaders.order.lane_order`)."""

    seed: int
    epoch: int
    shuffle: bool
    lanes: int
    buffer_rows: int
    step_rows: int
    phases: int


def pass_key(epoch: int, world: World, batches: np.ndarray) -> PassKey:
    """What identifies a consumer's pass: epoch, topology and the rank batches it yields
    (``worker_batches``: an arithmetic progression, so its first index and length)."""
    first = int(batches[0]) if len(batches) else -1
    return (epoch, world.rank, world.world_size, world.worker, world.num_workers, first, len(batches))


@dataclass
class PassPlan:
    """A pass planned ahead, with the reads of its first units submitted.

    Attributes:
        key: The pass (:func:`pass_key`).
        sched: Its schedule.
        pending: Unit -> decode submitted ahead.
        submitted: Units of ``sched.order`` submitted so far.
    """

    key: PassKey
    sched: Schedule
    pending: dict[int, Future[Batch]] = field(default_factory=dict)
    submitted: int = 0

    def take(self) -> dict[int, Future[Batch]]:
        """Hand the reads submitted so far to the pass that starts; the pass that planned this one
        (possibly still running) then submits no more reads into it."""
        self.submitted = len(self.sched.order)
        pending, self.pending = self.pending, {}
        return pending

    def cancel(self) -> None:
        """Drop the reads (a pass that is not this one started)."""
        for future in self.take().values():
            future.cancel()


def plan_pass(plan: Plan, order: OrderKey, *, world: World, tail: np.ndarray, batches: np.ndarray,
              cached: bool = False) -> PassPlan:
    """Plan a consumer's pass over ``batches`` (rank batch indices) of the epoch ``order`` describes.

    Args:
        plan: The plan.
        order: The order's parameters.
        world: The consumer.
        tail: The rank's tail ranges (:func:`~idxlake.loaders.shares.rank_steps`).
        batches: Rank batches of this pass.
        cached: Every unit is in the cache arena already.
    """
    lanes = lane_order(plan.unit_rows, seed=order.seed, epoch=order.epoch, shuffle=order.shuffle,
                       lanes=order.lanes, buffer_rows=order.buffer_rows, step_rows=order.step_rows,
                       phases=order.phases)
    refs, sizes = consumer_rows(lanes, batches, rank=world.rank, world_size=world.world_size, tail_ranges=tail)
    return PassPlan(pass_key(order.epoch, world, batches), schedule(plan, refs, sizes, cached=cached))


def spare_core() -> bool:
    """Whether a CPU of this machine is left over by the threads that read here: torch's intra-op
    threads (in a DataLoader worker: one per worker of the loader). Work in another thread then runs
    beside the consumer's gathers instead of taking turns with them."""
    info = get_worker_info()
    busy = torch.get_num_threads() * (info.num_workers if info is not None else 1)
    return busy < usable_cpus()


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


@dataclass(frozen=True)
class WarmPlan:
    """A warm pass being planned in a reader thread: the pass it is for (:func:`pass_key`), and the planning."""

    key: PassKey
    future: Future[PassPlan]


def plan_ahead(pool: ThreadPoolExecutor, key: PassKey, plan: Callable[..., PassPlan]) -> WarmPlan | None:
    """Start planning the warm pass ``key`` (``plan(cached=True)``) in a thread of ``pool``; best effort:
    ``None`` when the pool takes no work (the interpreter is shutting down), and the pass plans in place."""
    try:
        return WarmPlan(key, pool.submit(plan, cached=True))
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        logger.debug("no thread to plan the next pass in; it plans in place", exc_info=True)
        return None


def planned(pending: WarmPlan | None, key: PassKey) -> PassPlan | None:
    """The pass planned in the background, if it is the pass ``key`` names (then waiting for it); ``None``
    (the pass plans in place, without waiting) if it is another pass, or if the planning failed."""
    if pending is None or pending.key != key:
        return None
    try:
        plan = pending.future.result()
    except Exception:  # e.g. MemoryError while the gathers ran: planning in place raises it if it recurs
        logger.debug("planning the next pass in the background failed; planning in place", exc_info=True)
        return None
    return plan if plan.key == key else None


def choose(ahead: PassPlan | None, pending: WarmPlan | None, key: PassKey, *, cached: bool,
           plan: Callable[[], PassPlan]) -> PassPlan:
    """The plan of the pass ``key``: the one read ahead if it is that pass (and not cached), else (cached)
    the warm plan made in the background (:func:`planned`), else ``plan()``; a plan read ahead and not
    used is cancelled."""
    if ahead is not None and (cached or ahead.key != key):
        ahead.cancel()
        ahead = None
    return ahead or (planned(pending, key) if cached else None) or plan()
