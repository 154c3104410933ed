"""Reviewer reproducers for the read-ahead (loaders/lookahead.py)."""
from __future__ import annotations

import itertools
import os

from test_loader_lanes import GROUP, ROWS, decoded, many_groups, reads  # noqa: F401
from torch.utils.data import DataLoader

from idxlake.loaders import DeltaIterableDataset
from idxlake.loaders.decode import UnitReader

UNITS = ROWS // GROUP


def fresh(table, epoch, **kw):
    ds = DeltaIterableDataset(table, split="train", batch_size=64, seed=4, cache_bytes=0, **kw)
    ds.set_epoch(epoch)
    return [b["id"].tolist() for b in ds]


def test_forked_worker_inherits_reads_ahead_in_flight(many_groups, monkeypatch):  # noqa: F811
    expected = fresh(many_groups, 2)
    parent, real, calls = os.getpid(), UnitReader.read, itertools.count()

    def read(self, unit):
        if os.getpid() == parent and next(calls) >= 2 * UNITS:  # the reads ahead of epoch 2: slow
            import time
            time.sleep(3)
        return real(self, unit)

    monkeypatch.setattr(UnitReader, "read", read)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    for e in (0, 1):
        ds.set_epoch(e)
        list(ds)
    assert ds._next is not None and not all(f.done() for f in ds._next.pending.values())
    if os.environ.get("CONTROL"):
        ds._next = None
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork", timeout=15)
    assert [b["id"].tolist() for b in loader] == expected


def test_concurrent_iterators_do_not_read_a_unit_twice(many_groups, decoded):  # noqa: F811
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    ds.set_epoch(0)
    list(ds)
    ds.set_epoch(1)
    a = iter(ds)
    out_a = []
    while ds._next is None:  # until pass A (epoch 1) plans epoch 2 ahead
        out_a.append(next(a)["id"].tolist())
    ds.set_epoch(2)
    b = iter(ds)  # takes A's plan, while A still reads ahead into it
    out_b = []
    for x, y in itertools.zip_longest(a, b):
        if x is not None:
            out_a.append(x["id"].tolist())
        if y is not None:
            out_b.append(y["id"].tolist())
    for f in ds._next.pending.values() if ds._next is not None else ():
        f.result()
    log = reads(decoded)
    from collections import Counter
    print("ahead of epoch 3:", len(ds._next.pending) if ds._next else 0, "reads:", len(log),
          "units read >1x in epoch 2 window:", sum(1 for c in Counter(u for _, u in log[2 * UNITS:]).values() if c > 2))
    assert out_a == fresh(many_groups, 1) and out_b == fresh(many_groups, 2)
    # epoch 0 + epoch 1 + epoch 2 (each unit once) + what pass B read ahead for epoch 3 (<= 4)
    ahead = len(ds._next.pending) if ds._next is not None else 0
    assert len(log) == 3 * UNITS + ahead, (len(log) - 3 * UNITS, ahead)


def test_forked_one_shot_workers_read_nothing_ahead(many_groups, decoded):  # noqa: F811
    alone = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    alone.set_epoch(1)
    start = len(reads(decoded))
    list(DataLoader(alone, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    share = len(reads(decoded)) - start  # what two workers read for epoch 1
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    ds.set_epoch(0)
    list(ds)  # a pass in the main process: _last_epoch = 0, inherited by forked workers
    before = len(reads(decoded))
    ds.set_epoch(1)
    list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert len(reads(decoded)) - before == share  # each worker reads its lanes; nothing for an epoch 2 never run
