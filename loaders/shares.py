"""Who yields which rows of an epoch: equal batch counts per rank, round-robin DataLoader workers.

Pure functions of numbers, shared by every order (:mod:`idxlake.loaders.order`): the full global
steps and the last round split evenly over the ranks (padded only when it has fewer rows than
ranks, or dropped with ``drop_last``), and rank batch ``j`` going to worker ``j % W``.
"""

from __future__ import annotations

import numpy as np


def rank_batches(num_rows: int, *, batch_size: int, rank: int, world_size: int,
                 drop_last: bool) -> np.ndarray:
    """The batches of one rank as ``[start, stop)`` ranges of the padded epoch sequence.

    Positions ``>= num_rows`` are padding (see :func:`source_positions`). Every rank gets
    the same number of batches.

    Args:
        num_rows: ``N``, rows of the epoch sequence.
        batch_size: Rows per batch ``B``.
        rank: This rank ``r``.
        world_size: Number of ranks ``R``.
        drop_last: Drop the incomplete last round instead of splitting (and maybe padding) it.

    Returns:
        ``int64`` array of shape ``[K, 2]``.
    """
    per_round = batch_size * world_size
    if drop_last:
        rounds, last = num_rows // per_round, 0
    else:
        rounds = -(-num_rows // per_round)
        last = num_rows - (rounds - 1) * per_round if rounds else 0
    full = rounds - (1 if last else 0)
    starts = (np.arange(full, dtype=np.int64) * world_size + rank) * batch_size
    out = np.stack([starts, starts + batch_size], axis=1) if full else np.empty((0, 2), np.int64)
    if last:
        total = max(last, world_size)  # pad only when a rank would otherwise get no row
        q, extra = divmod(total, world_size)
        begin = full * per_round + rank * q + min(rank, extra)
        out = np.concatenate([out, [[begin, begin + q + (rank < extra)]]]).astype(np.int64)
    return out


def padding(num_rows: int, *, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Rows repeated per epoch to give every rank the same number of batches."""
    if drop_last or num_rows == 0:
        return 0
    last = num_rows - (-(-num_rows // (batch_size * world_size)) - 1) * batch_size * world_size
    return max(0, world_size - last)


def source_positions(start: int, stop: int, num_rows: int) -> np.ndarray:
    """Positions of ``S`` that padded positions ``[start, stop)`` read: themselves, or for
    padding (``>= num_rows``) the epoch's first rows again, cyclically."""
    pos = np.arange(start, stop, dtype=np.int64)
    return np.where(pos < num_rows, pos, (pos - num_rows) % max(num_rows, 1))


def worker_batches(num_batches: int, *, worker: int, num_workers: int, start: int = 0) -> np.ndarray:
    """Indices of the rank's batches that ``worker`` yields: ``start + worker``, ``+ num_workers``...

    Args:
        num_batches: ``K``, batches of the rank.
        worker: This worker.
        num_workers: Workers of the rank.
        start: First batch of this pass (batches before it were consumed before a resume).
    """
    return np.arange(start + worker, num_batches, num_workers, dtype=np.int64)


def rank_steps(num_rows: int, *, batch_size: int, rank: int, world_size: int,
               drop_last: bool) -> tuple[int, np.ndarray]:
    """``(body steps, tail ranges)`` of one rank: it yields ``body + len(tail ranges)`` batches.

    Every order (any ``K`` and ``P``, shuffled or not) has ``N // G`` full steps and a tail ``E`` of
    ``N mod G`` rows; the tail ranges are :func:`rank_batches` of ``E`` (``[start, stop)`` into ``E``).
    """
    body, tail = divmod(num_rows, batch_size * world_size)
    return body, rank_batches(tail, batch_size=batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
