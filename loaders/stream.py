"""One consumer's pass over an epoch: windows decoded ahead in a thread, batches gathered from them.

For each window it needs, the consumer builds a *source* (the window's units side by
side in one reusable buffer, or the decode cache, or a lone unit's Arrow memory as is)
and ``index``, the window's row order mapped to source rows. A batch is then one
``index_select`` per column of a contiguous slice of ``index``: few torch ops per
batch and no per-row Python. The next window is built in a background thread
(pyarrow and torch release the GIL) while the current one is consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch

from idxlake.loaders.decode import Batch, UnitReader
from idxlake.loaders.order import EpochOrder, source_positions
from idxlake.loaders.plan import Plan
from idxlake.schemas import IMAGE

logger = logging.getLogger(__name__)

READ_THREADS = 2
"""Threads decoding the units of the next window in parallel (pyarrow releases the GIL) when
reading in the main process; DataLoader workers decode with one thread each."""

Where = slice | torch.Tensor
"""Rows of one window that a batch takes: a contiguous slice, or local positions (padding)."""


class DecodeCache:
    """Decoded units kept for later epochs, in one preallocated arena of at most ``budget`` bytes.

    Units are admitted first come, first served until the arena is full and never
    evicted (an epoch reads every unit, so LRU would only thrash). A window whose units
    are all cached gathers straight from the arena: no decode and no copy.

    Args:
        plan: The plan (sizes of its units).
        budget: Bytes the arena may take.
    """

    def __init__(self, plan: Plan, budget: int) -> None:
        meta = plan.snapshot.meta
        self.row_bytes = sum(meta.record_nbytes if c == IMAGE else 8 for c in plan.columns)
        self.capacity = min(budget // self.row_bytes, plan.num_rows)
        self.tensors: Batch = {}
        self.slots: dict[int, tuple[int, int]] = {}
        self.used = 0

    def put(self, key: int, data: Batch) -> tuple[int, int] | None:
        """Copy a decoded unit in; its ``(start, count)`` in the arena, or ``None`` when full."""
        n = len(next(iter(data.values())))
        if self.used + n > self.capacity:
            return None
        if not self.tensors:
            self.tensors = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in data.items()}
        for k, v in data.items():
            self.tensors[k][self.used:self.used + n].copy_(v)
        self.slots[key] = (self.used, n)
        self.used += n
        return self.slots[key]

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class WindowBuffers:
    """Two reusable window buffers (the one being consumed and the one being filled)."""

    slots: list[Batch] = field(default_factory=lambda: [{}, {}])

    def take(self, slot: int, like: list[Batch], rows: int) -> Batch:
        """Views of ``rows`` rows of buffer ``slot``, grown if needed, shaped like ``like``."""
        buf = self.slots[slot]
        first = like[0]
        if not buf or len(next(iter(buf.values()))) < rows or any(
                buf[k].shape[1:] != v.shape[1:] or buf[k].dtype != v.dtype for k, v in first.items()):
            buf = self.slots[slot] = {k: torch.empty((rows, *v.shape[1:]), dtype=v.dtype) for k, v in first.items()}
        return {k: v[:rows] for k, v in buf.items()}


@dataclass
class Window:
    """A built window: ``source`` tensors and ``index`` (window order -> source row)."""

    source: Batch
    index: torch.Tensor


def build_window(order: EpochOrder, k: int, plan: Plan, read: Callable[[list[int]], list[Batch]],
                 cache: DecodeCache | None, buffers: WindowBuffers, slot: int) -> Window:
    """Decode (or fetch from the cache) the units of window ``k`` and index its row order.

    Args:
        order: The epoch's windows.
        k: The window.
        plan: The plan.
        read: Decodes a list of units (by index), possibly in parallel.
        cache: Decode cache, or ``None``.
        buffers: Reusable window buffers.
        slot: Buffer slot (0 or 1); consecutive builds must alternate.
    """
    perm = order.permutation(k)
    units = order.windows[k].tolist()
    cached = {u: cache.slots[u] for u in units if u in cache.slots} if cache is not None else {}
    missing = [u for u in units if u not in cached]
    decoded = dict(zip(missing, read(missing), strict=True)) if missing else {}
    if cache is not None:
        for u in missing:
            where = cache.put(u, decoded[u])
            if where is not None:
                cached[u] = where
                del decoded[u]
    if cache is not None and len(cached) == len(units):
        starts = [np.arange(s, s + n, dtype=np.int64) for s, n in (cached[u] for u in units)]
        positions = np.concatenate(starts) if len(starts) > 1 else starts[0]
        return Window(cache.tensors, torch.from_numpy(positions[perm]))
    tensors = cache.tensors if cache is not None else {}
    datas = [decoded[u] if u in decoded else {c: t[cached[u][0]:cached[u][0] + cached[u][1]]
                                              for c, t in tensors.items()} for u in units]
    if len(datas) == 1:
        return Window(datas[0], torch.from_numpy(perm))
    rows = int(order.offsets[k + 1] - order.offsets[k])
    source = buffers.take(slot, datas, rows)
    for name, out in source.items():
        torch.cat([d[name] for d in datas], out=out)
    return Window(source, torch.from_numpy(perm))


@dataclass
class Progress:
    """Where a pass stands (read by ``state_dict``)."""

    epoch: int
    start: int
    yielded: int = 0


def _pieces(a: int, b: int, order: EpochOrder) -> list[tuple[int, Where]]:
    """The pieces of batch ``[a, b)``: ``(window, slice or local positions)`` in output order."""
    n, offsets = order.num_rows, order.offsets
    out: list[tuple[int, Where]] = []
    lo, hi = a, min(b, n)
    while lo < hi:
        k = order.window_of(lo)
        end = min(hi, int(offsets[k + 1]))
        out.append((k, slice(lo - int(offsets[k]), end - int(offsets[k]))))
        lo = end
    if b > n:
        pos = source_positions(max(a, n), b, n)
        wins = np.searchsorted(offsets, pos, side="right") - 1
        for k in dict.fromkeys(wins.tolist()):
            out.append((k, torch.from_numpy(pos[wins == k] - offsets[k])))
    return out


def _plan_pieces(batches: np.ndarray, order: EpochOrder) -> list[list[tuple[int, Where]]]:
    """:func:`_pieces` of every batch, vectorised for the common case (inside one window, no padding)."""
    if not len(batches):
        return []
    n, offsets = order.num_rows, order.offsets
    a, b = batches[:, 0], batches[:, 1]
    first = np.searchsorted(offsets, a, side="right") - 1
    last = np.searchsorted(offsets, np.minimum(b, n) - 1, side="right") - 1
    simple = ((first == last) & (b <= n)).tolist()
    lo, hi, ks = (a - offsets[first]).tolist(), (b - offsets[first]).tolist(), first.tolist()
    return [[(ks[i], slice(lo[i], hi[i]))] if simple[i] else _pieces(int(a[i]), int(b[i]), order)
            for i in range(len(batches))]


def unit_reader(plan: Plan, reader: UnitReader, readers: ThreadPoolExecutor | None
                ) -> Callable[[list[int]], list[Batch]]:
    """A function decoding a list of units (by index), in parallel on ``readers`` when given."""
    units = plan.units

    def read(indices: list[int]) -> list[Batch]:
        if readers is None or len(indices) == 1:
            return [reader.read(units[u]) for u in indices]
        return list(readers.map(lambda u: reader.read(units[u]), indices))
    return read


def consume(order: EpochOrder, batches: np.ndarray, plan: Plan, reader: UnitReader, *,
            cache: DecodeCache | None, buffers: WindowBuffers, progress: Progress,
            finish: Callable[[Batch], Batch] | None, builder: ThreadPoolExecutor | None = None,
            readers: ThreadPoolExecutor | None = None) -> Iterator[Batch]:
    """Yield this consumer's batches of an epoch.

    Args:
        order: The epoch's windows.
        batches: ``[n, 2]`` padded-sequence ranges of the batches to yield, in order.
        plan: The plan.
        reader: Unit reader.
        cache: Decode cache, or ``None``.
        buffers: Reusable window buffers.
        progress: Updated before each yield.
        finish: Applied to each gathered batch (dtype, transform), or ``None``.
        builder: One-thread pool building the next window ahead (prefetch), or ``None``.
        readers: Pool decoding the units of a window in parallel, or ``None``. Pools are owned
            by the caller and kept across epochs (new threads every epoch fragment the heaps).
    """
    pieces = _plan_pieces(batches, order)
    tasks: dict[int, list[tuple[int, int, Where, bool]]] = {}
    for bi, ps in enumerate(pieces):
        for pi, (k, where) in enumerate(ps):
            tasks.setdefault(k, []).append((bi, pi, where, len(ps) == 1))
    windows = sorted(tasks)
    done_at = [max(k for k, _ in ps) for ps in pieces]
    got: list[list[Batch | None]] = [[None] * len(ps) for ps in pieces]
    if len(windows) < 2:
        builder = None
    read = unit_reader(plan, reader, readers)

    def build(i: int) -> Window:  # window i goes to buffer slot i % 2
        return build_window(order, windows[i], plan, read, cache, buffers, i % 2)

    future: Future | None = builder.submit(build, 0) if builder is not None else None
    emit = 0
    try:
        for i, k in enumerate(windows):
            window = future.result() if future is not None else build(i)
            future = builder.submit(build, i + 1) if builder is not None and i + 1 < len(windows) else None
            items = list(window.source.items())
            index = window.index
            for bi, pi, where, single in tasks[k]:
                rows = index[where]
                batch = {c: t.index_select(0, rows) for c, t in items}
                if single and bi == emit:  # the common case: a batch inside one window, in order
                    progress.yielded += 1
                    emit += 1
                    yield batch if finish is None else finish(batch)
                    continue
                got[bi][pi] = batch
            while emit < len(pieces) and done_at[emit] <= k:
                parts: list[Batch] = got[emit]  # type: ignore[assignment]
                got[emit] = []
                progress.yielded += 1
                emit += 1
                batch = parts[0] if len(parts) == 1 else {c: torch.cat([p[c] for p in parts]) for c in parts[0]}
                yield batch if finish is None else finish(batch)
            del window, items, index
    finally:
        if future is not None and not future.cancel():
            wait([future])  # a build in flight still writes into the buffers: let it finish
