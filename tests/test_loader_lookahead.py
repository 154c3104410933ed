"""Reading the next epoch ahead (loaders/lookahead.py): only while the epochs advance, at most
``prefetch_depth`` row groups, never changing what a pass yields; measured on the reader."""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest
import torch
from conftest import reads
from test_loader_lanes import GROUP, ROWS, many_groups  # noqa: F401 (fixtures)
from torch.utils.data import DataLoader

from idxlake.loaders import DeltaIterableDataset
from idxlake.loaders.decode import UnitReader

UNITS = ROWS // GROUP


def epoch_ids(ds: DeltaIterableDataset, epoch: int) -> list[list[int]]:
    ds.set_epoch(epoch)
    return [b["id"].tolist() for b in ds]


def fresh(table: str, epoch: int, **kw) -> list[list[int]]:
    return epoch_ids(DeltaIterableDataset(table, split="train", batch_size=64, seed=4, cache_bytes=0, **kw), epoch)


@pytest.mark.parametrize("depth", [1, 4])
def test_consecutive_epochs_read_the_next_one_ahead(many_groups, decoded, depth: int) -> None:  # noqa: F811
    expected = {e: fresh(many_groups, e, prefetch_depth=depth) for e in range(3)}
    before = len(reads(decoded))
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0,
                              prefetch_depth=depth)
    counts, ahead = [], []
    for epoch in range(3):
        start = len(reads(decoded))
        assert epoch_ids(ds, epoch) == expected[epoch]  # the same batches as a lone pass over that epoch
        ds._next and [f.result() for f in ds._next.pending.values()]  # let the reads ahead finish
        counts.append(len(reads(decoded)) - start)
        ahead.append(len(ds._next.pending) if ds._next is not None else 0)
    assert before == 3 * UNITS  # each lone pass read its 300 row groups and nothing more
    assert counts[0] == UNITS and ahead[0] == 0  # a first pass never reads ahead
    assert ds._next is not None and ds._next.key[0] == 3  # epoch 2 read epoch 3's first row groups
    assert all(0 < a <= depth for a in ahead[1:]), ahead
    assert counts[1] == UNITS + ahead[1] and counts[2] == UNITS - ahead[1] + ahead[2], (counts, ahead)


def test_another_pass_discards_what_was_read_ahead(many_groups, decoded) -> None:  # noqa: F811
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    epoch_ids(ds, 0)
    epoch_ids(ds, 1)  # reads epoch 2 ahead
    assert ds._next is not None and ds._next.key[0] == 2
    planned = list(ds._next.pending.values())
    assert epoch_ids(ds, 5) == fresh(many_groups, 5)  # not epoch 2: planned again, same batches
    assert all(f.cancelled() or f.done() for f in planned)
    assert ds._next is not None and ds._next.key[0] == 6  # the epochs advance: 6 read ahead
    ds.load_state_dict({"epoch": 6, "batches_consumed": 10})
    ds.set_epoch(6)
    assert [b["id"].tolist() for b in ds] == fresh(many_groups, 6)[10:]  # a resume: its own plan
    assert epoch_ids(ds, 6) == fresh(many_groups, 6)  # the same epoch again: nothing read ahead
    assert ds._next is None


