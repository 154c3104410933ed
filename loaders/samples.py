"""Per-sample transforms in the streaming dataset, and per-worker RNG seeding for them.

``DeltaIterableDataset(transform=...)`` sees a whole batch dict: a torchvision v2 random
transform given a ``[B, C, H, W]`` tensor draws ONE set of parameters for all B images.
``sample_transform=`` is called on each image ``[C, H, W]`` separately, in the worker, so every
sample draws its own parameters from the worker's RNG (torch, ``random`` and numpy, which
:func:`seed_worker` seeds apart per rank and worker).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from idxlake.loaders.misuse import StreamBatch
from idxlake.schemas import IMAGE, LoaderConfigError

SampleTransform = Callable[[torch.Tensor], torch.Tensor]
"""A callable on one image tensor ``[C, H, W]`` (e.g. a torchvision v2 pipeline)."""


def apply_per_sample(images: torch.Tensor, fn: SampleTransform) -> torch.Tensor:
    """``fn`` on each image of ``images`` (``[B, ...]``); the results stacked into ``[B, ...]``.

    Raises:
        LoaderConfigError: ``fn`` returned something other than a tensor, or tensors of different shapes.
    """
    outs = [fn(image) for image in images.unbind(0)]
    if not outs:
        return images
    first = outs[0]
    for i, out in enumerate(outs):
        if not isinstance(out, torch.Tensor):
            raise LoaderConfigError(f"sample_transform returned {type(out).__name__} for image {i} of the batch; "
                                    "it must return a tensor (end a torchvision pipeline with ToImage/ToDtype "
                                    "or ToTensor)")
        if out.shape != first.shape:
            raise LoaderConfigError(
                f"sample_transform returned shape {tuple(out.shape)} for image {i} of the batch and "
                f"{tuple(first.shape)} for image 0; it must return tensors of one shape (crop or resize "
                "to a fixed size)")
    return torch.stack(outs)


def finish_batch(batch: dict[str, torch.Tensor], *, sample_transform: SampleTransform | None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None,
                 transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None) -> dict[str, Any]:
    """The last step of a streamed batch: per-sample transform, normalisation, batch transform.

    Args:
        batch: The gathered batch (fresh tensors).
        sample_transform: Called on each image (before the normalisation: it sees the table dtype).
        normalize: The ``image_dtype="float32"`` normalisation, or ``None``.
        transform: Called on the whole batch dict last.

    Returns:
        The batch as a :class:`~idxlake.loaders.misuse.StreamBatch` when it is still a dict (so
        that a DataLoader with automatic batching is detected), else what ``transform`` returned.
    """
    if IMAGE in batch:
        if sample_transform is not None:
            batch[IMAGE] = apply_per_sample(batch[IMAGE], sample_transform)
        if normalize is not None:
            batch[IMAGE] = normalize(batch[IMAGE])
    out = transform(batch) if transform is not None else batch
    return StreamBatch(out) if type(out) is dict else out


def worker_seed(base_seed: int, rank: int) -> int:
    """A 64-bit seed for one DataLoader worker of one rank, from the worker's DataLoader seed."""
    words = np.random.SeedSequence([base_seed & 0xFFFFFFFF, base_seed >> 32, rank, 0x1D8]).generate_state(2)
    return int(words[0]) | (int(words[1]) << 32)


def seed_worker(worker_id: int, *, rank: int = 0, user_init: Callable[[int], None] | None = None) -> None:
    """``worker_init_fn`` that seeds torch, ``random`` and numpy apart per (rank, worker, epoch).

    The DataLoader gives each worker ``base_seed + worker_id``, with ``base_seed`` drawn anew
    from the main process's RNG for each epoch's workers. DDP ranks usually call
    ``torch.manual_seed`` with the same seed, so without the rank mixed in, worker k of every rank
    would draw the same augmentations. The shuffle order is unaffected: it depends only on the
    dataset's own ``seed`` and the epoch.

    Args:
        worker_id: The worker (given by the DataLoader).
        rank: The process's DDP rank, captured when the loader was built.
        user_init: The caller's own ``worker_init_fn``, run afterwards.
    """
    info = get_worker_info()
    base = info.seed if info is not None else torch.initial_seed()
    seed = worker_seed(int(base), rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    if user_init is not None:
        user_init(worker_id)
