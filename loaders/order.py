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
   sorted by ``rev(q)`` (so rank ``r``'s part of its last round lies mostly in its own lanes)
   and within a lane by their place in the shuffled lane (order ``lanes-3`` sorted them by where
   they were laid out in step 1, which undid the window shuffle: a selection smaller than one
   global step came out in row-group order),
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

from idxlake.loaders.shares import source_positions

ORDER_ALGORITHM = "lanes-4"
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
        laid: The refs laid out (step 1), each lane window's rows permuted in place (step 3).
        positions: Per phase, the place in ``laid`` of each position of ``V_p`` (the same every epoch).
        steps: ``(phase, k)`` of each full body step, in step order.
        tail: ``E``: the rows after the body steps.
        step_rows: ``G``.
        lanes: Lane count ``K`` actually used (1 without shuffling).
        grid: ``(phase sizes, K, shuffled)``: what ``positions`` and ``steps`` follow from.
    """

    laid: np.ndarray
    positions: tuple[np.ndarray, ...]
    steps: tuple[tuple[int, int], ...]
    tail: np.ndarray
    step_rows: int
    lanes: int
    grid: tuple[tuple[int, ...], int, bool]

    @property
    def phases(self) -> tuple[np.ndarray, ...]:
        """``V_p`` of each phase (row refs)."""
        return tuple(self.laid[p] for p in self.positions)

    @property
    def num_rows(self) -> int:
        """``N``."""
        return len(self.laid)

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
        n = int(offsets[-1])
        return _assemble(np.arange(n, dtype=np.int64), _plain_positions(n), ((n,), 1, False), step_rows)
    units = _rng(seed, epoch, _UNITS).permutation(len(rows))
    units = units[rows[units] > 0]
    laid = np.concatenate([np.arange(offsets[u], offsets[u + 1], dtype=np.int64) for u in units])
    unit_end = np.cumsum(rows[units])  # piece boundaries in laid
    n_rows, q_lanes = len(laid), lanes // phases
    sizes = phase_sizes(n_rows, step_rows=step_rows, phases=phases)
    starts, positions = _lane_grid(sizes, lanes)
    min_window = -(-buffer_rows // lanes) if buffer_rows > 0 else 0
    rng = _rng(seed, epoch, _ROWS)  # draws for the lanes' windows, lane slice by lane slice
    for a, b in itertools.pairwise(_window_bounds(starts.tolist(), unit_end.tolist(), min_window)):
        rng.shuffle(laid[a:b])  # a shuffle's moves depend on the draws and the length only
    full = [len(v) // step_rows for v in positions]
    places = np.concatenate([v[f * step_rows:] for v, f in zip(positions, full, strict=True)])
    lane_of = np.searchsorted(starts, places, side="right") - 1  # a window shuffle stays inside its lane
    key = ((lane_of % q_lanes) * phases + lane_of // q_lanes) * n_rows + places  # rev(q), phase, shuffled place
    return _assemble(laid, positions, (sizes, lanes, True), step_rows, laid[places[np.argsort(key, kind="stable")]])


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


def _assemble(laid: np.ndarray, positions: tuple[np.ndarray, ...], grid: tuple[tuple[int, ...], int, bool],
              step_rows: int, tail: np.ndarray | None = None) -> LaneOrder:
    full = [len(v) // step_rows for v in positions]
    if tail is None:
        tail = np.concatenate([laid[v[f * step_rows:]] for v, f in zip(positions, full, strict=True)])
    return LaneOrder(laid, positions, _steps(tuple(full)), tail, step_rows, grid[1], grid)


def _plain_positions(n: int) -> tuple[np.ndarray]:
    return (np.arange(n, dtype=np.int64),)


@functools.lru_cache(maxsize=8)
def _steps(full: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Body steps in step order: phase ``p`` has ``full[p]`` of them, the phases taking turns."""
    return tuple((p, k) for k in range(max(full, default=0)) for p in range(len(full)) if k < full[p])


BODY_CACHE_ROWS = 1 << 22
"""Consumers with at most this many body rows keep their places (8 bytes a row) for the next epochs."""


def _body_places(grid: tuple[tuple[int, ...], int, bool], step_rows: int, batches: np.ndarray, rank: int,
                 world_size: int) -> np.ndarray:
    """Places in ``laid`` of a rank's body batches (``[batches, B]``): step ``(p, k)`` is
    ``V_p[k*G + rank :: world_size][:B]``. The same every epoch: kept for the next ones when small."""
    if len(batches) * (step_rows // world_size) <= BODY_CACHE_ROWS:
        return _cached_body_places(grid, step_rows, batches.tobytes(), rank, world_size)
    return _compute_body_places(grid, step_rows, batches, rank, world_size)


@functools.lru_cache(maxsize=2)
def _cached_body_places(grid: tuple[tuple[int, ...], int, bool], step_rows: int, batches: bytes, rank: int,
                        world_size: int) -> np.ndarray:
    places = _compute_body_places(grid, step_rows, np.frombuffer(batches, dtype=np.int64), rank, world_size)
    places.flags.writeable = False
    return places


def _compute_body_places(grid: tuple[tuple[int, ...], int, bool], step_rows: int, batches: np.ndarray, rank: int,
                         world_size: int) -> np.ndarray:
    sizes, lanes, shuffled = grid
    steps = np.asarray(_steps(tuple(s // step_rows for s in sizes)), dtype=np.int64).reshape(-1, 2)[batches]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    places = (starts[steps[:, 0]] + steps[:, 1] * step_rows + rank)[:, None] + world_size * np.arange(
        step_rows // world_size)  # positions of V_0, V_1, ... end to end
    return np.concatenate(_lane_grid(sizes, lanes)[1])[places] if shuffled else places  # plain: positions = places


def consumer_rows(order: LaneOrder, batches: np.ndarray, *, rank: int, world_size: int,
                  tail_ranges: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Row refs of the given rank batches, end to end, and the rows of each batch.

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
    parts: list[np.ndarray] = []
    sizes: list[int] = []
    if len(in_body):  # one gather for all body batches
        parts.append(order.laid[_body_places(order.grid, g, in_body, rank, world_size)].reshape(-1))
        sizes.extend([g // world_size] * len(in_body))
    for j in batches[len(in_body):].tolist():  # body batches come first: the rest are tail batches
        a, b = tail_ranges[j - body]
        parts.append(tail[source_positions(int(a), int(b), len(tail))])
        sizes.append(len(parts[-1]))
    refs = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return refs, sizes
