"""Gathers and copies on the calling thread (numpy, GIL released), for passes that decode.

torch runs a batch-sized gather or copy on its intra-op OpenMP threads, whose workers then spin
waiting for the next one. With torch's threads taking every CPU (its default), that spinning takes
the cores the reader threads decode on: a cold MNIST epoch at 2 threads on 2 cores went from 37.8 to
27.2 ms (70 -> 42 ms of CPU) when its gathers and arena copies moved to numpy; at 1 thread both are the
same. Warm passes, which decode nothing, gather with torch.
"""

from __future__ import annotations

import numpy as np
import torch


def take(tensor: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor.index_select(0, index)`` (into ``out`` if given) by numpy: on the calling thread, GIL released.

    Args:
        tensor: A CPU tensor of a dtype numpy has (rows first).
        index: int64 row indices.
        out: A contiguous tensor of the result's shape and dtype, or ``None`` for a new one.

    Raises:
        IndexError: an index outside ``tensor`` (negative ones too, as torch).
    """
    return take_columns({"": tensor}, index, None if out is None else {"": out})[""]


def take_columns(columns: dict[str, torch.Tensor], index: torch.Tensor,
                 out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """:func:`take` of the same rows of several columns of equal length (the index checked once)."""
    ix = index.numpy()
    rows = min((len(t) for t in columns.values()), default=0)
    if len(ix) and not (int(ix.min()) >= 0 and int(ix.max()) < rows):
        raise IndexError(f"gather index out of range for {rows} rows")
    if out is None:  # checked above: "clip" changes nothing and skips numpy's own checks
        return {c: torch.from_numpy(np.take(t.numpy(), ix, axis=0, mode="clip")) for c, t in columns.items()}
    for c, t in columns.items():
        np.take(t.numpy(), ix, axis=0, out=out[c].numpy(), mode="clip")  # "clip": unbuffered
    return {c: out[c] for c in columns}
