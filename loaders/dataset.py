"""``DeltaIterableDataset``: batches from a pinned version of an idxlake table, for any topology.

See the README section "Training from the table" for the contract: one sharding rule for a single process,
DataLoader workers and DDP ranks; a deterministic global order from ``(seed, epoch)`` that does not depend
on the number of workers or ranks; equal batch counts on every rank; resumable mid-epoch.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow.dataset as pads
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from idxlake.loaders.arena import Arena, pass_arena
from idxlake.loaders.decode import Batch, Normalizer, UnitReader
from idxlake.loaders.lookahead import OrderKey, PassPlan, WarmPlan, choose, pass_key, plan_ahead, plan_pass, spare_core
from idxlake.loaders.options import FixedOptions, check_options, pin_snapshot
from idxlake.loaders.order import PHASES
from idxlake.loaders.plan import OUTPUT_COLUMNS, PinnedPlan, Plan, build_plan
from idxlake.loaders.resume import UNKNOWN_PROGRESS, Resume, SharedState, applies, parse_state, state_of, watch
from idxlake.loaders.ring import Ring
from idxlake.loaders.samples import SampleTransform, finish_batch
from idxlake.loaders.sharedcache import cache_for
from idxlake.loaders.shares import rank_steps, worker_batches
from idxlake.loaders.slotwriter import SlotWriter
from idxlake.loaders.stream import Progress, consume, log_reads, reader_pool
from idxlake.loaders.world import World
from idxlake.schemas import IMAGE, ROW_GROUP_ROWS, LoaderConfigError, TableSnapshot
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)

ImageDtype = Literal["uint8", "float32", "native"]
"""``uint8``: raw pixels (uint8 tables only); ``float32``: scaled and normalised; ``native``: the table dtype."""

DEFAULT_LANES = 48
"""``K``: divisible by 1, 2, 3, 4, 6, 8, 12, 16 (two phases of 24 lanes)."""

DEFAULT_SHUFFLE_BUFFER = 4 * ROW_GROUP_ROWS
"""Rows mixed together at least (whole row groups): 32768, ~25 MB of MNIST images."""


class DeltaIterableDataset(FixedOptions, PinnedPlan, IterableDataset):
    """Stream batches of an idxlake Delta table into PyTorch (use ``DataLoader(ds, batch_size=None)``).

    Args:
        table: Table path or URI, or a :class:`schemas.TableSnapshot` already pinned.
        split: ``"train"``, ``"test"``, a list of splits, or ``None`` for all (partition pruning).
        filter: Row filter: a ``pyarrow.dataset`` expression or a SQL-ish string such as
            ``"label < 5"`` or ``"id >= 100 AND label IN (1, 2)"`` over ``id``, ``label``, ``split``.
        columns: Columns to yield, among ``image``, ``label``, ``id`` (only these are read).
        version: Table version to pin; the latest when ``None``.
        storage_options: Object-store options (delta-rs style keys).
        batch_size: Rows per batch (the last batch of a rank may be smaller unless ``drop_last``).
        shuffle: Permute row groups per epoch and rows within the shuffle buffer.
        seed: Shuffle seed; the order depends only on ``(seed, epoch)``, the selection, ``lanes``
            and the global batch (``world_size x batch_size``).
        shuffle_buffer: Rows (whole row groups, at least this many) shuffled together.
        drop_last: Drop the last incomplete round of batches (all batches full) instead of
            splitting it evenly over the ranks and repeating a few rows when needed.
        rank: This rank; with ``world_size``. Default: ``torch.distributed`` when initialised, else 0.
        world_size: Number of ranks; default from ``torch.distributed`` when initialised, else 1.
        image_dtype: ``"uint8"`` (raw), ``"float32"`` (scaled to [0, 1], then normalised with the
            table's mean/std), or ``"native"`` (the table's dtype as is).
        transform: Callable applied to each batch dict (in the worker). A torchvision random
            transform given a batch draws ONE set of parameters for all of its images.
        sample_transform: Callable on each image ``[C, H, W]`` (in the worker, before the
            ``float32`` normalisation): independent randomness per sample.
        cache_bytes: Keep every decoded row group for later epochs when the projected columns of
            rows this consumer reads fit this many bytes (0: off). ``None`` (default): a quarter of the memory
            available when a pass starts (``CACHE_FRACTION``). ``ds.dataloader()``'s workers share one cache.
        prefetch: Decode row groups ahead in background threads.
        lanes: ``K``, lanes of the order (a multiple of ``phases``, see the README section "Order").
        phases: ``P``, phases of the lanes. Each of the ``world_size x num_workers`` consumers reads only
            its lanes' row groups when ``num_workers`` divides ``P`` and ``world_size`` divides ``K / P``.
        prefetch_depth: Row groups decoded (read) ahead of the one needed next (8: all MNIST train needs at once).
        as_of: Instead of ``version``: pin the version that was latest at this timestamp
            (a datetime, naive = UTC, or text such as ``"2026-11-24 02:41:00"``).

    Raises:
        LoaderConfigError: bad option, unknown column, empty split or selection.
        TableNotFoundError: no table or version.
        SchemaMismatchError: the table does not follow the idxlake contract.
        MissingDataFileError: a file of the pinned version is gone.
    """

    def __init__(self, table: str | TableSnapshot, *, split: str | Sequence[str] | None = None,
                 filter: str | pads.Expression | None = None, columns: Sequence[str] = OUTPUT_COLUMNS,
                 version: int | None = None, storage_options: Mapping[str, str] | None = None,
                 batch_size: int = 256, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None, image_dtype: ImageDtype = "uint8",
                 transform: Callable[[Batch], Batch] | None = None, cache_bytes: int | None = None,
                 prefetch: bool = True, as_of: Timestamp | None = None,
                 sample_transform: SampleTransform | None = None, lanes: int = DEFAULT_LANES,
                 prefetch_depth: int = 8, phases: int = PHASES) -> None:
        super().__init__()
        check_options(batch_size=batch_size, shuffle_buffer=shuffle_buffer, cache_bytes=cache_bytes, seed=seed,
                      version=version, world_size=world_size, image_dtype=image_dtype, lanes=lanes, phases=phases,
                      prefetch_depth=prefetch_depth)
        if rank is not None or world_size is not None:
            World(*World.distributed(rank, world_size))  # validates the pair
        snap = pin_snapshot(table, version=version, as_of=as_of, storage_options=storage_options)
        self.plan: Plan = build_plan(snap, split=split, filter=filter, columns=columns)
        if image_dtype == "uint8" and IMAGE in self.plan.columns and snap.meta.dtype != "uint8":
            raise LoaderConfigError(f"{snap.uri}: images are {snap.meta.dtype}, not uint8; "
                                    "use image_dtype='float32' or 'native'")
        self.batch_size, self.shuffle, self.seed = batch_size, bool(shuffle), int(seed)
        self.shuffle_buffer, self.drop_last, self.image_dtype = shuffle_buffer, bool(drop_last), image_dtype
        self.transform, self.sample_transform = transform, sample_transform
        self.cache_bytes, self.prefetch, self.prefetch_depth = cache_bytes, prefetch, prefetch_depth
        self.lanes, self.phases, self._rank, self._world_size = lanes, phases, rank, world_size
        self._logged: set[tuple[int, int, int, int]] = set()
        self._ring: Ring | None = None  # set by RingDataLoader while it starts its workers
        self._parent_dist: tuple[int, int] | None = None
        self._normalize = Normalizer(snap.meta) if image_dtype == "float32" else None
        self._shared = SharedState()  # the epoch and resume flags, seen by (persistent) workers too
        self._resume: Resume | None = None
        self._progress: Progress | None = None
        self._world: World | None = None
        self._init_process_state()
        self._remember_dist()

    def _init_process_state(self) -> None:
        self._reader = UnitReader(self.plan)
        self._next: PassPlan | None = None  # the next epoch's pass, its first reads submitted (lookahead.py)
        self._warm: WarmPlan | None = None  # the next warm pass, planned in a reader thread
        self._last_epoch: int | None = None  # epoch of this process's previous pass
        self._owner = os.getpid()  # the process _next and _last_epoch belong to (a forked worker: not its own)
        self._cache: Arena | None = None  # the cache arena (whole selection), kept across epochs
        self._slots: Arena | None = None  # the streaming arena (its region too), reused by later passes here
        self._pools: tuple[int, ThreadPoolExecutor] | None = None

    def _thread_pool(self) -> ThreadPoolExecutor | None:  # decode threads of this process, kept across epochs
        self._pools = reader_pool(self._pools) if self.prefetch else None
        return self._pools[1] if self._pools else None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into spawned workers: the topology this process sees now, no per-process state."""
        self.settle_resume()
        state = dict(self.__dict__)
        for key in ("_reader", "_next", "_warm", "_last_epoch", "_owner", "_cache", "_slots", "_progress", "_pools"):
            state.pop(key, None)
        if self._rank is None:
            state["_parent_dist"] = self._dist()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._progress = None
        self._init_process_state()

    @property
    def num_rows(self) -> int:
        """Rows selected (split and filter applied), before padding or dropping."""
        return self.plan.num_rows

    @property
    def epoch(self) -> int:
        """The current epoch (see :meth:`set_epoch`)."""
        return self._shared.epoch

    def _remember_dist(self) -> None:
        if self._rank is None:
            self._parent_dist = World.distributed()

    def _dist(self) -> tuple[int, int]:
        if self._rank is not None and self._world_size is not None:
            return self._rank, self._world_size
        r, ws = World.distributed()
        if ws == 1 and self._parent_dist is not None:  # e.g. a spawned worker: use what the parent saw
            return self._parent_dist
        return r, ws

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (changes the shuffle order); call it before each epoch, in the main process.

        A resume loaded with :meth:`load_state_dict` applies when its epoch is the one iterated.
        """
        self._shared.epoch = epoch  # checked there
        self._shared.workers_read = False
        self._remember_dist()

    def _steps(self, rank: int, world_size: int) -> tuple[int, np.ndarray]:
        return rank_steps(self.num_rows, batch_size=self.batch_size, rank=rank, world_size=world_size,
                          drop_last=self.drop_last)

    def batches_per_rank(self) -> int:
        """Batches every rank yields per epoch (the same on all ranks)."""
        body, tail = self._steps(*self._dist())
        return body + len(tail)

    __len__ = batches_per_rank  # batches this rank yields per full epoch, over all of its DataLoader workers

    def state_dict(self) -> dict[str, Any]:
        """Where this consumer stands in the epoch (torchdata ``StatefulDataLoader`` protocol).

        ``batches_consumed`` counts the rank's batches consumed so far when this process reads
        alone (``num_workers=0``); in a DataLoader worker it is ``None`` and ``start`` plus
        ``yielded`` describe the worker's own progress.

        Raises:
            LoaderConfigError: called in the main process while DataLoader workers do the reading.
        """
        if get_worker_info() is None:
            self.settle_resume()
            if self._shared.workers_read:
                raise LoaderConfigError(f"{self.snapshot.uri}: {UNKNOWN_PROGRESS}")
        return state_of(self._world or World(*self._dist()), epoch=self.epoch, resume=self._resume,
                        progress=self._progress, seed=self.seed, version=self.version, lanes=self.lanes,
                        phases=self.phases)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next pass over ``state["epoch"]`` skips what was consumed.

        Accepts a :meth:`state_dict` (also a worker's, as ``StatefulDataLoader`` passes them) or
        a minimal ``{"epoch": e, "batches_consumed": k}``: the rank's first ``k`` batches of
        epoch ``e`` are skipped, whatever the number of workers. It never sets the epoch: the resume
        applies to the next pass (here or in the next DataLoader workers started) if that pass is
        over epoch ``e`` (see :meth:`set_epoch`), and is dropped otherwise.

        Raises:
            LoaderConfigError: the state is for another seed or table version.
        """
        main = get_worker_info() is None
        self._resume = parse_state(state, seed=self.seed, version=self.version, lanes=self.lanes, phases=self.phases,
                                   uri=self.snapshot.uri, inherited=main)
        self._progress = None
        if main:
            self._shared.resume_used = self._shared.workers_read = False
            watch(self)

    def settle_resume(self) -> None:
        """Drop a resume loaded in this (main) process once DataLoader workers have used it."""
        if self._resume is not None and self._resume.inherited and self._shared.resume_used:
            self._resume = None

    def _finish(self, batch: Batch) -> Batch:
        return finish_batch(batch, sample_transform=self.sample_transform, normalize=self._normalize,
                            transform=self.transform)

    def dataloader(self, *, num_workers: int = 0, pin_memory: bool = False, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` configured for this dataset (see :func:`idxlake.loaders.factory.dataloader`)."""
        from idxlake.loaders.factory import dataloader

        return dataloader(self, num_workers=num_workers, pin_memory=pin_memory, **kwargs)

    def __iter__(self) -> Iterator[Batch]:
        """Start a pass over the current epoch now (takes the pending resume); the iterator reads."""
        world = self._world = World.detect(*self._dist())
        epoch, in_worker = self.epoch, get_worker_info() is not None
        # first: a ring's worker counts this pass (sharedcache.pass_trust) even if what follows raises
        self._cache = cache_for(self._cache, self._ring if in_worker else None, self.plan, self.cache_bytes)
        if in_worker:
            self._shared.workers_read = True
        else:
            self.settle_resume()
            self._shared.workers_read = False
        body, tail = self._steps(world.rank, world.world_size)
        total = body + len(tail)  # batches of this rank
        pending = self._resume  # taken by this pass: applied if it is for this epoch, else dropped
        resume = pending if pending is not None and applies(pending, world=world, epoch=epoch, batches=total,
                                                            where=self.plan.describe()) else None
        self._resume = None
        start, skip = (resume.start, resume.skip) if resume is not None else (0, 0)
        if not total:
            logger.warning("%s: %d rows are fewer than one batch of %d per rank (world size %d) with "
                           "drop_last=True: nothing to yield", self.plan.describe(), self.num_rows,
                           self.batch_size, world.world_size)
        mine = worker_batches(total, worker=world.worker, num_workers=world.num_workers, start=start)
        progress = self._progress = Progress(epoch, start, min(skip, len(mine)))
        logger.debug("%s: epoch %d, %s, %d of %d batches", self.plan.describe(), epoch, world,
                     len(mine) - progress.yielded, total)
        return self._stream(world, tail, mine[progress.yielded:], progress, total,
                            mark_used=in_worker and pending is not None and pending.inherited)

    def _pass_plan(self, epoch: int, world: World, tail: np.ndarray, batches: np.ndarray, *,
                   cached: bool = False) -> PassPlan:
        key = OrderKey(self.seed, epoch, self.shuffle, self.lanes, self.shuffle_buffer,
                       self.batch_size * world.world_size, self.phases)
        return plan_pass(self.plan, key, world=world, tail=tail, batches=batches, cached=cached)

    def _stream(self, world: World, tail: np.ndarray, batches: np.ndarray, progress: Progress, total: int, *,
                mark_used: bool) -> Iterator[Any]:  # batches, or in a ring's worker its tokens
        if mark_used:  # runs at the first batch asked: every worker of this pass has been started
            self._shared.resume_used = True
        if self._owner != os.getpid():  # forked: the parent's reads ahead (and its slots) never complete here
            self._owner, self._next, self._warm, self._last_epoch, self._slots = os.getpid(), None, None, None, None
        key, ahead, self._next = pass_key(progress.epoch, world, batches), self._next, None
        cached = self._cache is not None and bool(self._cache.resident.all())
        pending, self._warm = self._warm, None
        ahead = choose(ahead, pending, key, cached=cached,
                       plan=lambda: self._pass_plan(progress.epoch, world, tail, batches, cached=cached))
        nxt = worker_batches(total, worker=world.worker, num_workers=world.num_workers)
        upcoming = functools.partial(self._pass_plan, progress.epoch + 1, world, tail, nxt)  # the next epoch's pass
        later = pass_key(progress.epoch + 1, world, nxt)

        def following(plan: PassPlan) -> None:  # the next pass, planned in a reader thread: its first reads go ahead
            self._next = plan

        advancing, self._last_epoch = self._last_epoch is not None and progress.epoch > self._last_epoch, progress.epoch
        pool = self._thread_pool()
        if cached and advancing and pool is not None and spare_core():  # plan the next warm pass off this thread
            self._warm = plan_ahead(pool, later, upcoming)
        log_reads(self.plan, world, ahead.sched, lanes=self.lanes, phases=self.phases, shuffle=self.shuffle,
                  seen=self._logged)
        arena, self._slots = pass_arena(self.plan, self._cache, self._slots, ahead.sched.live,  # concurrent: own
                                        region=self._reader.reads_raw(), depth=self.prefetch_depth), None
        finish = self._finish if self._normalize or self.transform or self.sample_transform else None
        ring = SlotWriter(self._ring) if self._ring is not None and get_worker_info() else None  # a ring's worker
        batches_out = consume(self.plan, self._reader, ahead.sched, arena, progress=progress, depth=self.prefetch_depth,
                              finish=finish, readers=pool, pending=ahead.take(),
                              lookahead=upcoming if advancing else None, adopt=following,  # not a first/repeat
                              dest=ring.dest if ring is not None and finish is None else None)
        try:
            yield from batches_out if ring is None else ring.send(batches_out)
            ended_warm = self._cache is not None and self._cache.resident.all() and get_worker_info() is None
            if ended_warm and self._warm is None and pool is not None:  # plan the next pass between epochs
                self._warm = plan_ahead(pool, later, upcoming)
        finally:
            if not arena.cache:
                self._slots = arena
