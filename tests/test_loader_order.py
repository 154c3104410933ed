"""Pure-function tests of the loader's topology, order, sharding and filter parsing (no table)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from idxlake.loaders import World, parse_filter
from idxlake.loaders.filters import as_expression
from idxlake.loaders.order import _digit_reversal, lane_order, phase_sizes
from idxlake.loaders.shares import padding, rank_batches, rank_steps, source_positions, worker_batches
from idxlake.schemas import LoaderConfigError


def test_world_consumer_index_is_rank_major() -> None:
    seen = [World(r, 3, w, 2).consumer for r in range(3) for w in range(2)]
    assert seen == list(range(6))
    assert World(2, 3, 1, 2).consumers == 6
    assert World().consumers == 1


@pytest.mark.parametrize("kwargs", [dict(rank=2, world_size=2), dict(rank=-1, world_size=2),
                                    dict(worker=1, num_workers=1), dict(world_size=0)])
def test_world_rejects_impossible_positions(kwargs: dict) -> None:
    with pytest.raises(LoaderConfigError, match="must be in"):
        World(**kwargs)


def test_world_detect_outside_distributed_and_workers() -> None:
    assert World.detect() == World(0, 1, 0, 1)
    assert World.detect(1, 4) == World(1, 4, 0, 1)
    with pytest.raises(LoaderConfigError, match="both rank and world_size"):
        World.detect(rank=1)


@pytest.mark.parametrize("rows", [[64, 64, 64, 64, 44], [16] * 75, [0, 10, 0, 5]])
@pytest.mark.parametrize("step_rows", [16, 64, 100])
def test_lane_order_is_a_deterministic_permutation_of_all_rows(rows: list[int], step_rows: int) -> None:
    a = lane_order(rows, seed=3, epoch=1, shuffle=True, lanes=8, buffer_rows=100, step_rows=step_rows)
    b = lane_order(rows, seed=3, epoch=1, shuffle=True, lanes=8, buffer_rows=100, step_rows=step_rows)
    every = lambda o: np.concatenate([*o.phases]).tolist()  # noqa: E731
    assert every(a) == every(b) and a.steps == b.steps and a.tail.tolist() == b.tail.tolist()
    assert sorted(every(a)) == list(range(sum(rows))) and a.num_rows == sum(rows)
    body = [a.phases[p][k * step_rows:(k + 1) * step_rows] for p, k in a.steps]
    assert sorted(np.concatenate([*body, a.tail]).tolist()) == list(range(sum(rows)))
    assert all(len(s) == step_rows for s in body) and len(a.tail) < step_rows
    assert [p for p, _ in a.steps] == [i % 2 for i in range(len(a.steps))]  # phases alternate


def test_lane_order_changes_with_epoch_and_seed_and_not_without_shuffle() -> None:
    rows = [50] * 8
    every = lambda o: np.concatenate([*o.phases]).tolist()  # noqa: E731
    base = lane_order(rows, seed=0, epoch=0, shuffle=True, lanes=4, buffer_rows=120, step_rows=32)
    assert every(base) != every(lane_order(rows, seed=0, epoch=1, shuffle=True, lanes=4, buffer_rows=120,
                                           step_rows=32))
    assert every(base) != every(lane_order(rows, seed=1, epoch=0, shuffle=True, lanes=4, buffer_rows=120,
                                           step_rows=32))
    plain = lane_order(rows, seed=0, epoch=5, shuffle=False, lanes=4, buffer_rows=120, step_rows=32)
    assert every(plain) == list(range(400)) and plain.lanes == 1


def test_lanes_are_slices_of_the_unit_order_and_rank_lanes_sit_together() -> None:
    assert _digit_reversal(24).tolist()[:4] == [0, 12, 6, 18]
    rev = _digit_reversal(24)
    for r_size in (2, 4, 8):  # lanes q = r (mod R) take one contiguous block of slices
        for r in range(r_size):
            block = sorted(rev[np.arange(r, 24, r_size)].tolist())
            assert block == list(range(block[0], block[0] + 24 // r_size))
    rows = [8] * 96
    order = lane_order(rows, seed=2, epoch=0, shuffle=True, lanes=48, buffer_rows=0, step_rows=48)
    # rank 0 of 2 reads positions = 0 (mod 2) of every step: lanes with even q only, half the units
    mine = np.concatenate([order.phases[p][k * 48:(k + 1) * 48:2] for p, k in order.steps])
    assert len(set((mine // 8).tolist())) <= 48 + 4


@pytest.mark.parametrize(("n", "lanes", "g", "rank", "world"), [(300, 48, 32, 0, 1), (300, 48, 96, 2, 3),
                                                                  (1000, 8, 64, 1, 4), (7, 48, 8, 1, 2)])
def test_rank_steps_count_matches_the_order(n: int, lanes: int, g: int, rank: int, world: int) -> None:
    order = lane_order([n], seed=0, epoch=0, shuffle=True, lanes=lanes, buffer_rows=0, step_rows=g)
    body, tail = rank_steps(n, batch_size=g // world, rank=rank, world_size=world, drop_last=False)
    assert body == order.body_steps == n // g and len(order.tail) == n % g
    assert (tail[-1, 1] if len(tail) else 0) <= len(order.tail) + world
    assert sum(phase_sizes(n, step_rows=g, phases=2)) == n


@pytest.mark.parametrize("n", [1, 2, 5, 63, 64, 65, 300, 1000])
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
@pytest.mark.parametrize("batch_size", [1, 16, 64])
def test_rank_batches_equal_counts_exact_cover_minimal_padding(n: int, world_size: int, batch_size: int) -> None:
    per_rank = [rank_batches(n, batch_size=batch_size, rank=r, world_size=world_size, drop_last=False)
                for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1
    positions = np.concatenate([np.arange(a, b) for ranges in per_rank for a, b in ranges])
    assert sorted(positions.tolist()) == list(range(len(positions)))  # disjoint, contiguous
    pad = padding(n, batch_size=batch_size, world_size=world_size, drop_last=False)
    assert len(positions) == n + pad
    assert pad < world_size
    assert all(0 < b - a <= batch_size for ranges in per_rank for a, b in ranges)
    # padding only when the last round would leave a rank without a row
    last = n - (-(-n // (batch_size * world_size)) - 1) * batch_size * world_size
    assert pad == max(0, world_size - last)
    covered = source_positions(0, n + pad, n)
    assert set(covered.tolist()) == set(range(n))


@pytest.mark.parametrize("n", [5, 64, 300, 1000])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_batches_drop_last_yields_full_batches_only(n: int, world_size: int) -> None:
    per_rank = [rank_batches(n, batch_size=16, rank=r, world_size=world_size, drop_last=True)
                for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1
    assert all(b - a == 16 for ranges in per_rank for a, b in ranges)
    assert len(per_rank[0]) == n // (16 * world_size)
    assert padding(n, batch_size=16, world_size=world_size, drop_last=True) == 0


def test_rank_batches_interleave_global_batches() -> None:
    # full rounds: rank r yields global batches r, r + R, ...: together the ranks read S in order
    r0 = rank_batches(100, batch_size=10, rank=0, world_size=2, drop_last=False)
    r1 = rank_batches(100, batch_size=10, rank=1, world_size=2, drop_last=False)
    assert r0[:, 0].tolist() == [0, 20, 40, 60, 80]
    assert r1[:, 0].tolist() == [10, 30, 50, 70, 90]
    # the last incomplete round (5 rows for 2 ranks) is split evenly: 3 + 2
    r0 = rank_batches(125, batch_size=10, rank=0, world_size=2, drop_last=False)
    r1 = rank_batches(125, batch_size=10, rank=1, world_size=2, drop_last=False)
    assert (r0[-1].tolist(), r1[-1].tolist()) == ([120, 123], [123, 125])
    assert len(r0) == len(r1) == 7


def test_source_positions_repeat_the_start_cyclically() -> None:
    assert source_positions(8, 12, 10).tolist() == [8, 9, 0, 1]
    assert source_positions(1, 4, 1).tolist() == [0, 0, 0]


def test_worker_batches_round_robin_and_resume_offset() -> None:
    assert worker_batches(7, worker=0, num_workers=2).tolist() == [0, 2, 4, 6]
    assert worker_batches(7, worker=1, num_workers=2).tolist() == [1, 3, 5]
    assert worker_batches(7, worker=0, num_workers=2, start=3).tolist() == [3, 5]
    assert worker_batches(7, worker=1, num_workers=2, start=3).tolist() == [4, 6]
    both = sorted(worker_batches(9, worker=w, num_workers=3, start=2).tolist() for w in range(3))
    assert sorted(i for part in both for i in part) == list(range(2, 9))


FILTER_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int16()), ("split", pa.string())])
ROWS = pa.table({"id": list(range(10)), "label": [i % 3 for i in range(10)], "split": ["train"] * 5 + ["test"] * 5},
                schema=FILTER_SCHEMA)


@pytest.mark.parametrize(("text", "ids"), [
    ("label < 1", [0, 3, 6, 9]),
    ("id >= 5 AND label IN (1, 2)", [5, 7, 8]),
    ("id between 2 and 4", [2, 3, 4]),
    ("NOT (label = 0) and split = 'test'", [5, 7, 8]),
    ("label != 0 OR id == 0", [0, 1, 2, 4, 5, 7, 8]),
    ("label not in (0, 1)", [2, 5, 8]),
    ("split = \"train\" AND id <> 1", [0, 2, 3, 4]),
])
def test_parse_filter(text: str, ids: list[int]) -> None:
    expr = as_expression(text, FILTER_SCHEMA)
    assert ROWS.filter(expr).column("id").to_pylist() == ids


@pytest.mark.parametrize(("text", "match"), [
    ("image = 3", "unknown column 'image'"),
    ("labl < 5", "unknown column 'labl'"),
    ("label <", "expected a literal"),
    ("label < 5 AND", "expected a column name"),
    ("(label < 5", r"expected \)"),
    ("label ~ 5", "cannot parse"),
    ("label 5", "comparison operator"),
    ("__import__('os')", "expected a comparison operator|unknown column"),
    ("", "empty"),
])
def test_parse_filter_errors(text: str, match: str) -> None:
    with pytest.raises(LoaderConfigError, match=match):
        parse_filter(text)


def test_expression_filters_are_checked_against_the_columns() -> None:
    assert as_expression(pads.field("label") == 1, FILTER_SCHEMA) is not None
    with pytest.raises(LoaderConfigError, match="filters may use"):
        as_expression(pads.field("pixels") == 1, FILTER_SCHEMA)
    with pytest.raises(LoaderConfigError, match=r"string or a pyarrow\.dataset\.Expression"):
        as_expression(42, FILTER_SCHEMA)  # type: ignore[arg-type]


def _order_digest() -> str:
    import hashlib

    from idxlake.loaders.order import consumer_rows

    h = hashlib.sha256()
    for rows, ws, bs, shuffle in (([8192] * 7 + [2656], 1, 256, True), ([8192] * 7 + [2656], 2, 128, True),
                                  ([300, 0, 517, 64, 1000], 3, 10, True), ([300, 517], 2, 7, False)):
        order = lane_order(np.array(rows), seed=11, epoch=3, shuffle=shuffle, lanes=48, buffer_rows=4 * 8192,
                           step_rows=ws * bs, phases=2)
        for rank, drop_last, workers, start in itertools.product(range(ws), (False, True), (1, 3), (0, 5)):
            body, tail = rank_steps(sum(rows), batch_size=bs, rank=rank, world_size=ws, drop_last=drop_last)
            for worker in range(workers):
                batches = worker_batches(body + len(tail), worker=worker, num_workers=workers, start=start)
                refs, sizes = consumer_rows(order, batches, rank=rank, world_size=ws, tail_ranges=tail)
                assert sum(sizes) == len(refs)
                h.update(refs.astype("<i8").tobytes() + np.asarray(sizes, dtype="<i8").tobytes())
    return h.hexdigest()


ORDER_DIGEST = "596ba09b1715cd1c63c3232f141c6b92b8b2fb7594ca2079541d5971382e6aa5"
"""The digest of :func:`_order_digest` for order ``lanes-4``."""


def test_the_order_is_pinned_by_its_algorithm_name(monkeypatch) -> None:
    """The rows (and batch sizes) every consumer reads for a few fixed cases, hashed: a change of the
    order fails here, and must come with a new ``ORDER_ALGORITHM`` so that a saved resume state is
    refused instead of skipping other rows. The same with the per-topology places cache off."""
    from idxlake.loaders import order as order_module

    assert order_module.ORDER_ALGORITHM == "lanes-4"
    assert _order_digest() == ORDER_DIGEST
    monkeypatch.setattr(order_module, "BODY_CACHE_ROWS", 0)  # consumers too large to keep their places
    assert _order_digest() == ORDER_DIGEST
