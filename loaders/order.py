"""The epoch's sample order and who yields which batch: pure functions of numbers.

The order of an epoch depends only on ``(seed, epoch)`` and the selection (rows per
unit), never on the number of ranks or workers:

1. the units (row groups) are permuted (``shuffle=True``);
2. consecutive units are grouped into *windows* of at least ``buffer_rows`` rows;
3. the rows of each window are permuted (the shuffle buffer).

Concatenating the windows gives the epoch sequence ``S`` of ``N`` rows. Global
batch ``g`` is ``S[g*B:(g+1)*B]``; rank ``r`` of ``R`` yields global batches
``r, r+R, r+2R, ...`` and, within a rank, worker ``w`` of ``W`` yields the rank's
batches ``w, w+W, ...`` (the DataLoader interleaves workers round-robin, so a rank
sees the same sequence for any ``W``, and the ranks together see ``S`` in order).
Every rank yields the same number of batches: the last round of ``R`` batches is
split as evenly as possible, padded only when it has fewer than ``R`` rows
(``drop_last=False``), or dropped when incomplete (``drop_last=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_UNITS, _ROWS = 1, 2  # stream ids of the seed sequence: unit order, row order of window k


def _rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch, *stream])


@dataclass(frozen=True)
class EpochOrder:
    """Windows of one epoch.

    Attributes:
        windows: Unit indices of each window, in epoch order.
        offsets: Position in ``S`` where each window starts (plus ``N`` at the end).
        seed: The seed.
        epoch: The epoch.
        shuffle: Whether rows are permuted within windows.
    """

    windows: tuple[np.ndarray, ...]
    offsets: np.ndarray
    seed: int
    epoch: int
    shuffle: bool

    @property
    def num_rows(self) -> int:
        """``N``: rows in the epoch sequence."""
        return int(self.offsets[-1])

    def permutation(self, window: int) -> np.ndarray:
        """Order of the rows of ``window`` (indices into the window's concatenated units)."""
        n = int(self.offsets[window + 1] - self.offsets[window])
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return _rng(self.seed, self.epoch, _ROWS, window).permutation(n).astype(np.int64, copy=False)

    def window_of(self, position: int) -> int:
        """Window holding position ``position`` of ``S``."""
        return int(np.searchsorted(self.offsets, position, side="right") - 1)


def epoch_order(unit_rows: Sequence[int] | np.ndarray, *, seed: int, epoch: int, shuffle: bool,
                buffer_rows: int) -> EpochOrder:
    """Plan the windows of an epoch.

    Args:
        unit_rows: Selected rows of each unit, in plan order.
        seed: Shuffle seed.
        epoch: Epoch number.
        shuffle: Permute units and rows; otherwise plan order, one unit per window.
        buffer_rows: Rows at least in a window (the last may hold fewer); ``<= 0`` puts
            each unit in its own window.

    Returns:
        An :class:`EpochOrder`.
    """
    rows = np.asarray(unit_rows, dtype=np.int64)
    units = _rng(seed, epoch, _UNITS).permutation(len(rows)) if shuffle else np.arange(len(rows))
    units = units[rows[units] > 0]
    if not shuffle or buffer_rows <= 0:
        windows = [units[i:i + 1] for i in range(len(units))]
    else:
        windows, start, acc = [], 0, 0
        for i, u in enumerate(units):
            acc += int(rows[u])
            if acc >= buffer_rows:
                windows.append(units[start:i + 1])
                start, acc = i + 1, 0
        if start < len(units):
            windows.append(units[start:])
    sizes = np.array([int(rows[w].sum()) for w in windows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return EpochOrder(tuple(np.asarray(w, dtype=np.int64) for w in windows), offsets, seed, epoch, shuffle)


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
