"""Catch ``DataLoader(DeltaIterableDataset)`` with automatic batching, which silently stacks batches.

The streaming dataset yields whole batches. A ``DataLoader`` left at its default
``batch_size=1`` (or given ``batch_size=4``) collects 1 (4) of them and stacks them into
``[1, 256, 1, 28, 28]`` (``[4, 256, ...]``) tensors. Every batch the dataset yields is a
:class:`StreamBatch` (a ``dict`` subclass, otherwise a plain dict), and torch's
``default_collate`` dispatches on the element type through ``default_collate_fn_map``:
the entry registered here sees the list of batches, warns once per process, and collates
them as plain dicts (the behaviour is unchanged, only announced). In a DataLoader worker
the warning is carried to the main process by the collated batch itself (its pickle
reduction warns on arrival), so it shows where the training loop runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

MISUSE_MESSAGE = (
    "DataLoader(DeltaIterableDataset) with automatic batching: the dataset already yields whole batches, "
    "so the DataLoader stacks {n} of them into tensors of shape [{n}, batch, ...]. "
    "Pass batch_size=None to the DataLoader (or use ds.dataloader(...)) and set the batch size on the "
    "dataset: DeltaIterableDataset(..., batch_size=256)")

_warned = False


class StreamBatch(dict[str, Any]):
    """A batch yielded by :class:`~idxlake.loaders.DeltaIterableDataset`: a plain ``dict`` of
    tensors whose type lets the default collate recognise it."""


class _Misbatched(dict[str, Any]):
    """A batch collated from several :class:`StreamBatch` in a worker; warns when it arrives."""

    n: int = 0

    def __reduce__(self) -> tuple[Callable[..., dict[str, Any]], tuple[dict[str, Any], int]]:
        return _arrived, (dict(self), self.n)


def warn_misuse(n: int) -> None:
    """Warn (once per process) that ``n`` batches were stacked by automatic batching."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(MISUSE_MESSAGE.format(n=n), UserWarning, stacklevel=3)


def _arrived(batch: dict[str, Any], n: int) -> dict[str, Any]:
    warn_misuse(n)
    return batch


def _collate_stream_batches(batch: list[StreamBatch], *,
                            collate_fn_map: dict[type | tuple[type, ...], Callable[..., Any]] | None = None) -> Any:
    out = collate([dict(b) for b in batch], collate_fn_map=collate_fn_map)
    if get_worker_info() is None:
        warn_misuse(len(batch))
        return out
    carrier = _Misbatched(out)
    carrier.n = len(batch)
    return carrier


default_collate_fn_map[StreamBatch] = _collate_stream_batches
