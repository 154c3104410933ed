"""One consumer's pass: the row groups its batches touch, decoded ahead into an arena, batches gathered.

The consumer knows all its batches' rows up front (:func:`idxlake.loaders.order.consumer_rows`),
so it knows which units (row groups) it needs, when it first needs each and when it is done
with it. Units are decoded in first-use order by background threads, at most
``prefetch_depth`` ahead (pyarrow releases the GIL; on object storage the reads of the next
lanes' row groups overlap consumption), and copied into a slot of one :class:`Arena`. A
batch is one ``index_select`` per column of the arena: no per-row Python. A slot is freed
after the unit's last batch, so the arena holds at most the units live at the same time
(about ``K / C`` lane windows). When the whole selection fits the cache budget, the arena
keeps every unit at its plan offset and later epochs decode nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from idxlake.loaders.arena import Arena
from idxlake.loaders.decode import Batch, UnitReader
from idxlake.loaders.gather import Gatherer, numpy_now
from idxlake.loaders.misuse import StreamBatch
from idxlake.loaders.plan import Plan
from idxlake.loaders.world import World
from idxlake.schemas import IMAGE

logger = logging.getLogger(__name__)

READ_THREADS = 2
"""Threads decoding units ahead when reading in the main process; DataLoader workers use one each."""


@dataclass
class Progress:
    """Where a pass stands (read by ``state_dict``)."""

    epoch: int
    start: int
    yielded: int = 0


@dataclass(frozen=True)
class Schedule:
    """Which units a consumer's batches need, and when."""

    refs: np.ndarray  # row refs of all batches, end to end
    units: np.ndarray  # unit of each of them
    bounds: list[int]  # batch b is ``refs[bounds[b]:bounds[b + 1]]``
    order: np.ndarray  # units by first use
    arrive: list[list[int]]  # units first used by batch b
    ends: list[list[int]]  # units whose last use is batch b
    live: int  # most units in use at once
    split: tuple[torch.Tensor, ...] = ()  # cached: each batch's refs as an index tensor (views of ``refs``)

    def __len__(self) -> int:
        return len(self.bounds) - 1


def schedule(plan: Plan, refs: np.ndarray, sizes: list[int], *, cached: bool = False) -> Schedule:
    """The units each batch touches, their first and last use, and the peak of units in use.

    Args:
        plan: The plan.
        refs: Row refs of the consumer's batches, end to end.
        sizes: Rows of each batch.
        cached: Every unit is in the cache arena already; only the rows are needed.
    """
    bounds = [0, *itertools.accumulate(sizes)]
    if cached:  # the arena holds every unit at its plan offset: the refs are the arena rows
        return Schedule(refs, np.empty(0, np.int64), bounds, np.empty(0, np.int64), [[] for _ in sizes],
                        [[] for _ in sizes], 0, torch.split(torch.from_numpy(refs), sizes))
    offsets = np.concatenate([[0], np.cumsum(plan.unit_rows)]).astype(np.int64)
    units = np.searchsorted(offsets, refs, side="right") - 1
    batch = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    n_units = len(plan.units)
    first = np.full(n_units, len(sizes), dtype=np.int64)
    last = np.full(n_units, -1, dtype=np.int64)
    last[units] = batch  # batch is non-decreasing: the last write of each unit is its last use
    first[units[::-1]] = batch[::-1]
    used = np.flatnonzero(last >= 0)
    order = used[np.argsort(first[used], kind="stable")]
    ends: list[list[int]] = [[] for _ in sizes]
    arrive: list[list[int]] = [[] for _ in sizes]
    for u in used.tolist():
        ends[int(last[u])].append(u)
        arrive[int(first[u])].append(u)
    delta = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.add.at(delta, first[used], 1)
    np.add.at(delta, last[used] + 1, -1)
    live = int(np.cumsum(delta).max()) if len(used) else 0
    return Schedule(refs, units, bounds, order, arrive, ends, live)


