"""The epoch's sample order and who yields which rows: pure functions of numbers.

The order of an epoch is a function of ``(seed, epoch)``, the selection (rows per unit)
and ``K`` lanes, never of the number of ranks or workers. It is built so that each of
``C = world_size x num_workers`` consumers reads only its own lanes' row groups:

1. the units (row groups) are permuted (``shuffle=True``) and their rows laid end to end;
2. that sequence is cut into ``P`` phases of ``Q = K / P`` lanes each. Global step ``s``
   (``G = world_size x batch_size`` rows) belongs to phase ``s mod P``, so phase ``p`` holds
   ``G`` rows for each of its steps, and the phase whose turn comes after the last full step,
   ``(N // G) mod P``, also the ``N mod G`` rows left (the tail); its ``Q`` lanes have equal rows
   (+-1). Lane ``(p, q)`` takes slice ``p*Q + rev(q)`` (``rev`` reverses the mixed-radix digits
   of ``q``, small primes first), so the lanes with ``q = r (mod R)`` sit side by side for ``R``
   in 1, 2, 4, 8, ...;
3. each lane is cut into windows of whole row-group pieces (at least ``ceil(buffer / K)``
   rows) whose rows are permuted;
4. phase ``p``'s sequence ``V_p`` interleaves its lanes row by row (position ``v`` is row
   ``v // Q`` of lane ``v % Q``); global step ``k*P + p`` is ``V_p[k*G:(k+1)*G]`` for the
   global batch ``G = world_size x batch_size``. Rank ``r`` takes the step's positions
   ``= r (mod R)``: only lanes ``q = r (mod R)`` when ``R`` divides ``Q``. The DataLoader gives
   rank batch ``j`` to worker ``j % W``: only phases ``p = w (mod W)`` when ``W`` divides ``P``;
5. the rows of the tail phase after its full steps (fewer than ``G``) form the tail ``E``,
   sorted by ``rev(q)`` (so rank ``r``'s part of its last round lies mostly in its own lanes),
   read as the last round, split evenly over the ranks (padded only when it has fewer rows than
   ranks, or dropped with ``drop_last``). That round is rank batch ``N // G``, so with ``W``
   dividing ``P`` it goes to the worker already reading the tail phase: no worker reads another
   phase's row groups for it.

Without shuffling there is one lane and one phase: plan order, ranks striding each step.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

ORDER_ALGORITHM = "lanes-3"
"""Names this module's order: a resume state records it, and one saved by a build whose order
differs (an earlier window shuffle, another phase count) is refused instead of skipping other rows.
Change it whenever the order of any ``(seed, epoch, selection, K, P, G)`` changes."""

PHASES = 2
"""Default phases ``P`` of the lane grid (the ``phases=`` option): workers read disjoint row groups when
``num_workers`` divides ``P``, ranks when ``world_size`` divides ``K / P``."""

_UNITS, _ROWS = 1, 2  # stream ids of the seed sequence: unit order, row order of lane window k


def _rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch, *stream])


def _digit_reversal(q: int) -> np.ndarray:
    """``rev`` of the module docstring: a permutation of ``range(q)`` keeping residue classes
    of the prime-power prefixes of ``q`` contiguous."""
    radices, n, f = [], q, 2
    while n > 1:
        while n % f == 0:
            radices.append(f)
            n //= f
        f += 1
    idx = np.arange(q, dtype=np.int64)
    out, weight, rest = np.zeros(q, dtype=np.int64), q, idx
    for radix in radices:  # least significant digit of q becomes the most significant of rev(q)
        weight //= radix
        out += (rest % radix) * weight
        rest = rest // radix
    return out


@dataclass(frozen=True)
class LaneOrder:
    """One epoch's order. Rows are *refs*: positions in the plan-order concatenation of the
    units' selected rows (``unit_offsets[u] + i``).

    Attributes:
        phases: ``V_p`` of each phase (row refs).
        steps: ``(phase, k)`` of each full body step, in step order.
        tail: ``E``: the rows after the body steps.
        step_rows: ``G``.
        lanes: Lane count ``K`` actually used (1 without shuffling).
    """

    phases: tuple[np.ndarray, ...]
    steps: tuple[tuple[int, int], ...]
    tail: np.ndarray
    step_rows: int
    lanes: int

    @property
    def num_rows(self) -> int:
        """``N``."""
        return sum(len(v) for v in self.phases)

    @property
    def body_steps(self) -> int:
        """Full steps read lane by lane."""
        return len(self.steps)


def lane_order(unit_rows: np.ndarray, *, seed: int, epoch: int, shuffle: bool, lanes: int,
               buffer_rows: int, step_rows: int, phases: int = PHASES) -> LaneOrder:
    """Plan the order of an epoch (see the module docstring).

    Args:
        unit_rows: Selected rows of each unit, in plan order.
        seed: Shuffle seed.
        epoch: Epoch number.
        shuffle: Permute units and rows; otherwise plan order in one lane.
        lanes: ``K``, a multiple of ``phases`` (ignored without shuffling).
        buffer_rows: Rows shuffled together overall; a lane window holds at least
            ``ceil(buffer_rows / K)`` rows (whole pieces); ``<= 0``: one piece per window.
        step_rows: ``G``, rows of one global step (``world_size x batch_size``).
        phases: ``P``, phases of the lane grid (:data:`PHASES` by default).
    """
    rows = np.asarray(unit_rows, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    if not shuffle:
        seq = np.arange(int(offsets[-1]), dtype=np.int64)
        return _assemble([seq], 1, step_rows, 1)
    units = _rng(seed, epoch, _UNITS).permutation(len(rows))
    units = units[rows[units] > 0]
    perm = np.concatenate([np.arange(offsets[u], offsets[u + 1], dtype=np.int64) for u in units])
    unit_end = np.cumsum(rows[units])  # piece boundaries in perm
    n_rows, q_lanes = len(perm), lanes // phases
    starts, positions = _lane_grid(phase_sizes(n_rows, step_rows=step_rows, phases=phases), lanes)
    min_window = -(-buffer_rows // lanes) if buffer_rows > 0 else 0
    rng = _rng(seed, epoch, _ROWS)  # draws for the lanes' windows, lane slice by lane slice
    shuffled = np.arange(n_rows, dtype=np.int64)  # lanes hold laid-out positions, mapped to refs at the end
    for a, b in itertools.pairwise(_window_bounds(starts.tolist(), unit_end.tolist(), min_window)):
        rng.shuffle(shuffled[a:b])
    seqs = [shuffled[pos] for pos in positions]
    full = [len(v) // step_rows for v in seqs]
    tail = np.concatenate([v[f * step_rows:] for v, f in zip(seqs, full, strict=True)])
    lane_of = np.searchsorted(starts, tail, side="right") - 1  # the tail by rev(q), then phase, then position
    tail = tail[np.argsort(((lane_of % q_lanes) * phases + lane_of // q_lanes) * n_rows + tail, kind="stable")]
    return _assemble([perm[v] for v in seqs], phases, step_rows, lanes, perm[tail])


def phase_sizes(num_rows: int, *, step_rows: int, phases: int) -> tuple[int, ...]:
    """Rows of each phase: ``G`` per full step ``s`` of phase ``s mod P``, and the ``N mod G`` rows
    left in phase ``(N // G) mod P`` (module docstring, step 2)."""
    steps, rest = divmod(num_rows, step_rows)
    sizes = [max(0, -(-(steps - p) // phases)) * step_rows for p in range(phases)]
    sizes[steps % phases] += rest
    return tuple(sizes)


@functools.lru_cache(maxsize=2)
def _lane_grid(sizes: tuple[int, ...], lanes: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """What does not change from epoch to epoch: the start of each lane slice (laid-out positions)
    and, per phase, the laid-out position of each place of ``V_p`` (row by row of its lanes)."""
    phases = len(sizes)
    q_lanes, n_rows = lanes // phases, sum(sizes)
    rev = _digit_reversal(q_lanes)
    by_slice = np.empty(lanes, dtype=np.int64)
    for p, m in enumerate(sizes):
        base, extra = divmod(m, q_lanes)
        by_slice[p * q_lanes + rev] = base + (np.arange(q_lanes) < extra)
    starts = np.concatenate([[0], np.cumsum(by_slice)])
    width = int(by_slice.max()) if lanes else 0
    padded = np.full((lanes, width), -1, dtype=np.int64)  # slice s in row s, padded with -1
    padded[np.arange(width)[None, :] < by_slice[:, None]] = np.arange(n_rows, dtype=np.int64)
    positions = []
    for p in range(phases):
        flat = padded[p * q_lanes + rev].T.reshape(-1)  # row by row of its lanes
        positions.append(flat[flat >= 0])
    for array in (starts, *positions):
        array.flags.writeable = False  # shared by every epoch (cached)
    return starts, tuple(positions)


def _window_bounds(starts: list[int], unit_end: list[int], min_window: int) -> list[int]:
    """The lanes' window boundaries, end to end: lane ``s`` (``starts[s]`` to ``starts[s + 1]``) is cut
    at the piece ends inside it (a piece: the lane's rows of one unit) into windows of whole pieces
    of at least ``min_window`` rows; a short last window joins the previous one."""
    bounds, j = [0], 0
    for start, stop in itertools.pairwise(starts):
        if stop == start:
            continue
        while j < len(unit_end) and unit_end[j] <= start:
            j += 1
        lane, k = [start], j
        while k < len(unit_end) and unit_end[k] < stop:
            if unit_end[k] - lane[-1] >= min_window:
                lane.append(unit_end[k])
            k += 1
        if stop - lane[-1] < min_window and len(lane) > 1:
            lane.pop()  # the last window would be short: merge it into the previous one
        bounds.extend(lane[1:])
        bounds.append(stop)
    return bounds


def _assemble(phases: list[np.ndarray], num_phases: int, step_rows: int, lanes: int,
              tail: np.ndarray | None = None) -> LaneOrder:
    full = [len(v) // step_rows for v in phases]
    steps = tuple((p, k) for k in range(max(full, default=0)) for p in range(num_phases) if k < full[p])
    if tail is None:
        tail = np.concatenate([v[f * step_rows:] for v, f in zip(phases, full, strict=True)])
    return LaneOrder(tuple(phases), steps, tail, step_rows, lanes)


def consumer_rows(order: LaneOrder, batches: np.ndarray, *, rank: int, world_size: int,
                  tail_ranges: np.ndarray) -> list[np.ndarray]:
    """Row refs of the given rank batches.

    Args:
        order: The epoch's order.
        batches: Rank batch indices (body steps first, then tail batches).
        rank: This rank.
        world_size: Ranks.
        tail_ranges: ``rank_batches`` of the tail for this rank (``[start, stop)`` into ``E``).
    """
    g, body, tail = order.step_rows, order.body_steps, order.tail
    batches = np.asarray(batches, dtype=np.int64)
    in_body = batches[batches < body]
    out: list[np.ndarray] = []
    if len(in_body):  # one gather for all body batches: step (p, k) is V_p[k*g + rank :: world_size][:B]
        steps = np.asarray(order.steps, dtype=np.int64).reshape(-1, 2)[in_body]
        starts = np.concatenate([[0], np.cumsum([len(v) for v in order.phases])]).astype(np.int64)
        first = starts[steps[:, 0]] + steps[:, 1] * g + rank
        rows = np.concatenate(order.phases)[first[:, None] + world_size * np.arange(g // world_size)]
        out.extend(rows)
    for j in batches[len(in_body):].tolist():  # body batches come first: the rest are tail batches
        a, b = tail_ranges[j - body]
        out.append(tail[source_positions(int(a), int(b), len(tail))])
    return out


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
