"""The workers' decode cache in shared memory, and warm passes served by the main process: measured
by instrumenting the reader (``UnitReader.read`` logged per process, forked workers inherit it)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from conftest import CACHE_GROUP, CACHE_ROWS, reads
from torch.utils.data import DataLoader

from idxlake.loaders import DeltaIterableDataset, RingDataLoader, sharedcache
from idxlake.loaders.sharedcache import SharedArena
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError

KW = dict(split="train", batch_size=40, seed=9)


def reference(cache_table: str, epoch: int, **kw) -> list[list[int]]:
    ref = DeltaIterableDataset(cache_table, **{**KW, **kw})
    ref.set_epoch(epoch)
    return [b["id"].tolist() for b in DataLoader(ref, batch_size=None)]


def ids_of(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2)])
def test_workers_fill_one_cache_then_warm_passes_run_in_the_main_process(cache_table, decoded, caplog, rank: int,
                                                                         world_size: int) -> None:
    """One rank: its workers fill the whole cache in the first epoch. A DDP rank's workers fill only the
    row groups of its lanes (other ones every epoch): its pass runs here once they hold all of its rows."""
    epochs = 4 if world_size == 1 else 12
    refs = [reference(cache_table, epoch, rank=rank, world_size=world_size) for epoch in range(epochs)]
    ds = DeltaIterableDataset(cache_table, rank=rank, world_size=world_size, **KW)
    loader = ds.dataloader(num_workers=2)
    served = []
    with caplog.at_level(logging.INFO, logger="idxlake.loaders.mainpasses"):
        for epoch in range(epochs):
            ds.set_epoch(epoch)
            before = len(reads(decoded))
            assert ids_of(loader) == refs[epoch]  # the same batches in the same order
            mine = reads(decoded)[before:]
            if not ds._shared.workers_read:  # served here: nothing decoded by anyone
                served.append(epoch)
                assert mine == [] and loader._cache.arena is not None
    if world_size == 1:
        assert served == [1, 2, 3]
        assert [r.getMessage() for r in caplog.records if "main process" in r.getMessage()]
        assert loader._cache.arena.decoded == 1  # the first unit, decoded here to lay the cache out
    else:
        assert served and served == list(range(served[0], epochs)), served


def test_a_rank_whose_rows_are_all_in_runs_here_before_the_whole_selection_is(cache_table, decoded) -> None:
    """A DDP rank's pass runs in the main process as soon as the row groups it needs are in the cache."""
    ds = DeltaIterableDataset(cache_table, rank=1, world_size=2, **KW)
    loader = ds.dataloader(num_workers=2)
    epoch = 0
    while loader._cache.arena is None or not (loader._cache.arena.stamps > 0).all():  # every row group in
        ds.set_epoch(epoch)
        list(loader)
        epoch += 1
    ds.set_epoch(epoch)
    needed = ds._pass_plan(epoch, World(1, 2), *pass_batches(ds)).sched.order
    arena = loader._cache.arena
    keep = arena.stamps[needed].clone()
    arena.stamps[:] = 0  # published: only what this pass needs
    arena.stamps[needed] = keep
    arena.resident[:] = False  # what this process trusts so far
    assert 0 < len(needed) < len(arena.resident)
    expected = reference(cache_table, epoch, rank=1, world_size=2)
    before = len(reads(decoded))
    assert ids_of(loader) == expected and not ds._shared.workers_read
    assert reads(decoded)[before:] == []
    arena.stamps[needed[0]] = 0  # one missing: the workers take the pass
    arena.resident[:] = False
    ds.set_epoch(epoch + 1)
    assert ids_of(loader) == reference(cache_table, epoch + 1, rank=1, world_size=2) and ds._shared.workers_read


def pass_batches(ds: DeltaIterableDataset):
    from idxlake.loaders.shares import worker_batches

    body, tail = ds._steps(1, 2)
    return tail, worker_batches(body + len(tail), worker=0, num_workers=1)