def consume(plan: Plan, reader: UnitReader, sched: Schedule, arena: Arena, *, progress: Progress,
            finish: Callable[[Batch], Batch] | None, readers: ThreadPoolExecutor | None,
            depth: int, pending: dict[int, Future[Batch]] | None = None,
            lookahead: Callable[[], Any] | None = None, adopt: Callable[[Any], None] | None = None,
            dest: Callable[[int, Batch], Batch | None] | None = None) -> Iterator[Batch]:
    """Yield a consumer's batches.

    Args:
        plan: The plan.
        reader: Unit reader.
        sched: The consumer's :func:`schedule`.
        arena: Where decoded units live (a cache arena may already hold some).
        progress: Updated before each yield.
        finish: Applied to each gathered batch (dtype, transform), or ``None``.
        readers: Threads decoding ahead, or ``None`` (decode when needed).
        depth: Units decoded ahead of the one needed next.
        pending: Reads of this pass's units submitted before it started (see ``lookahead``).
        lookahead: Called once, in a reader thread, when every read of this pass is submitted (streaming
            arenas only): plans the next pass and returns it (an :class:`~idxlake.loaders.lookahead.PassPlan`,
            or ``None``), off the consumer's thread (a plan of MNIST train: ~4 ms, a fifth of a cold epoch);
            once it is done, its first units are read ahead, ``depth`` reads at most.
        adopt: Called on this thread with the plan ``lookahead`` made, when this pass takes it up.
        dest: Where batch rows go: ``dest(rows, arena columns)`` gives a tensor per column that
            the gather writes into (``None``: new tensors). Only without ``finish``.
    """
    units = plan.units
    pending = {} if pending is None else pending
    todo = [u for u in sched.order.tolist() if not arena.resident[u] and u not in pending]
    split: tuple[torch.Tensor, ...] | None = None
    if not todo and not pending and arena.region is None:  # warm: every unit resident
        split = sched.split if arena.cache and sched.split else torch.split(torch.from_numpy(
            sched.refs if arena.cache else sched.refs + arena.shift[sched.units]), np.diff(sched.bounds).tolist())
    items = list(arena.tensors.items())
    bounds, ends = sched.bounds, sched.ends
    nxt, upcoming, planning = 0, None, None

    def top_up(limit: int) -> None:
        nonlocal nxt, upcoming, lookahead, planning
        while readers is not None and nxt < len(todo) and len(pending) < limit:
            u = todo[nxt]
            pending[u] = readers.submit(reader.read, units[u], arena.region)
            nxt += 1
        if readers is None or nxt < len(todo) or arena.cache:
            return
        if lookahead is not None:  # every read of this pass is out: plan the next one behind them, best effort
            plan_next, lookahead = lookahead, None
            try:
                planning = readers.submit(plan_next)
            except RuntimeError:  # the interpreter is shutting down: the next pass plans in place
                logger.debug("no thread to plan the next pass in; it plans in place", exc_info=True)
        if planning is not None and planning.done():
            done, planning = planning, None
            try:
                upcoming = done.result()
            except Exception:  # e.g. MemoryError: this pass goes on, and the next one plans in place
                logger.debug("planning the next pass ahead failed; it plans in place", exc_info=True)
            if upcoming is not None and adopt is not None:
                adopt(upcoming)
        if upcoming is not None:
            ahead = upcoming.sched.order
            while upcoming.submitted < len(ahead) and len(pending) + len(upcoming.pending) < depth:
                u = int(ahead[upcoming.submitted])
                upcoming.pending[u] = readers.submit(reader.read, units[u], arena.region)
                upcoming.submitted += 1

    # a pass that decodes gathers with numpy (see gather.py), but not from a region: numpy copies a strided
    # source whole on every take, torch gathers its rows as fast as contiguous ones; numpy taking whole slot rows
    # and copying the records out measured slower than torch's pool even beside LZ4 decompression (A/B, 2 threads)
    serial = split is None and numpy_now() and arena.region is None
    gatherer: Gatherer | None = None

    # a region arena's image column starts a record at every byte: it is indexed by each record's byte offset
    scaled = sched.refs * arena.region.stride if arena.region is not None else None

    def gather(index: torch.Tensor, at: torch.Tensor | None = None) -> StreamBatch:
        nonlocal gatherer
        out = dest(len(index), arena.tensors) if dest is not None else None
        if serial:
            gatherer = gatherer or Gatherer(arena.tensors)  # the arena's columns exist after the first put
            return StreamBatch(gatherer(index, out))
        if out is None:
            return StreamBatch({c: t.index_select(0, at if at is not None and c == IMAGE else index) for c, t in items})
        return StreamBatch({c: torch.index_select(t, 0, at if at is not None and c == IMAGE else index, out=out[c])
                            for c, t in items})

    if split is not None:  # warm (all resident: a filled cache): no reads, no releases, one split index
        for index in split:
            batch = gather(index)
            progress.yielded += 1
            yield batch if finish is None else finish(batch)
        return
    try:
        top_up(depth)
        for b in range(len(sched)):
            lo, hi = bounds[b], bounds[b + 1]
            for u in sched.arrive[b]:
                if arena.resident[u]:
                    continue
                future = pending.pop(u, None)
                if future is None and readers is not None:  # not submitted yet: submit up to it
                    top_up(len(pending) + todo.index(u, nxt) - nxt + 1)
                    future = pending.pop(u)
                top_up(depth)  # the threads keep reading while this one is waited for (not one read at a time)
                arena.put(u, future.result() if future is not None else reader.read(units[u], arena.region))
                future = None  # the arena holds the unit now: its slot is freed at its release, not later
            top_up(depth)
            if len(items) != len(arena.tensors):  # the columns exist after the first put
                items = list(arena.tensors.items())
            units_b = sched.units[lo:hi]
            index = torch.from_numpy(sched.refs[lo:hi] + arena.shift[units_b])
            batch = gather(index, None if scaled is None else torch.from_numpy(scaled[lo:hi] + arena.ishift[units_b]))
            for u in ends[b]:
                arena.release(u)
            progress.yielded += 1
            yield batch if finish is None else finish(batch)
        if planning is not None:  # the last batch came before the next pass's plan: take it up (its reads go ahead)
            wait([planning])
            top_up(depth)
    finally:  # dropped too: a kept traceback of this frame must not pin their buffers (region slots)
        for future in pending.values():
            future.cancel()
        pending.clear()
        if planning is not None:  # not taken up: the next pass plans in place
            planning.cancel()
        future, upcoming, planning = None, None, None  # the dataset keeps the next pass's plan where still of use


