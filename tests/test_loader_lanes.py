"""Lanes: each consumer decodes only its share, the same global steps for every topology, measured
by instrumenting the reader (``UnitReader.read`` counted per consumer)."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import reads
from torch.utils.data import DataLoader

from idxlake import ingest
from idxlake.loaders import DeltaIterableDataset
from idxlake.loaders.order import lane_order

ROWS, GROUP = 4800, 16  # 300 row groups, lanes of 100 rows


@pytest.fixture
def many_groups(tmp_path, source_factory) -> str:
    src = source_factory("lanes", rows={"train": ROWS, "test": 10}, seed=5)
    table = str(tmp_path / "lanes_table")
    ingest(src.root, table, row_group_rows=GROUP)
    return table


def steps(table: str, ranks: int, workers: int, global_batch: int, **kw) -> list[list[int]]:
    """Sorted ids of every global step of epoch 1."""
    per_rank = []
    for r in range(ranks):
        ds = DeltaIterableDataset(table, split="train", batch_size=global_batch // ranks, seed=9,
                                  rank=r, world_size=ranks, cache_bytes=0, **kw)
        ds.set_epoch(1)
        per_rank.append([b["id"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=workers)])
    assert len({len(p) for p in per_rank}) == 1
    return [sorted(i for part in step for i in part) for step in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("global_batch", [64, 100])
def test_same_global_steps_for_every_topology(many_groups, global_batch: int) -> None:
    reference = steps(many_groups, 1, 0, global_batch)
    assert sorted(i for s in reference for i in s) == list(range(ROWS))
    for ranks, workers in ((2, 0), (1, 2), (4, 0), (2, 2)):
        assert steps(many_groups, ranks, workers, global_batch) == reference, (ranks, workers)


@pytest.mark.parametrize("consumers", [1, 2, 4, 8])
def test_each_rank_decodes_only_its_share(many_groups, decoded, consumers: int) -> None:
    units = ROWS // GROUP
    tail = lane_order(np.full(units, GROUP), seed=1, epoch=0, shuffle=True, lanes=48, buffer_rows=64,
                      step_rows=64).tail
    seen: list[int] = []
    for r in range(consumers):
        ds = DeltaIterableDataset(many_groups, split="train", batch_size=64 // consumers, seed=1, rank=r,
                                  world_size=consumers, cache_bytes=0, shuffle_buffer=64)
        before = len(reads(decoded))
        seen += [i for b in ds for i in b["id"].tolist()]
        mine = reads(decoded)[before:]
        assert len(mine) == len(set(mine))  # each row group decoded once per epoch
        # its share, plus the row groups cut by the ends of its two runs of lanes (4), plus at
        # most one row group per row of its part of the tail (fewer than 64 rows, all in one phase)
        assert len(mine) <= units / consumers + 4 + len(tail) / consumers, (r, len(mine))
    assert sorted(seen) == list(range(ROWS))


def test_workers_of_two_ranks_decode_only_their_share(many_groups, decoded) -> None:
    units = ROWS // GROUP
    ids, per_pid = [], Counter()
    for r in range(2):
        ds = DeltaIterableDataset(many_groups, split="train", batch_size=32, seed=1, rank=r, world_size=2,
                                  cache_bytes=0, shuffle_buffer=64)
        before = len(reads(decoded))
        ids += [i for b in DataLoader(ds, batch_size=None, num_workers=2) for i in b["id"].tolist()]
        per_pid.update(pid for pid, _ in reads(decoded)[before:])
    assert sorted(ids) == list(range(ROWS))
    assert len(per_pid) == 4  # four consumers (forked workers), each decoding about a quarter
    tail = lane_order(np.full(units, GROUP), seed=1, epoch=0, shuffle=True, lanes=48, buffer_rows=64,
                      step_rows=64).tail
    assert max(per_pid.values()) <= units / 4 + 4 + len(tail) / 2, per_pid  # see the test above
    assert sum(per_pid.values()) <= 1.1 * units


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_four_phases_give_four_workers_disjoint_reads(many_groups, decoded) -> None:
    units = ROWS // GROUP
    reference = steps(many_groups, 1, 0, 64, phases=4)
    assert sorted(i for s in reference for i in s) == list(range(ROWS))
    for ranks, workers in ((1, 4), (2, 2), (3, 4)):  # W divides 4, R divides 48 / 4 = 12
        assert steps(many_groups, ranks, workers, 192 if ranks == 3 else 64, phases=4) == (
            reference if ranks != 3 else steps(many_groups, 1, 0, 192, phases=4)), (ranks, workers)
    assert steps(many_groups, 1, 0, 64) != reference  # another P: another order
    for phases, readers in ((4, 4), (2, 2)):  # with the default 2 phases, 4 workers share 2 phases' reads
        ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=1, cache_bytes=0,
                                  shuffle_buffer=64, phases=phases)
        before = len(reads(decoded))
        ids = [i for b in DataLoader(ds, batch_size=None, num_workers=4) for i in b["id"].tolist()]
        assert sorted(ids) == list(range(ROWS))
        per_pid = Counter(pid for pid, _ in reads(decoded)[before:])
        assert len(per_pid) == 4
        tail = lane_order(np.full(units, GROUP), seed=1, epoch=0, shuffle=True, lanes=48, buffer_rows=64,
                          step_rows=64, phases=phases).tail
        assert max(per_pid.values()) <= units / readers + 4 + len(tail), (phases, per_pid)
        assert min(per_pid.values()) >= units / readers - 4, (phases, per_pid)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(("workers", "phases"), [(2, 2), (4, 4)])
def test_the_last_short_round_is_read_by_the_worker_of_its_phase(tmp_path, source_factory, decoded, workers: int,
                                                                  phases: int) -> None:
    """``N mod G`` rows left (a short last batch): they all lie in the phase whose turn comes next, so the
    worker yielding that batch reads no row group of another phase for it (before: one per lane end)."""
    rows = ROWS + 40  # 40 rows after the last full global batch of 64
    src = source_factory("tailed", rows={"train": rows, "test": 10}, seed=6)
    table = str(tmp_path / "tailed")
    ingest(src.root, table, row_group_rows=GROUP)
    units = -(-rows // GROUP)
    ds = DeltaIterableDataset(table, split="train", batch_size=64, seed=1, cache_bytes=0, shuffle_buffer=64,
                              phases=phases)
    got = [b["id"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=workers)]
    assert sorted(i for b in got for i in b) == list(range(rows)) and len(got[-1]) == 40
    per_pid = Counter(pid for pid, _ in reads(decoded))
    assert len(per_pid) == workers
    assert max(per_pid.values()) <= units / workers + 4, per_pid  # its share and the ends of its lane runs
    order = lane_order(np.full(units, GROUP).clip(max=rows - GROUP * np.arange(units)), seed=1, epoch=0,
                       shuffle=True, lanes=48, buffer_rows=64, step_rows=64, phases=phases)
    assert len(order.tail) == 40 and order.body_steps == rows // 64


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(("ranks", "workers"), [(5, 0), (7, 2), (2, 3)])
def test_consumers_not_dividing_lanes_stay_exactly_once(many_groups, caplog, ranks: int, workers: int) -> None:
    caplog.set_level(logging.INFO, logger="idxlake.loaders.stream")
    per_rank = []
    for r in range(ranks):
        ds = DeltaIterableDataset(many_groups, split="train", batch_size=24, seed=2, rank=r, world_size=ranks)
        per_rank.append([b["id"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=workers)])
        assert len(per_rank[-1]) == len(ds)
    assert len({len(p) for p in per_rank}) == 1
    seen = Counter(i for p in per_rank for b in p for i in b)
    assert set(seen) == set(range(ROWS)) and sum(seen.values()) - ROWS < ranks
    if workers == 0:  # the INFO line is logged in this process (workers log in theirs)
        lines = [r.getMessage() for r in caplog.records if "reads" in r.getMessage()]
        assert len(lines) == ranks and "not disjoint" in lines[0] and "row groups" in lines[0]


def test_cache_turns_itself_on_when_the_selection_fits(many_groups, decoded) -> None:
    auto = DeltaIterableDataset(many_groups, split="train", batch_size=50)  # ~1 MB: fits the default budget
    off = DeltaIterableDataset(many_groups, split="train", batch_size=50, cache_bytes=0)
    tiny = DeltaIterableDataset(many_groups, split="train", batch_size=50, cache_bytes=1000)
    for ds in (auto, off, tiny):
        counts = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            before = len(reads(decoded))
            ids = torch.cat([b["id"] for b in ds])
            assert sorted(ids.tolist()) == list(range(ROWS))
            for future in ds._next.pending.values() if ds._next is not None else ():
                future.result()  # the reads ahead (lookahead.py) are logged before the next count
            counts.append(len(reads(decoded)) - before)
        assert counts[0] == ROWS // GROUP
        # uncached: all 300 again, plus at most prefetch_depth (8) of epoch 2's read ahead (lookahead.py)
        most = ROWS // GROUP + ds.prefetch_depth
        assert (counts[1] == 0) if ds is auto else (ROWS // GROUP <= counts[1] <= most), counts
    assert auto._cache is not None and off._cache is None and tiny._cache is None


def test_prefetch_depth_and_lanes_options(many_groups) -> None:
    def run(**kw) -> list[list[int]]:
        return [b["id"].tolist() for b in DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=3,
                                                               cache_bytes=0, **kw)]

    reference = run()
    assert run(prefetch_depth=1) == reference and run(prefetch=False) == reference
    assert run(prefetch_depth=64) == reference
    other = run(lanes=8)  # another K: another order, still exactly once
    assert other != reference and sorted(i for b in other for i in b) == list(range(ROWS))
    for bad, match in (({"lanes": 7}, "multiple of phases=2"), ({"lanes": 0}, "lanes must be"),
                       ({"lanes": 48, "phases": 5}, "multiple of phases=5"), ({"phases": 0}, "phases must be"),
                       ({"prefetch_depth": 0}, "prefetch_depth must be")):
        with pytest.raises(ValueError, match=match):
            DeltaIterableDataset(many_groups, **bad)


def test_reads_stay_in_flight_while_a_batch_waits(many_groups, monkeypatch) -> None:
    """A cold pass whose first batches need far more row groups than ``prefetch_depth`` keeps its reader
    threads reading while it waits for one: a read starts while another runs, not one read at a time."""
    import threading
    import time

    from idxlake.loaders.decode import UnitReader

    real, lock = UnitReader.read, threading.Lock()
    state = {"running": 0, "starts": 0, "beside": 0}

    def slow(self, unit, *args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            state["starts"] += 1
            state["beside"] += state["running"] > 0
            state["running"] += 1
        try:
            time.sleep(0.004)
            return real(self, unit, *args, **kwargs)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(UnitReader, "read", slow)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, cache_bytes=0, prefetch_depth=4)
    it = iter(ds)
    next(it), next(it)  # each needs the first window of 24 lanes: ~150 row groups
    assert state["starts"] >= 100
    assert state["beside"] >= 0.8 * state["starts"], state  # one read at a time: 6 of 116


@pytest.mark.parametrize(("units", "group", "consumers"), [(300, 8192, 1), (300, 8192, 2), (300, 8192, 8),
                                                           (64, 8192, 1), (1200, 8192, 1), (300, 1024, 4)])
def test_row_groups_live_at_once_stay_within_the_readmes_bound(units: int, group: int, consumers: int) -> None:
    """The README's memory bound: at most ``K/C x (2w + 1)`` row groups live at once in a pass (``w``: the row
    groups a lane window spans), computed by the schedule that sizes the arena."""
    from types import SimpleNamespace

    from idxlake.loaders.order import consumer_rows
    from idxlake.loaders.stream import schedule

    lanes, buffer, batch = 48, 32768, 256
    rows = np.full(units, group)
    order = lane_order(rows, seed=1, epoch=0, shuffle=True, lanes=lanes, buffer_rows=buffer,
                       step_rows=batch * consumers)
    steps = units * group // (batch * consumers)
    refs, sizes = consumer_rows(order, np.arange(steps), rank=0, world_size=consumers,
                                tail_ranges=np.zeros((0, 2), dtype=np.int64))
    live = schedule(SimpleNamespace(unit_rows=rows, units=[None] * units), refs, sizes).live  # type: ignore[arg-type]
    window = math.ceil(math.ceil(buffer / lanes) / group) + 1
    assert 0 < live <= lanes // consumers * (2 * window + 1)


def test_one_lane_shuffles_a_selection_smaller_than_the_lanes(synthetic_table) -> None:
    """At most K/P rows: one row a lane, the same order for every seed and epoch (README, "How well it
    shuffles"); ``lanes=1, phases=1`` shuffles such a selection as a whole. (Until order lanes-3 the
    tail kept row-group order even in one lane: 1 order of 6.)"""
    table, _ = synthetic_table

    def orders(rows: int, **kw) -> set[tuple[int, ...]]:
        seen = set()
        for seed in (0, 1):
            ds = DeltaIterableDataset(table, split="train", filter=f"id < {rows}", batch_size=64, seed=seed, **kw)
            for epoch in range(3):
                ds.set_epoch(epoch)
                ids = tuple(i for b in ds for i in b["id"].tolist())
                assert sorted(ids) == list(range(rows))
                seen.add(ids)
        return seen

    assert len(orders(20)) == 1  # the documented limit of the lane order
    assert len(orders(20, lanes=1, phases=1)) == 6
    assert len(orders(40, lanes=1, phases=1)) == 6
