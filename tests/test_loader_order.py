"""Pure-function tests of the loader's topology, order, sharding and filter parsing (no table)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from idxlake.loaders import World, parse_filter
from idxlake.loaders.filters import as_expression
from idxlake.loaders.order import epoch_order, padding, rank_batches, source_positions, worker_batches
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


def test_epoch_order_is_a_deterministic_permutation_of_all_rows() -> None:
    rows = [64, 64, 64, 64, 44]
    a = epoch_order(rows, seed=3, epoch=1, shuffle=True, buffer_rows=100)
    b = epoch_order(rows, seed=3, epoch=1, shuffle=True, buffer_rows=100)
    assert [w.tolist() for w in a.windows] == [w.tolist() for w in b.windows]
    assert sorted(np.concatenate(a.windows).tolist()) == [0, 1, 2, 3, 4]
    assert a.num_rows == 300
    assert all(np.array_equal(a.permutation(k), b.permutation(k)) for k in range(len(a.windows)))
    for k in range(len(a.windows)):
        n = int(a.offsets[k + 1] - a.offsets[k])
        assert sorted(a.permutation(k).tolist()) == list(range(n))
    # windows hold whole units and at least buffer_rows rows, except the last
    sizes = np.diff(a.offsets)
    assert (sizes[:-1] >= 100).all()


def test_epoch_order_changes_with_epoch_and_seed_and_not_without_shuffle() -> None:
    rows = [50] * 8
    base = epoch_order(rows, seed=0, epoch=0, shuffle=True, buffer_rows=120)
    other_epoch = epoch_order(rows, seed=0, epoch=1, shuffle=True, buffer_rows=120)
    other_seed = epoch_order(rows, seed=1, epoch=0, shuffle=True, buffer_rows=120)
    flat = lambda o: np.concatenate(o.windows).tolist()  # noqa: E731
    assert flat(base) != flat(other_epoch) or not np.array_equal(base.permutation(0), other_epoch.permutation(0))
    assert flat(base) != flat(other_seed) or not np.array_equal(base.permutation(0), other_seed.permutation(0))
    plain = epoch_order(rows, seed=0, epoch=5, shuffle=False, buffer_rows=120)
    assert flat(plain) == list(range(8)) and len(plain.windows) == 8
    assert plain.permutation(3).tolist() == list(range(50))


def test_epoch_order_skips_empty_units() -> None:
    order = epoch_order([0, 10, 0, 5], seed=0, epoch=0, shuffle=False, buffer_rows=0)
    assert [w.tolist() for w in order.windows] == [[1], [3]]
    assert order.offsets.tolist() == [0, 10, 15]
    assert order.window_of(9) == 0 and order.window_of(10) == 1


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