def test_reads_ahead_that_have_not_started_are_cancelled_by_another_pass(many_groups, monkeypatch) -> None:  # noqa: F811
    """The reads ahead of epoch 2 are held (each unit's third read: epochs 0 and 1 read it once each);
    a pass over epoch 5 starts meanwhile: the reads still queued are cancelled and never run, only the
    ones already on a reader thread finish."""
    import collections
    import threading

    from idxlake.loaders.stream import READ_THREADS

    expected = fresh(many_groups, 5)
    real, gate, counts = UnitReader.read, threading.Event(), collections.Counter()
    held, lock = [], threading.Lock()

    def read(self, unit, *args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            counts[unit] += 1
            hold = counts[unit] == 3 and not gate.is_set()
            if hold:
                held.append(unit)
        if hold:
            gate.wait(30)
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(UnitReader, "read", read)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    epoch_ids(ds, 0)
    epoch_ids(ds, 1)  # reads epoch 2's first row groups ahead: they are held
    assert ds._next is not None and ds._next.key[0] == 2
    planned = list(ds._next.pending.values())
    deadline = time.monotonic() + 10
    while len(held) < min(READ_THREADS, len(planned)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(planned) > READ_THREADS and len(held) == READ_THREADS  # the others wait in the queue
    timer = threading.Timer(1.0, gate.set)  # the pass of epoch 5 waits on the held threads until then
    timer.start()
    try:
        assert epoch_ids(ds, 5) == expected
    finally:
        gate.set()
        timer.cancel()
    assert sum(f.cancelled() for f in planned) == len(planned) - READ_THREADS
    assert all(f.done() for f in planned)
    for future in ds._next.pending.values() if ds._next is not None else ():  # epoch 6's, read ahead
        future.result()
    assert ds._next is not None and ds._next.key[0] == 6
    assert sum(counts.values()) == 3 * UNITS + READ_THREADS + len(ds._next.pending)  # nothing cancelled ran


def test_a_cached_pass_reads_nothing_ahead(many_groups, decoded) -> None:  # noqa: F811
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)  # the cache fits
    for epoch in range(3):
        ids = torch.tensor([i for b in epoch_ids(ds, epoch) for i in b])
        assert sorted(ids.tolist()) == list(range(ROWS))
    assert len(reads(decoded)) == UNITS and ds._next is None


def test_a_forked_worker_drops_the_parents_reads_ahead(many_groups, monkeypatch) -> None:  # noqa: F811
    """The parent's reads ahead run on its threads, which a forked worker does not have: waiting for
    them would hang (the DataLoader times out)."""
    expected = fresh(many_groups, 2)
    parent, real, calls = os.getpid(), UnitReader.read, itertools.count()

    def read(self, unit, *args, **kwargs):
        if os.getpid() == parent and next(calls) >= 2 * UNITS:  # the reads ahead of epoch 2: slow
            time.sleep(1)
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(UnitReader, "read", read)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    for e in (0, 1):
        ds.set_epoch(e)
        list(ds)
    assert ds._next is not None and not all(f.done() for f in ds._next.pending.values())
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork", timeout=15)
    assert [b["id"].tolist() for b in loader] == expected


def test_concurrent_iterators_do_not_read_a_unit_twice(many_groups, decoded) -> None:  # noqa: F811
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    ds.set_epoch(0)
    list(ds)
    ds.set_epoch(1)
    a = iter(ds)
    out_a = []
    while ds._next is None:  # until pass A (epoch 1) plans epoch 2 ahead (in a reader thread: steps take time)
        out_a.append(next(a)["id"].tolist())
        time.sleep(0.005)
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
    assert out_a == fresh(many_groups, 1) and out_b == fresh(many_groups, 2)
    # epoch 0 + epoch 1 + epoch 2 (each unit once) + what pass B read ahead for epoch 3 (<= 4)
    ahead = len(ds._next.pending) if ds._next is not None else 0
    assert len(log) == 3 * UNITS + ahead, (len(log) - 3 * UNITS, ahead)


def test_forked_one_shot_workers_read_nothing_ahead(many_groups, decoded) -> None:  # noqa: F811
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


def cached_ids(table: str, epoch: int) -> list[list[int]]:
    """A lone pass over ``epoch`` from a filled cache (epoch 0 fills it), planned in place."""
    ds = DeltaIterableDataset(table, split="train", batch_size=64, seed=4, prefetch=False)
    epoch_ids(ds, 0)
    ids = epoch_ids(ds, epoch)
    if ds._warm is not None:  # the plan its last pass started: done before the caller looks at plans
        ds._warm.future.result()
    return ids


def test_a_warm_pass_plans_the_next_one_in_a_reader_thread(many_groups, monkeypatch) -> None:  # noqa: F811
    import idxlake.loaders.dataset as dataset_module
    from idxlake.loaders import lookahead

    planned_in: list[str] = []
    real = lookahead.plan_pass

    def plan_pass(*args, **kwargs):
        planned_in.append(__import__("threading").current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "plan_pass", plan_pass)
    monkeypatch.setattr(dataset_module, "spare_core", lambda: True)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)  # the cache fits
    epoch_ids(ds, 0)  # fills the cache, then plans epoch 1 as it ends
    assert ds._warm is not None and ds._warm.key[0] == 1 and ds._warm.future.result().key[0] == 1
    assert epoch_ids(ds, 1) == cached_ids(many_groups, 1)  # warm, advancing: plans epoch 2 off this thread
    assert ds._warm is not None and ds._warm.future.result().key[0] == 2
    expected = cached_ids(many_groups, 2)
    planned_in.clear()
    assert epoch_ids(ds, 2) == expected  # takes that plan: the same batches
    ds._warm.future.result()
    assert len(planned_in) == 1 and planned_in[0].startswith("idxlake-read"), planned_in  # only epoch 3's, ahead
    expected = cached_ids(many_groups, 7)
    planned_in.clear()
    assert epoch_ids(ds, 7) == expected  # epoch 3 was planned: 7 is planned again, same batches
    ds._warm.future.result()
    assert planned_in[0] == "MainThread" and len(planned_in) == 2, planned_in  # 7 here, 8 ahead
    ds.load_state_dict({"epoch": 8, "batches_consumed": 5})
    ds.set_epoch(8)
    assert [b["id"].tolist() for b in ds] == cached_ids(many_groups, 8)[5:]  # a resume: not the pass planned


