"""Gathers and copies on the calling thread (numpy, GIL released), for passes that decode.

torch runs a batch-sized gather or copy on its intra-op OpenMP threads, whose workers then spin
waiting for the next one. With torch's threads taking every CPU (its default), that spinning takes
the cores the reader threads decode on: a cold MNIST epoch at 2 threads on 2 cores went from 37.8 to
27.2 ms (70 -> 42 ms of CPU) when its gathers and arena copies moved to numpy; at 1 thread both are the
same, and torch's per-call cost is lower, so with one torch thread (no pool) the passes keep torch's
ops. Warm passes, which decode nothing, gather with torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

NUMPY_WHILE_DECODING = True
"""Passes that decode gather and copy with numpy when torch has an intra-op pool (:func:`numpy_now`);
``False``: with torch (``benchmarks/bench_loader.py`` compares them in one run)."""


def numpy_now() -> bool:
    """Whether a pass that decodes should gather and copy with numpy now: torch has a pool to keep asleep
    (more than one intra-op thread) and :data:`NUMPY_WHILE_DECODING` is on."""
    return NUMPY_WHILE_DECODING and torch.get_num_threads() > 1


def take(tensor: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor.index_select(0, index)`` (into ``out`` if given) by numpy: on the calling thread, GIL released.

    Args:
        tensor: A CPU tensor of a dtype numpy has (rows first; not requiring grad).
        index: int64 row indices.
        out: A contiguous tensor of the result's shape and dtype, or ``None`` for a new one.

    Raises:
        IndexError: an index outside ``tensor`` (negative ones too, as torch).
    """
    return Gatherer({"": tensor})(index, None if out is None else {"": out})[""]


class Gatherer:
    """:func:`take` of the same rows of several columns of equal length: numpy views made once, the
    index checked once per call.

    Args:
        columns: Column name -> CPU tensor (rows first), all with the same rows.
    """

    def __init__(self, columns: Mapping[str, torch.Tensor]) -> None:
        self.arrays = {c: t.numpy() for c, t in columns.items()}
        self.rows = min((len(a) for a in self.arrays.values()), default=0)

    def __call__(self, index: torch.Tensor, out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The rows ``index`` of every column (into ``out``'s tensors if given).

        Raises:
            IndexError: an index outside the columns.
        """
        ix = index.numpy()
        if len(ix) and not (ix.min() >= 0 and ix.max() < self.rows):
            raise IndexError(f"gather index out of range for {self.rows} rows")
        if out is None:  # checked above: "clip" changes nothing and skips numpy's own checks
            return {c: torch.from_numpy(np.take(a, ix, axis=0, mode="clip")) for c, a in self.arrays.items()}
        for c, a in self.arrays.items():
            np.take(a, ix, axis=0, out=out[c].numpy(), mode="clip")  # "clip": unbuffered
        return {c: out[c] for c in self.arrays}
