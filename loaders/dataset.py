"""``DeltaIterableDataset``: batches from a pinned version of an idxlake table, for any topology.

See the README section "Training from the table" for the contract: one sharding rule
for a single process, DataLoader workers and DDP ranks; a deterministic global order
from ``(seed, epoch)`` that does not depend on the number of workers or ranks; equal
batch counts on every rank; resumable mid-epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow.dataset as pads
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from idxlake.loaders.decode import Batch, Normalizer, UnitReader
from idxlake.loaders.filters import INT64_MAX, INT64_MIN, MAX_BATCH_SIZE, MAX_WORLD_SIZE, check_int
from idxlake.loaders.order import EpochOrder, epoch_order, padding, rank_batches, worker_batches
from idxlake.loaders.plan import OUTPUT_COLUMNS, Plan, build_plan
from idxlake.loaders.resume import UNKNOWN_PROGRESS, Resume, SharedState, applies, parse_state, watch
from idxlake.loaders.samples import SampleTransform, finish_batch
from idxlake.loaders.stream import READ_THREADS, DecodeCache, Progress, WindowBuffers, consume
from idxlake.loaders.world import World
from idxlake.schemas import IMAGE, ROW_GROUP_ROWS, LoaderConfigError, TableMeta, TableSnapshot, snapshot
from idxlake.schemas.versions import Timestamp

logger = logging.getLogger(__name__)

ImageDtype = Literal["uint8", "float32", "native"]
"""``uint8``: raw pixels (uint8 tables only); ``float32``: scaled and normalised; ``native``: the table dtype."""

DEFAULT_SHUFFLE_BUFFER = 4 * ROW_GROUP_ROWS
"""Rows mixed together at least (whole row groups): 32768, ~25 MB of MNIST images."""


class DeltaIterableDataset(IterableDataset):
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
        seed: Shuffle seed; the order depends only on ``(seed, epoch)`` and the selection.
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
        cache_bytes: Memory budget for keeping decoded row groups for later epochs (0: off). The
            cache lives in the reading process: use it with ``num_workers=0`` or persistent workers.
        prefetch: Decode the next window in background threads.
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
                 transform: Callable[[Batch], Batch] | None = None, cache_bytes: int = 0,
                 prefetch: bool = True, as_of: Timestamp | None = None,
                 sample_transform: SampleTransform | None = None) -> None:
        super().__init__()
        check_int("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE")
        check_int("shuffle_buffer", shuffle_buffer, low=0, high=INT64_MAX // 2, limit="rows")
        check_int("cache_bytes", cache_bytes, low=0, high=INT64_MAX // 2)
        check_int("seed", seed, low=INT64_MIN, high=2**64 - 1)
        if version is not None:
            check_int("version", version, low=0, high=INT64_MAX, limit="a Delta version")
        if world_size is not None:
            check_int("world_size", world_size, low=1, high=MAX_WORLD_SIZE, limit="MAX_WORLD_SIZE")
        if image_dtype not in ("uint8", "float32", "native"):
            raise LoaderConfigError(f"image_dtype must be 'uint8', 'float32' or 'native', got {image_dtype!r}")
        if rank is not None or world_size is not None:
            World(*World.distributed(rank, world_size))  # validates the pair
        if as_of is not None and (version is not None or isinstance(table, TableSnapshot)):
            raise LoaderConfigError(f"as_of={as_of!r} pins a version by time: give it instead of version= "
                                    "and with a table URI (not a TableSnapshot)")
        snap = table if isinstance(table, TableSnapshot) else snapshot(
            table, version=version, as_of=as_of, storage_options=storage_options)
        if version is not None and snap.version != version:
            raise LoaderConfigError(f"{snap.uri}: snapshot is version {snap.version}, version={version} was asked")
        self.plan: Plan = build_plan(snap, split=split, filter=filter, columns=columns)
        if image_dtype == "uint8" and IMAGE in self.plan.columns and snap.meta.dtype != "uint8":
            raise LoaderConfigError(f"{snap.uri}: images are {snap.meta.dtype}, not uint8; "
                                    "use image_dtype='float32' or 'native'")
        self.batch_size, self.shuffle, self.seed = batch_size, bool(shuffle), int(seed)
        self.shuffle_buffer, self.drop_last, self.image_dtype = shuffle_buffer, bool(drop_last), image_dtype
        self.transform, self.cache_bytes, self.prefetch = transform, cache_bytes, prefetch
        self.sample_transform = sample_transform
        self._rank, self._world_size = rank, world_size
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
        self._cache: DecodeCache | None = None
        self._buffers: WindowBuffers | None = WindowBuffers()  # None while a pass uses them
        self._pools: tuple[int, ThreadPoolExecutor | None, ThreadPoolExecutor | None] | None = None

    def _thread_pools(self) -> tuple[ThreadPoolExecutor | None, ThreadPoolExecutor | None]:
        """Prefetch and decode threads of this process, kept across epochs (created lazily)."""
        if not self.prefetch:
            return None, None
        if self._pools is None or self._pools[0] != os.getpid():  # none yet, or forked: threads are gone
            threads = READ_THREADS if get_worker_info() is None else 1  # workers: one decode thread each
            self._pools = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="idxlake-window"),
                           ThreadPoolExecutor(threads, thread_name_prefix="idxlake-read") if threads > 1 else None)
        return self._pools[1], self._pools[2]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into spawned workers: the topology as this process sees it now (the process
        group may have been initialised after the dataset was created), no per-process state."""
        self.settle_resume()
        state = dict(self.__dict__)
        for key in ("_reader", "_cache", "_buffers", "_progress", "_pools"):
            state.pop(key, None)
        if self._rank is None:
            state["_parent_dist"] = self._dist()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._progress = None
        self._init_process_state()

    # ----------------------------------------------------------------- properties
    @property
    def snapshot(self) -> TableSnapshot:
        """The pinned table version."""
        return self.plan.snapshot

    @property
    def version(self) -> int:
        """The pinned Delta version."""
        return self.plan.snapshot.version

    @property
    def meta(self) -> TableMeta:
        """The table's metadata (shape, dtype, class names, statistics)."""
        return self.plan.snapshot.meta

    @property
    def num_rows(self) -> int:
        """Rows selected (split and filter applied), before padding or dropping."""
        return self.plan.num_rows

    @property
    def epoch(self) -> int:
        """The current epoch (see :meth:`set_epoch`)."""
        return self._shared.epoch

    # ----------------------------------------------------------------- topology
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
        self._shared.epoch = int(epoch)
        self._shared.workers_read = False
        self._remember_dist()

    def batches_per_rank(self) -> int:
        """Batches every rank yields per epoch (the same on all ranks)."""
        rank, world_size = self._dist()
        return len(rank_batches(self.num_rows, batch_size=self.batch_size, rank=rank, world_size=world_size,
                                drop_last=self.drop_last))

    def __len__(self) -> int:
        """Batches this rank yields per full epoch, over all of its DataLoader workers."""
        return self.batches_per_rank()

    # ----------------------------------------------------------------- resume
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
        world = self._world or World(*self._dist())
        epoch, progress, resume = self.epoch, self._progress, self._resume
        start = yielded = 0
        if resume is not None and resume.epoch == epoch:
            start, yielded = resume.start, resume.skip
        elif progress is not None and progress.epoch == epoch:
            start, yielded = progress.start, progress.yielded
        return {"epoch": epoch, "seed": self.seed, "version": self.version, "rank": world.rank,
                "world_size": world.world_size, "worker": world.worker, "num_workers": world.num_workers,
                "start": start, "yielded": yielded,
                "batches_consumed": start + yielded if world.num_workers == 1 else None}

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
        self._resume = parse_state(state, seed=self.seed, version=self.version, uri=self.snapshot.uri,
                                   inherited=main)
        self._progress = None
        if main:
            self._shared.resume_used = False
            self._shared.workers_read = False
            watch(self)

    def settle_resume(self) -> None:
        """Drop a resume loaded in this (main) process once DataLoader workers have used it."""
        if self._resume is not None and self._resume.inherited and self._shared.resume_used:
            self._resume = None

    # ----------------------------------------------------------------- iteration
    def _finish(self, batch: Batch) -> Batch:
        return finish_batch(batch, sample_transform=self.sample_transform, normalize=self._normalize,
                            transform=self.transform)

    def dataloader(self, *, num_workers: int = 0, pin_memory: bool = False, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` configured for this dataset (see :func:`idxlake.loaders.factory.dataloader`)."""
        from idxlake.loaders.factory import dataloader

        return dataloader(self, num_workers=num_workers, pin_memory=pin_memory, **kwargs)

    def __iter__(self) -> Iterator[Batch]:
        """Start a pass over the current epoch: set up now (the pending resume is taken and
        :meth:`state_dict` describes the new pass), batches are read by the returned iterator."""
        world = self._world = World.detect(*self._dist())
        epoch, in_worker = self.epoch, get_worker_info() is not None
        if in_worker:
            self._shared.workers_read = True
        else:
            self.settle_resume()
            self._shared.workers_read = False
        order = epoch_order(self.plan.unit_rows, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                            buffer_rows=self.shuffle_buffer)
        ranges = rank_batches(order.num_rows, batch_size=self.batch_size, rank=world.rank,
                              world_size=world.world_size, drop_last=self.drop_last)
        pending = self._resume  # taken by this pass: applied if it is for this epoch, else dropped
        resume = pending if pending is not None and applies(pending, world=world, epoch=epoch, batches=len(ranges),
                                                            where=self.plan.describe()) else None
        self._resume = None
        start, skip = (resume.start, resume.skip) if resume is not None else (0, 0)
        if not len(ranges):
            logger.warning("%s: %d rows are fewer than one batch of %d per rank (world size %d) with "
                           "drop_last=True: nothing to yield", self.plan.describe(), order.num_rows,
                           self.batch_size, world.world_size)
        mine = worker_batches(len(ranges), worker=world.worker, num_workers=world.num_workers, start=start)
        progress = self._progress = Progress(epoch, start, min(skip, len(mine)))
        logger.debug("%s: epoch %d, %s, %d of %d batches (pad %d)", self.plan.describe(), epoch, world,
                     len(mine) - progress.yielded, len(ranges),
                     padding(order.num_rows, batch_size=self.batch_size, world_size=world.world_size,
                             drop_last=self.drop_last))
        return self._stream(order, ranges[mine[progress.yielded:]], progress,
                            mark_used=in_worker and pending is not None and pending.inherited)

    def _stream(self, order: EpochOrder, batches: np.ndarray, progress: Progress, *,
                mark_used: bool) -> Iterator[Batch]:
        if mark_used:  # runs at the first batch asked: every worker of this pass has been started
            self._shared.resume_used = True
        if self.cache_bytes and self._cache is None:
            self._cache = DecodeCache(self.plan, self.cache_bytes)
        buffers, self._buffers = self._buffers or WindowBuffers(), None  # fresh ones for a concurrent pass
        try:
            builder, readers = self._thread_pools()
            yield from consume(order, batches, self.plan, self._reader, cache=self._cache, buffers=buffers,
                               progress=progress, builder=builder, readers=readers,
                               finish=self._finish)
        finally:
            self._buffers = buffers