def test_the_cache_is_shared_by_the_workers(cache_table, decoded) -> None:
    """With ``warm_passes="workers"`` the workers keep every pass, and after the first epoch no worker
    decodes again: their lanes cover other row groups every epoch, which a private cache would decode."""
    refs = [reference(cache_table, epoch) for epoch in range(3)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = RingDataLoader(ds, num_workers=2, persistent_workers=True, warm_passes="workers")
    counts = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        before = len(reads(decoded))
        assert ids_of(loader) == refs[epoch]
        assert ds._shared.workers_read  # the workers read every pass
        counts.append(len(reads(decoded)) - before)
    units = CACHE_ROWS // CACHE_GROUP
    assert units <= counts[0] < 2 * units and counts[1:] == [0, 0], counts
    assert (loader._cache.arena.stamps > 0).all()
    private = DeltaIterableDataset(cache_table, **KW)  # the same without it: later epochs decode again
    monkey = RingDataLoader(private, num_workers=2, persistent_workers=True, warm_passes="workers")
    monkey._cache.made = True  # no shared cache made: each worker keeps its own
    private_counts = []
    for epoch in range(2):
        private.set_epoch(epoch)
        before = len(reads(decoded))
        assert ids_of(monkey) == refs[epoch]
        private_counts.append(len(reads(decoded)) - before)
    assert private_counts[1] > 0, private_counts


def test_transforms_keep_warm_passes_in_the_workers(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, sample_transform=lambda image: image, **KW)
    loader = ds.dataloader(num_workers=2)
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert ids_of(loader) == reference(cache_table, epoch)
        assert ds._shared.workers_read
    assert loader._cache.arena is not None and (loader._cache.arena.stamps > 0).all()


def test_spawned_workers_fill_the_same_cache(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2, multiprocessing_context="spawn")
    ds.set_epoch(0)
    assert ids_of(loader) == reference(cache_table, 0)
    assert (loader._cache.arena.stamps > 0).all()  # set by the spawned workers through the shared stamps
    ds.set_epoch(1)
    got = list(loader)
    assert ids_of(got) == reference(cache_table, 1) and not ds._shared.workers_read
    ref = DeltaIterableDataset(cache_table, **KW)  # decoded on its own, in this process
    ref.set_epoch(1)
    assert all(torch.equal(b["image"], r["image"]) for b, r in zip(got, ref, strict=True))  # what the workers copied


def test_a_full_shm_falls_back_to_a_cache_per_worker(cache_table, monkeypatch, caplog) -> None:
    monkeypatch.setattr(sharedcache, "shm_room", lambda: 1000)
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)
    with caplog.at_level(logging.INFO, logger="idxlake.loaders.sharedcache"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            assert ids_of(loader) == reference(cache_table, epoch)
            assert ds._shared.workers_read  # no shared cache: the workers keep every pass
    assert loader._cache.arena is None
    assert any("does not fit /dev/shm" in r.getMessage() for r in caplog.records)


def test_resume_from_a_pass_served_in_the_main_process(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)
    ds.set_epoch(0)
    list(loader)
    ds.set_epoch(1)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = ds.state_dict()  # the main process reads this pass: its progress is known here
    assert state["batches_consumed"] == 3
    again = DeltaIterableDataset(cache_table, **KW)
    again.load_state_dict(state)
    again.set_epoch(1)
    rest = ids_of(again.dataloader(num_workers=2))  # cold: the new workers take the resume
    assert ids_of(head) + rest == reference(cache_table, 1)


def test_warm_passes_is_checked(cache_table) -> None:
    with pytest.raises(LoaderConfigError, match="warm_passes must be 'main' or 'workers', got 'gpu'"):
        RingDataLoader(DeltaIterableDataset(cache_table, **KW), num_workers=2, warm_passes="gpu")  # type: ignore[arg-type]


def process_view(arena: SharedArena) -> SharedArena:
    """``arena`` as another process sees it: the same shared tensors, its own flags."""
    view = copy.copy(arena)
    view.resident = np.zeros_like(arena.resident)
    return view


def test_stamps_are_trusted_from_earlier_generations_and_completed_passes(cache_table) -> None:
    """A worker trusts what earlier generations copied in, never a stamp of its own generation (another
    worker may be mid-copy); the main process trusts only the generations whose pass ran to its end."""
    ds = DeltaIterableDataset(cache_table, **KW)
    arena = SharedArena(ds.plan, ds._reader.read(ds.plan.units[0]))
    worker, other, main = process_view(arena), process_view(arena), process_view(arena)
    info = arena.start_generation()
    generation = int(info[0])
    worker.worker_pass(info)
    other.worker_pass(info)
    assert other.resident[0] and not other.resident[1:].any()  # the main process's copy, made before
    worker.put(1, ds._reader.read(ds.plan.units[1]))
    assert worker.resident[1] and int(arena.stamps[1]) == generation
    other.worker_pass(info)
    assert not other.resident[1]  # a stamp of its own generation
    main.main_pass()
    assert not main.resident.any()  # nothing completed yet
    arena.complete_generation(generation)
    main.main_pass()
    assert main.resident[:2].all() and not main.resident[2:].any()
    other.worker_pass(arena.start_generation())
    assert other.resident[1]  # an earlier generation now
    running = arena.start_generation()  # the main process copies in while the workers of `running` run
    other.worker_pass(running)
    main.put(5, ds._reader.read(ds.plan.units[5]))
    assert int(arena.stamps[5]) == running[0] and main.resident[5]
    other.worker_pass(running)
    assert not other.resident[5]  # maybe mid-copy for them
    other.worker_pass(arena.start_generation())  # started after the copy
    assert other.resident[5]


class FakeProcess:
    alive = True

    def is_alive(self) -> bool:
        return self.alive


class FakeIterator:
    def __init__(self) -> None:
        self._workers = [FakeProcess(), FakeProcess()]


def test_generations_whose_workers_may_still_copy_in_are_not_trusted(cache_table) -> None:
    """An unfinished pass whose workers are alive: later workers trust nothing of its generation and
    copy its row groups in again (stamping them as theirs), the main process trusts nothing of it,
    until its workers are gone."""
    ds = DeltaIterableDataset(cache_table, **KW)
    arena = SharedArena(ds.plan, ds._reader.read(ds.plan.units[0]))
    old_worker, new_worker, later = process_view(arena), process_view(arena), process_view(arena)
    it, other = FakeIterator(), FakeIterator()  # `arena` is the main process
    old_info = arena.start_generation()
    old = int(old_info[0])
    arena.started(old, it)
    old_worker.worker_pass(old_info)
    for unit in (1, 3):
        old_worker.put(unit, ds._reader.read(ds.plan.units[unit]))  # abandoned, its workers alive
    info = arena.start_generation()
    new = int(info[0])
    arena.started(new, other)
    assert info[1:3].tolist() == [1, old]  # published: one unsettled generation, `old`
    new_worker.worker_pass(info)
    assert new_worker.resident[0] and not new_worker.resident[1] and not new_worker.resident[3]
    new_worker.put(2, ds._reader.read(ds.plan.units[2]))
    new_worker.put(3, ds._reader.read(ds.plan.units[3]))  # its own complete copy: now its stamp
    assert int(arena.stamps[3]) == new and int(arena.stamps[1]) == old
    arena.complete_generation(new)
    arena.main_pass()
    assert arena.resident[2] and arena.resident[3] and not arena.resident[1]  # not the unsettled one
    later.worker_pass(arena.start_generation())
    assert later.resident[3] and not later.resident[1]
    assert arena.unsettled() == [old]
    it._workers[0].alive = False
    assert arena.unsettled() == [old]  # one worker still alive
    it._workers[1].alive = False  # its workers are gone (waitpid)
    assert arena.unsettled() == []
    arena.main_pass()
    assert arena.resident[1]
    info = arena.start_generation()
    assert int(info[1]) == 0
    later.worker_pass(info)
    assert later.resident[1]
    again = int(arena.start_generation()[0])  # persistent workers: the same iterator's next pass settles the last
    arena.started(again, other)
    arena.started(again + 1, other)
    assert list(arena._writers) == [again + 1]


def test_more_unsettled_generations_than_published_trust_none_from_the_lowest(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, **KW)
    arena = SharedArena(ds.plan, ds._reader.read(ds.plan.units[0]))
    workers = [process_view(arena) for _ in range(sharedcache.TRUST_SLOTS)]
    keep = []
    for unit, worker in enumerate(workers, 1):
        info = arena.start_generation()
        keep.append(FakeIterator())
        arena.started(int(info[0]), keep[-1])
        worker.worker_pass(info)
        worker.put(unit, ds._reader.read(ds.plan.units[unit]))
    info = arena.start_generation()
    assert int(info[1]) == sharedcache.TRUST_SLOTS and int(info[2]) == int(arena.stamps[1])
    last = process_view(arena)
    last.worker_pass(info)
    assert last.resident[0] and not last.resident[1:].any()


def test_an_abandoned_pass_of_the_workers_is_not_trusted_by_the_main_process(cache_table) -> None:
    refs = [reference(cache_table, epoch) for epoch in range(3)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)
    ds.set_epoch(0)
    it = iter(loader)
    next(it)
    del it  # abandoned: its workers' copies are not ordered before anything the main process reads
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        assert ids_of(loader) == refs[epoch]
        assert ds._shared.workers_read == (epoch == 1)  # epoch 1 in the workers, then here


def test_a_loop_taking_len_batches_completes_the_pass(cache_table) -> None:
    """A loop calling ``next`` ``len(loader)`` times never sees StopIteration; its pass still completes."""
    refs = [reference(cache_table, epoch) for epoch in range(2)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)
    for epoch in range(2):
        ds.set_epoch(epoch)
        it = iter(loader)
        got = [next(it)["id"].tolist() for _ in range(len(loader))]
        assert got == refs[epoch] and ds._shared.workers_read == (epoch == 0)


def test_float32_output_stays_in_the_workers(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, image_dtype="float32", **KW)
    loader = ds.dataloader(num_workers=2)
    for epoch in range(2):
        ds.set_epoch(epoch)
        list(loader)
        assert ds._shared.workers_read


def test_each_pass_of_a_persistent_worker_reads_its_own_trust() -> None:
    """A persistent worker takes up a pass (``iter(dataset)``, after acknowledging torch's reset) when
    the main process may already have published the next pass's trust: it reads the row of its pass."""
    import types

    ring = types.SimpleNamespace(trust=sharedcache.new_trust(), passes=0)
    infos = [np.full(sharedcache.TRUST_SLOTS, n, dtype=np.int64) for n in range(1, 7)]
    sharedcache.publish_trust(ring, infos[0])
    worker = copy.copy(ring)  # forked (or pickled) now: its first pass is the ring's first
    for info in infos[1:3]:
        sharedcache.publish_trust(ring, info)  # the main process runs ahead
    assert sharedcache.pass_trust(worker).tolist() == infos[0].tolist()
    assert sharedcache.pass_trust(worker).tolist() == infos[1].tolist()
    sharedcache.publish_trust(ring, infos[3])
    assert sharedcache.pass_trust(worker).tolist() == infos[2].tolist()
    assert sharedcache.pass_trust(worker).tolist() == infos[3].tolist()
    late = copy.copy(ring)  # a worker started at the ring's fourth pass
    late._seen = (0, 0)  # inherited from another process: not its own count
    assert sharedcache.pass_trust(late).tolist() == infos[3].tolist()
