"""Worker side of the shared-memory ring: batches gathered straight into this worker's slots.

A DataLoader worker of a :class:`~idxlake.loaders.ring.RingDataLoader` packs its batches end to end
into its next free slot and yields one token per :func:`~idxlake.loaders.ring.group_size` batches.
:meth:`SlotWriter.dest` hands the pass the slot rows its next batch goes to, so the batch's gather
(``index_select(..., out=...)``) writes into shared memory directly: no batch tensor, and no second
copy into the slot. A batch made elsewhere (a ``transform``, float32 output) is copied in as before;
what does not fit the slot (keys a transform adds, other shapes or dtypes) travels in the token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_convert, get_worker_info

from idxlake.loaders.decode import Batch
from idxlake.loaders.ring import FREE, SENT, Ring, Token, group_size

WAIT_MAX_S = 0.005
"""Longest pause between two looks at the slot flags while a worker waits (it starts at 50 us)."""


def _acquire(flags: np.ndarray, start: int) -> int:
    """A free slot (the first from ``start`` on, round robin), marked sent.

    A worker waits only when torch gave it more tasks than it has slots (once the other workers are
    done) and the training loop pauses: it waits as long as that takes (a paused loop is no error),
    looking less often the longer it waits, and gives up only if the main process is gone.
    """
    pause, parent = 50e-6, os.getppid()
    while True:
        for i in range(len(flags)):
            k = (start + i) % len(flags)
            if flags[k] == FREE:
                flags[k] = SENT
                return k
        if os.getppid() != parent:  # pragma: no cover - the main process died
            raise RuntimeError("RingDataLoader worker: the main process is gone")
        time.sleep(pause)
        pause = min(2 * pause, WAIT_MAX_S)


class SlotWriter:
    """One worker's pass through its slots (made in the worker, at the start of the pass).

    Slots of this worker still marked sent belong to an abandoned pass (see
    :mod:`idxlake.loaders.ring`): they are taken back first.

    Args:
        ring: The loader's ring (the worker's own slots are ``ring.slots[worker id]``).
    """

    def __init__(self, ring: Ring) -> None:
        info = get_worker_info()
        if info is None:
            raise RuntimeError("SlotWriter: only in a DataLoader worker")
        self.worker, self.slots = info.id, ring.slots[info.id]
        self.flags, self.group = ring.state[info.id].numpy(), group_size(info.dataset)
        self.flags[self.flags == SENT] = FREE
        self.k = -1
        self.used: dict[str, int] | None = None  # the slot being filled: rows used per column
        self._given: Batch | None = None  # the places :meth:`dest` gave the next batch
        self.direct = 0  # columns of batches gathered straight into a slot (instrumentation and tests)

    def _slot(self) -> dict[str, torch.Tensor]:
        if self.used is None:
            self.k = _acquire(self.flags, self.k + 1)
            self.used = dict.fromkeys(self.slots[self.k], 0)
        return self.slots[self.k]

    def dest(self, rows: int, sources: Mapping[str, torch.Tensor]) -> Batch | None:
        """Where the next batch (``rows`` rows gathered from ``sources``) goes: a view of the
        current slot per column, or ``None`` when a column has no place there (then the batch is
        gathered into new tensors and copied in, or sent in the token)."""
        slot = self._slot()
        assert self.used is not None
        out: Batch = {}
        for name, src in sources.items():
            target, at = slot.get(name), self.used.get(name, 0)
            if (target is None or target.dtype != src.dtype or target.shape[1:] != src.shape[1:]
                    or at + rows > target.shape[0]):
                return None
            out[name] = target[at:at + rows]
        self._given = out
        return out

    def send(self, batches: Iterator[Batch]) -> Iterator[Token]:
        """Pack ``batches`` into slots (the ones gathered into the places :meth:`dest` gave are there
        already; the others are copied in) and yield a token for every
        :func:`~idxlake.loaders.ring.group_size` of them."""
        places: list[list[tuple[str, int, int]]] = []
        extras: list[dict[str, Any]] = []
        for batch in batches:
            slot = self._slot()
            assert self.used is not None
            rows, extra = [], {}
            given, self._given = self._given, None
            if given is not None and len(given) == len(batch) and all(batch.get(k) is v for k, v in given.items()):
                for name, value in given.items():  # gathered into the places dest() gave: nothing to check
                    at = self.used[name]
                    self.used[name] = at + value.shape[0]
                    rows.append((name, at, value.shape[0]))
                self.direct += len(given)
                batch = {}
            for name, value in batch.items():
                target, at = slot.get(name), self.used.get(name, 0)
                n = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else -1
                if (target is not None and n >= 0 and value.dtype == target.dtype
                        and value.shape[1:] == target.shape[1:] and at + n <= target.shape[0]):
                    target[at:at + n].copy_(value)  # made elsewhere (a transform, float32 output)
                    self.used[name] = at + n
                    rows.append((name, at, n))
                else:
                    extra[name] = value
            places.append(rows)
            extras.append(default_convert(extra) if extra else extra)  # what a plain DataLoader would do
            if len(places) == self.group:
                yield self._token(places, extras)
                places, extras = [], []
        if places:
            yield self._token(places, extras)
        elif self.used is not None:  # a slot taken for a batch that never came: free again
            self.flags[self.k], self.used = FREE, None

    def _token(self, places: list[list[tuple[str, int, int]]], extras: list[dict[str, Any]]) -> Token:
        self.used = None  # the next batch starts the next slot
        return Token(self.worker, self.k, places, extras)