def reader_pool(pools: tuple[int, ThreadPoolExecutor] | None) -> tuple[int, ThreadPoolExecutor]:
    """``(pid, pool)``: the decode threads of this process, new when ``pools`` is ``None`` or belongs to
    the parent of a forked process (its threads are gone); :data:`READ_THREADS`, one in a DataLoader worker."""
    if pools is None or pools[0] != os.getpid():
        threads = READ_THREADS if get_worker_info() is None else 1
        pools = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="idxlake-read"))
    return pools


CACHE_FRACTION = 0.25
"""Default cache budget: this fraction of the memory available (``MemAvailable``) when a pass starts."""


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 0


def row_bytes(plan: Plan) -> int:
    """Decoded bytes of one row of the projected columns."""
    return sum(plan.snapshot.meta.record_nbytes if c == IMAGE else 8 for c in plan.columns)


def fits_cache(plan: Plan, cache_bytes: int | None) -> bool:
    """Whether the projected columns of the whole selection fit the cache budget (``None``:
    :data:`CACHE_FRACTION` of the memory available now; 0: never)."""
    budget = cache_bytes if cache_bytes is not None else int(CACHE_FRACTION * available_memory())
    return bool(budget) and plan.num_rows * row_bytes(plan) <= budget


def log_reads(plan: Plan, world: World, sched: Schedule, *, lanes: int, phases: int, shuffle: bool,
              seen: set[tuple[int, int, int, int]]) -> None:
    """Say at INFO what this consumer reads, once per topology (``seen`` remembers them)."""
    key = (world.rank, world.world_size, world.worker, world.num_workers)
    if key in seen:
        return
    seen.add(key)
    disjoint = shuffle and phases % world.num_workers == 0 and (lanes // phases) % world.world_size == 0
    logger.info("%s: consumer %d of %d (%s) reads %d of %d row groups%s", plan.describe(), world.consumer,
                world.consumers, world, len(sched.order), len(plan.units),
                "" if disjoint or world.consumers == 1 else
                f"; its lanes are not disjoint from the others' (lanes={lanes}, phases={phases}: use num_workers "
                f"dividing phases and world_size dividing lanes / phases = {lanes // phases})")