def test_without_a_spare_core_the_next_plan_is_made_between_passes(many_groups, monkeypatch) -> None:  # noqa: F811
    """With torch's threads on every CPU, no plan runs beside a pass's gathers: a pass that ends warm
    starts the next epoch's plan as it ends; the next pass takes it, and a jump does not wait for it."""
    import threading

    import idxlake.loaders.dataset as dataset_module
    from idxlake.loaders import lookahead
    from idxlake.loaders.lookahead import spare_core

    expected = {e: cached_ids(many_groups, e) for e in (0, 1, 2, 9)}
    planned_in: list[tuple[str, int]] = []
    real, slow = lookahead.plan_pass, threading.Event()

    def plan_pass(plan, order, **kwargs):  # type: ignore[no-untyped-def]
        planned_in.append((threading.current_thread().name, order.epoch))
        if order.epoch == 3 and not slow.is_set():
            slow.wait(5)  # a plan nobody asks for: the pass of epoch 9 must not wait for it
        return real(plan, order, **kwargs)

    monkeypatch.setattr(dataset_module, "plan_pass", plan_pass)
    cpus = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cpus)
        assert not spare_core()  # torch's threads use every CPU: planning would take turns with the gathers
        ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)
        for epoch in range(3):
            ds.set_epoch(epoch)
            it = iter(ds)
            first = [next(it)["id"].tolist()]
            assert ds._warm is None  # nothing planned while the pass runs
            assert first + [b["id"].tolist() for b in it] == expected[epoch]
            assert ds._warm is not None and ds._warm.key[0] == epoch + 1  # planned as the pass ended
            ds._warm.future.result()
        assert planned_in == [("MainThread", 0)] + [(n, e) for n, e in planned_in[1:] if n.startswith("idxlake-read")]
        assert [e for _, e in planned_in] == [0, 1, 2, 3]  # each later epoch's plan came from the pass before
        started = time.perf_counter()
        assert epoch_ids(ds, 9) == expected[9]  # a jump: planned in place, epoch 3's still pending
        assert time.perf_counter() - started < 4 and not slow.is_set()
        torch.set_num_threads(1)
        assert spare_core() == (cpus > 1)
    finally:
        slow.set()
        torch.set_num_threads(threads)


