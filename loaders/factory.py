"""``ds.dataloader(...)``: a ``DataLoader`` configured correctly for an idxlake dataset.

* the streaming dataset batches itself: ``batch_size=None`` (a ``batch_size``, ``shuffle`` or
  sampler given to the DataLoader is refused with what to set on the dataset instead);
  the map-style dataset gets ``batch_size=64, shuffle=True`` unless told otherwise;
* ``persistent_workers`` when there are workers (the dataset's per-process state survives epochs);
* a multiprocessing start method that works for the table's storage (the storage layer's
  :func:`idxlake.schemas.worker_context`, the one registry of it):
  forked workers are fine for local files, S3 and GCS (each process creates its own pyarrow
  filesystem), but pyarrow's Azure client aborts in a forked child, so Azure uses ``forkserver``;
* the streaming dataset gets a :class:`~idxlake.loaders.ring.RingDataLoader`: with workers,
  batches come back through a per-worker shared-memory ring instead of one socket handshake
  and one new shared-memory segment per tensor; without, it iterates the dataset directly
  (no per-batch fetcher, sampler or profiler hooks). A ``collate_fn`` gets the plain
  ``DataLoader`` (the ring carries the dataset's own batches);
* :func:`~idxlake.loaders.samples.seed_worker` as ``worker_init_fn``, so per-sample random
  transforms differ across DDP ranks and workers (the caller's own ``worker_init_fn`` runs after it).
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from idxlake.loaders.samples import seed_worker
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError, TableSnapshot
from idxlake.schemas import worker_context as storage_worker_context

MAPSTYLE_DEFAULTS: dict[str, Any] = {"batch_size": 64, "shuffle": True}
"""DataLoader arguments the map-style dataset gets unless the caller passes them."""

_STREAMING_REFUSED: dict[str, str] = {
    "batch_size": "batch_size=... on DeltaIterableDataset (the DataLoader gets batch_size=None)",
    "shuffle": "shuffle=/seed= on DeltaIterableDataset (it shuffles deterministically per epoch)",
    "sampler": "split=/filter= on DeltaIterableDataset (it shards by rank and worker itself)",
    "batch_sampler": "batch_size=... on DeltaIterableDataset",
    "drop_last": "drop_last=... on DeltaIterableDataset",
}
"""DataLoader arguments that make no sense for the streaming dataset -> what to use instead."""


def worker_context(uri: str) -> str | None:
    """The multiprocessing start method for DataLoader workers reading the table at ``uri``.

    Returns:
        ``"fork"``, ``"forkserver"`` or ``"spawn"``, or ``None`` (the platform's default) where
        fork is preferred but the platform does not default to it (macOS, Windows).
    """
    method = storage_worker_context(uri)
    available = multiprocessing.get_all_start_methods()
    if method == "fork" and (sys.platform != "linux" or "fork" not in available):
        return None
    return method if method in available else "spawn"


def _sampler_rank(kwargs: dict[str, Any]) -> int:
    """The rank a map-style loader's workers are seeded with: its ``DistributedSampler``'s (possibly without a
    process group: custom launchers), else the process group's."""
    sampler = kwargs.get("sampler") or getattr(kwargs.get("batch_sampler"), "sampler", None)
    return int(sampler.rank) if isinstance(sampler, DistributedSampler) else World.distributed()[0]


def dataloader(dataset: Dataset, *, num_workers: int = 0, pin_memory: bool = False, **kwargs: Any) -> DataLoader:
    """A ``DataLoader`` over an idxlake dataset with the settings it needs.

    Args:
        dataset: A :class:`~idxlake.loaders.DeltaIterableDataset` or :class:`~idxlake.loaders.DeltaImageDataset`.
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches (for CUDA).
        **kwargs: Other ``DataLoader`` arguments; they override the defaults chosen here
            (``persistent_workers``, ``multiprocessing_context``, ``prefetch_factor``...).

    Returns:
        A :class:`~idxlake.loaders.ring.RingDataLoader` for the streaming dataset (without a
        ``collate_fn``), a plain ``DataLoader`` otherwise.

    Raises:
        LoaderConfigError: a DataLoader batching/shuffling argument for the streaming dataset, or
            a negative ``num_workers``.
    """
    from idxlake.loaders.dataset import DeltaIterableDataset
    from idxlake.loaders.ring import RingDataLoader

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise LoaderConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    snap: TableSnapshot = dataset.snapshot  # type: ignore[attr-defined]
    options: dict[str, Any] = {}
    if isinstance(dataset, DeltaIterableDataset):
        bad = [k for k in _STREAMING_REFUSED if k in kwargs and not (k == "batch_size" and kwargs[k] is None)]
        if bad:
            raise LoaderConfigError(f"{snap.uri}: the streaming dataset batches, shuffles and shards itself; "
                                    + "; ".join(f"instead of DataLoader({k}=...) use {_STREAMING_REFUSED[k]}"
                                                for k in bad))
        options["batch_size"] = None
        rank = dataset._dist()[0]
    else:
        if "sampler" not in kwargs and "batch_sampler" not in kwargs:
            options.update(MAPSTYLE_DEFAULTS)
        elif "batch_sampler" not in kwargs:
            options["batch_size"] = MAPSTYLE_DEFAULTS["batch_size"]
        rank = _sampler_rank(kwargs)
    if num_workers:
        options["persistent_workers"] = True
        options["multiprocessing_context"] = worker_context(snap.uri)
    user_init = kwargs.pop("worker_init_fn", None)
    options["worker_init_fn"] = functools.partial(seed_worker, rank=rank, user_init=user_init)
    options.update(kwargs)
    if isinstance(dataset, DeltaIterableDataset) and "collate_fn" not in options:
        options.pop("batch_size")  # the ring always runs with batch_size=None
        return RingDataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory, **options)
    return DataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory, **options)