def test_a_failed_background_plan_is_planned_in_place(many_groups, monkeypatch, caplog) -> None:  # noqa: F811
    import threading

    import idxlake.loaders.dataset as dataset_module
    from idxlake.loaders import lookahead

    real, fail = lookahead.plan_pass, {"on": False}

    def plan_pass(*args, **kwargs):
        if fail["on"] and threading.current_thread().name.startswith("idxlake-read"):
            fail["on"] = False
            raise MemoryError("transient")
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "plan_pass", plan_pass)
    monkeypatch.setattr(dataset_module, "spare_core", lambda: True)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)
    epoch_ids(ds, 0)
    ds._warm.future.result()  # epoch 1's plan, made as the filling pass ended
    fail["on"] = True
    epoch_ids(ds, 1)  # warm: the background plan of epoch 2 fails
    with caplog.at_level("DEBUG", logger="idxlake.loaders.lookahead"):
        for epoch in (2, 9, 9):  # planned in place, then again in the background: never the stored error
            assert epoch_ids(ds, epoch) == cached_ids(many_groups, epoch)
    assert "planning the next pass in the background failed" in caplog.text


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_started_while_a_warm_plan_is_pending(many_groups, monkeypatch, context: str) -> None:  # noqa: F811
    """A warm plan still running in the parent is neither pickled into spawned workers nor waited
    for by forked ones (its thread does not exist there: waiting would hang)."""
    import pickle
    import threading

    import idxlake.loaders.dataset as dataset_module
    from idxlake.loaders import lookahead

    real, release = lookahead.plan_pass, threading.Event()

    def plan_pass(plan, order, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("idxlake-read") and order.epoch == 2:
            release.wait(30)  # the background plan of epoch 2 stays pending until the workers are done
        return real(plan, order, **kwargs)

    monkeypatch.setattr(dataset_module, "plan_pass", plan_pass)
    monkeypatch.setattr(dataset_module, "spare_core", lambda: True)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)
    epoch_ids(ds, 0)
    epoch_ids(ds, 1)
    try:
        assert ds._warm is not None and not ds._warm.future.done()
        assert pickle.loads(pickle.dumps(ds))._warm is None
        ds.set_epoch(2)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context, timeout=60)
        assert sorted(i for b in loader for i in b["id"].tolist()) == list(range(ROWS))
    finally:
        release.set()


def test_spare_core_counts_the_workers_of_a_loader(monkeypatch) -> None:
    from idxlake.loaders import lookahead

    class Info:
        num_workers = 4

    monkeypatch.setattr(lookahead, "usable_cpus", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert lookahead.spare_core()  # the main process: 1 thread of 4 CPUs
    monkeypatch.setattr(lookahead, "get_worker_info", lambda: Info())
    assert not lookahead.spare_core()  # a worker of 4, each with a thread: no CPU left over
    Info.num_workers = 3
    assert lookahead.spare_core()


def test_usable_cpus_follows_the_affinity() -> None:
    from idxlake.loaders.lookahead import usable_cpus

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_planning_between_passes_only_after_a_whole_pass_in_the_main_process(many_groups, monkeypatch) -> None:  # noqa: F811
    """No plan ahead after a pass stopped early or in a DataLoader worker (it ran beside the other
    workers' last batches); a pool that takes no more work (interpreter shutdown) is no error."""
    import idxlake.loaders.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "spare_core", lambda: False)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4)
    epoch_ids(ds, 0)  # fills the cache
    ds._warm.future.result()
    ds.set_epoch(1)
    it = iter(ds)
    next(it)
    it.close()  # stopped early: the plan of epoch 1 was taken, nothing planned for epoch 2
    assert ds._warm is None
    monkeypatch.setattr(dataset_module, "get_worker_info", lambda: object())  # as in a DataLoader worker
    assert epoch_ids(ds, 2) == cached_ids(many_groups, 2) and ds._warm is None
    monkeypatch.undo()
    monkeypatch.setattr(dataset_module, "spare_core", lambda: False)
    pool = ds._thread_pool()
    monkeypatch.setattr(pool, "submit", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("cannot schedule new futures after interpreter shutdown")))
    assert epoch_ids(ds, 3) == cached_ids(many_groups, 3) and ds._warm is None


def test_a_failed_plan_ahead_leaves_the_pass_and_plans_the_next_in_place(many_groups, monkeypatch,  # noqa: F811
                                                                         caplog) -> None:
    """Planning the next epoch while this one reads (e.g. a MemoryError building its order) is best effort:
    the running pass yields its batches, and the next pass plans in place."""
    real, failed = DeltaIterableDataset._pass_plan, []

    def planning(self, epoch, *args, **kwargs):  # type: ignore[no-untyped-def]
        if epoch == 2 and not failed:  # the plan ahead made during epoch 1's pass
            failed.append(epoch)
            raise MemoryError("no room for the next epoch's order")
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(DeltaIterableDataset, "_pass_plan", planning)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    with caplog.at_level(logging.DEBUG, logger="idxlake.loaders.stream"):
        assert [epoch_ids(ds, e) for e in range(3)] == [fresh(many_groups, e) for e in range(3)]
    assert failed == [2] and ds._next is not None and ds._next.key[0] == 3  # epoch 2's pass read epoch 3 ahead
    assert any("planning the next pass ahead failed" in r.getMessage() for r in caplog.records)


def test_the_next_pass_is_planned_in_a_reader_thread(many_groups, decoded, monkeypatch) -> None:  # noqa: F811
    """A cold pass plans the next epoch's pass behind its own reads, off the consumer's thread (a plan is a fifth
    of a cold MNIST epoch); one whose plan arrives after its last batch still takes it up and reads ahead."""
    import threading

    import idxlake.loaders.dataset as dataset_module
    import idxlake.loaders.stream as stream_module

    threads: list[tuple[int, str]] = []
    real, real_wait, last_batch_done = dataset_module.plan_pass, stream_module.wait, threading.Event()

    def recording(plan, key, **kwargs):  # type: ignore[no-untyped-def]
        threads.append((key.epoch, threading.current_thread().name))
        if threading.current_thread() is not threading.main_thread():
            assert last_batch_done.wait(10)  # the plan comes after the pass's last batch
        return real(plan, key, **kwargs)

    def after_last_batch(futures):  # type: ignore[no-untyped-def]
        last_batch_done.set()
        return real_wait(futures)

    monkeypatch.setattr(dataset_module, "plan_pass", recording)
    monkeypatch.setattr(stream_module, "wait", after_last_batch)
    ds = DeltaIterableDataset(many_groups, split="train", batch_size=64, seed=4, cache_bytes=0)
    assert epoch_ids(ds, 0) == fresh(many_groups, 0)
    assert epoch_ids(ds, 1) == fresh(many_groups, 1)
    assert (2, "MainThread") not in threads and any(e == 2 and n.startswith("idxlake-read") for e, n in threads)
    assert ds._next is not None and ds._next.key[0] == 2 and ds._next.pending  # taken up, its reads ahead
    ahead = len(ds._next.pending)
    [f.result() for f in ds._next.pending.values()]
    expected = fresh(many_groups, 2)  # a lone pass: reads all of its row groups
    last_batch_done.clear()
    start = len(reads(decoded))
    assert epoch_ids(ds, 2) == expected
    assert ds._next is not None and ds._next.key[0] == 3
    [f.result() for f in ds._next.pending.values()]
    assert len(reads(decoded)) - start == UNITS - ahead + len(ds._next.pending)  # epoch 2's first were read ahead
