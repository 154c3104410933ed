"""The shared decode cache at its edges: shared memory refused, several loaders over one dataset, a plain
DataLoader's workers beside it, pending resumes, and a final partial batch."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import reads
from test_loader_sharedcache import KW, FakeProcess, ids_of, pass_batches, reference
from torch.utils.data import DataLoader

from idxlake import ingest
from idxlake.loaders import DeltaIterableDataset, sharedcache
from idxlake.loaders.shares import worker_batches
from idxlake.loaders.world import World
from idxlake.schemas import LoaderConfigError


def warm(ds: DeltaIterableDataset, **kw) -> DataLoader:
    """A loader whose workers filled the shared cache in epoch 0 (passes run here from then on)."""
    loader = ds.dataloader(num_workers=2, **kw)
    ds.set_epoch(0)
    list(loader)
    return loader


def test_shared_memory_refused_falls_back_to_a_cache_per_worker(cache_table, monkeypatch, caplog) -> None:
    """``share_memory_()`` fails when ``/dev/shm`` is taken between the check and the allocation (several
    ranks at once): a warning, and the workers keep private caches."""
    refs = [reference(cache_table, epoch) for epoch in range(2)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)  # its ring is in shared memory already

    def refused(self):
        raise RuntimeError("unable to write to file </torch_1_2>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", refused)
    with caplog.at_level(logging.WARNING, logger="idxlake.loaders.sharedcache"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            assert ids_of(loader) == refs[epoch]
            assert ds._shared.workers_read
    assert loader._cache.arena is None
    assert any("no decode cache in shared memory (unable to write" in r.getMessage() for r in caplog.records)


def test_a_new_loader_over_the_dataset_uses_its_shared_cache(cache_table, decoded) -> None:
    """A loader made every epoch (a common loop) takes the cache an earlier one filled: one arena, and
    the warm epoch runs here without decoding."""
    want = reference(cache_table, 1)
    ds = DeltaIterableDataset(cache_table, **KW)
    first = warm(ds)
    ds.set_epoch(1)
    again = ds.dataloader(num_workers=2)
    before = len(reads(decoded))
    assert ids_of(again) == want
    assert again._cache.arena is first._cache.arena and not ds._shared.workers_read
    assert reads(decoded)[before:] == []
    other = DeltaIterableDataset(cache_table, **KW)  # another dataset: its own cache
    assert warm(other)._cache.arena is not first._cache.arena
    ds.cache_bytes = 0  # no cache any more: a new loader does not take the old one
    ds.set_epoch(2)
    off = ds.dataloader(num_workers=2)
    assert ids_of(off) == reference(cache_table, 2) and off._cache.arena is None and ds._shared.workers_read


def test_a_plain_dataloaders_workers_keep_their_own_cache(cache_table) -> None:
    """Workers a plain ``DataLoader`` forks inherit the main process's shared cache; they must not read
    it outside its protocol (nor write into it): they decode into private caches."""
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = warm(ds)
    ds.set_epoch(1)
    list(loader)  # served here: the dataset's cache is now the shared one
    assert ds._cache is loader._cache.arena
    ds._cache.tensors["image"].zero_()  # what an inherited cache would yield
    ref = DeltaIterableDataset(cache_table, **KW)
    ref.set_epoch(2)
    ds.set_epoch(2)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    want = {int(i): img for b in DataLoader(ref, batch_size=None) for i, img in zip(b["id"], b["image"], strict=True)}
    assert sorted(i for b in got for i in b["id"].tolist()) == sorted(want)
    assert all(torch.equal(img, want[int(i)]) for b in got for i, img in zip(b["id"], b["image"], strict=True))
    assert int(loader._cache.arena.tensors["image"].sum()) == 0  # nothing written into it either


def test_a_rank_count_resume_on_a_warm_loader_runs_here(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = warm(ds)
    ds.load_state_dict({"epoch": 1, "batches_consumed": 7})
    ds.set_epoch(1)
    assert ids_of(loader) == reference(cache_table, 1)[7:] and not ds._shared.workers_read
    assert ids_of(loader) == reference(cache_table, 1)  # the resume applied once


def test_a_workers_state_on_a_warm_loader_goes_to_new_workers(cache_table) -> None:
    """A worker's state (``start``/``yielded`` per worker of 2) is for workers: the warm loader hands that
    pass to them instead of failing with "saved with num_workers=2, now num_workers=1"."""
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = warm(ds, persistent_workers=False)
    ds.load_state_dict({"epoch": 1, "start": 0, "yielded": 2, "num_workers": 2, "world_size": 1})
    ds.set_epoch(1)
    got = ids_of(loader)
    assert ds._shared.workers_read
    ref = reference(cache_table, 1)
    skipped = {b for w in range(2) for b in worker_batches(len(ref), worker=w, num_workers=2)[:2].tolist()}
    assert sorted(got) == sorted(ref[b] for b in range(len(ref)) if b not in skipped)
    ds.set_epoch(2)
    assert ids_of(loader) == reference(cache_table, 2) and not ds._shared.workers_read  # whole, and here again


def test_a_resume_persistent_workers_cannot_see_is_refused(cache_table) -> None:
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = warm(ds)  # persistent workers: started in epoch 0
    ds.load_state_dict({"epoch": 1, "start": 0, "yielded": 2, "num_workers": 2, "world_size": 1})
    ds.set_epoch(1)
    with pytest.raises(LoaderConfigError, match=r"the resume loaded with load_state_dict\(\) cannot reach them"):
        list(loader)


def test_a_rank_count_the_running_workers_cannot_see_is_refused(cache_table) -> None:
    """With a transform the pass stays in the (running, persistent) workers: they cannot apply it."""
    ds = DeltaIterableDataset(cache_table, sample_transform=lambda image: image, **KW)
    loader = warm(ds)
    ds.load_state_dict({"epoch": 1, "batches_consumed": 5})
    ds.set_epoch(1)
    with pytest.raises(LoaderConfigError, match="cannot resume epoch 1: this DataLoader's persistent workers"):
        list(loader)


def test_a_resume_that_skips_nothing_is_not_refused(cache_table) -> None:
    """``{"epoch": e + 1, "batches_consumed": 0}`` (what a state of an older build is told to load) is the
    whole epoch, which the running workers yield anyway."""
    want = reference(cache_table, 1)
    ds = DeltaIterableDataset(cache_table, sample_transform=lambda image: image, **KW)
    loader = warm(ds)
    ds.load_state_dict({"epoch": 1, "batches_consumed": 0})
    ds.set_epoch(1)
    assert ids_of(loader) == want and ds._shared.workers_read


def test_a_workers_state_for_another_epoch_keeps_no_pass_in_the_workers(cache_table, caplog) -> None:
    """A worker's state for an epoch other than the one iterated is dropped (with a warning) by the pass
    in the main process, instead of sending every later warm pass to workers that never see it."""
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = warm(ds)
    ds.load_state_dict({"epoch": 0, "start": 0, "yielded": 2, "num_workers": 2, "world_size": 1})
    for epoch in (3, 4):
        ds.set_epoch(epoch)
        with caplog.at_level(logging.WARNING, logger="idxlake.loaders.resume"):
            assert ids_of(loader) == reference(cache_table, epoch) and not ds._shared.workers_read
    assert ds._resume is None
    assert any("resume state for epoch 0 ignored: iterating epoch 3" in r.getMessage() for r in caplog.records)


def test_a_used_resume_does_not_keep_a_ddp_rank_in_the_workers(cache_table, decoded) -> None:
    """A resume the workers used must not linger in the main process and keep a DDP rank's warm pass
    (planned here once the row groups of its pass are in, before the whole selection is) in the workers."""
    want = [reference(cache_table, epoch, rank=1, world_size=2) for epoch in range(2)]
    ds = DeltaIterableDataset(cache_table, rank=1, world_size=2, **KW)
    ds.load_state_dict({"epoch": 0, "batches_consumed": 3})
    loader = ds.dataloader(num_workers=2)
    ds.set_epoch(0)
    assert ids_of(loader) == want[0][3:] and ds._shared.workers_read  # the workers used it
    ds.set_epoch(1)
    arena = loader._cache.arena
    for unit in ds._pass_plan(1, World(1, 2), *pass_batches(ds)).sched.order:  # the next pass's row groups in
        if not arena.stamps[unit]:
            arena.put(int(unit), ds._reader.read(ds.plan.units[unit]))
    assert not (arena.stamps > 0).all()  # only a DDP rank's own pass can run here
    before = len(reads(decoded))
    assert ids_of(loader) == want[1] and not ds._shared.workers_read
    assert reads(decoded)[before:] == []


def test_a_ddp_rank_resumes_here_once_the_row_groups_of_its_pass_are_in(cache_table, decoded) -> None:
    """A rank count pending for a DDP rank's warm pass: planned here with the resume, the pass runs here."""
    want = reference(cache_table, 1, rank=1, world_size=2)
    ds = DeltaIterableDataset(cache_table, rank=1, world_size=2, **KW)
    loader = ds.dataloader(num_workers=2)
    ds.set_epoch(0)
    list(loader)
    ds.load_state_dict({"epoch": 1, "batches_consumed": 4})
    ds.set_epoch(1)
    arena = loader._cache.arena
    for unit in ds._pass_plan(1, World(1, 2), *pass_batches(ds)).sched.order:  # the whole pass's row groups
        if not arena.stamps[unit]:
            arena.put(int(unit), ds._reader.read(ds.plan.units[unit]))
    assert not (arena.stamps > 0).all()
    before = len(reads(decoded))
    assert ids_of(loader) == want[4:] and not ds._shared.workers_read
    assert reads(decoded)[before:] == []
    assert ids_of(loader) == want  # applied once


@pytest.fixture
def ragged(tmp_path, source_factory) -> str:
    """2410 rows: batches of 40 end in a partial one (and with two ranks a padded final round)."""
    src = source_factory("ragged_cache", rows={"train": 2410, "test": 10}, seed=3)
    path = str(tmp_path / "ragged_table")
    ingest(src.root, path, row_group_rows=48)
    return path


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2)])
def test_passes_served_here_keep_the_tail(ragged, drop_last: bool, rank: int, world_size: int) -> None:
    kw = dict(rank=rank, world_size=world_size, drop_last=drop_last)
    ds = DeltaIterableDataset(ragged, **KW, **kw)
    loader = ds.dataloader(num_workers=2)
    served = 0
    for epoch in range(4 if world_size == 1 else 10):
        ds.set_epoch(epoch)
        want = reference(ragged, epoch, **kw)
        got = ids_of(loader)
        assert got == want and len(got) == len(loader)
        served += not ds._shared.workers_read
    assert served
    if not drop_last and world_size == 1:
        assert len(got[-1]) == 2410 % 40


def test_an_iterator_that_lives_on_keeps_its_copies_untrusted(cache_table, decoded) -> None:
    """Workers of an abandoned iterator that lives on (non-persistent: a second iterator gets fresh
    workers) may still be copying in: the new workers trust nothing of its generation, and copy its
    row groups in again, under their own stamp."""
    import gc
    import os

    refs = [reference(cache_table, epoch) for epoch in range(3)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2, persistent_workers=False)
    ds.set_epoch(0)
    first = iter(loader)
    next(first), next(first)  # a token of each worker: all they copy in, stamped with its generation
    arena = loader._cache.arena
    old = int(arena.generations[0])
    assert (arena.stamps == old).any()
    workers = loader._users[id(loader._ring)]  # the first iterator's worker processes
    skip = {str(os.getpid()), *(str(w.pid) for w in workers)}
    before = len(reads(decoded))
    assert ids_of(loader) == refs[0]  # a second iterator, alive beside the first
    rings = (loader._ring, *loader._spares)
    published = ([int(v) for v in r.trust[r.passes % sharedcache.TRUST_DEPTH, 1:3]] for r in rings)
    assert [1, old] in published  # the second pass's workers: one unsettled generation, `old`
    again = {unit for pid, unit in reads(decoded)[before:] if pid not in skip}
    assert len(again) == len(arena.stamps) - 1  # all but the main process's unit 0: `old`'s too
    assert not (arena.stamps == old).any()  # now under the new workers' stamp
    ds.set_epoch(1)
    assert ids_of(loader) == refs[1] and not ds._shared.workers_read  # trusted: served here
    del first
    gc.collect()
    ds.set_epoch(2)
    assert ids_of(loader) == refs[2] and not ds._shared.workers_read


def test_a_workers_pass_whose_start_raises_still_counts(cache_table, decoded, monkeypatch) -> None:
    """A worker survives a first pass whose ``iter(dataset)`` raised (torch hands the error to the main
    process with the first batch). That pass still took its trust row, so the next pass reads its own:
    its copies carry its generation, and the epoch after it is served here without decoding."""
    import os

    from torch.utils.data import get_worker_info

    real, started = DeltaIterableDataset._steps, set()

    def failing(self, rank: int, world_size: int):
        if get_worker_info() is not None and os.getpid() not in started:  # after the pass took its trust row
            started.add(os.getpid())  # each worker's first pass (not the epoch: a late worker reads the next)
            raise LoaderConfigError("a pass start that fails in the workers")
        return real(self, rank, world_size)

    monkeypatch.setattr(DeltaIterableDataset, "_steps", failing)  # forked workers inherit it
    refs = [reference(cache_table, epoch) for epoch in range(3)]
    ds = DeltaIterableDataset(cache_table, **KW)
    loader = ds.dataloader(num_workers=2)
    ds.set_epoch(0)
    with pytest.raises(LoaderConfigError, match="a pass start that fails"):
        list(loader)
    ds.set_epoch(1)
    assert ids_of(loader) == refs[1] and ds._shared.workers_read  # the same (persistent) workers
    arena = loader._cache.arena
    assert (arena.stamps[1:] == int(arena.generations[0])).all()  # the workers' copies: this pass's generation
    ds.set_epoch(2)
    before = len(reads(decoded))
    assert ids_of(loader) == refs[2] and not ds._shared.workers_read
    assert reads(decoded)[before:] == []


def _restamp(stamps: torch.Tensor, stop, low: int, high: int) -> None:
    """A sibling worker: stamps flip between a trusted-range value and one far outside it."""
    while not stop.is_set():
        stamps.fill_(low)
        stamps.fill_(high)


def test_trust_is_read_from_one_snapshot_while_siblings_stamp(cache_table) -> None:
    """Other workers stamp the shared cache while a worker (or the main process) reads the stamps: each
    read works on one snapshot. numpy's ``isin`` reads its input twice (a range mask, then a table
    lookup), so a stamp changing between them raised ``IndexError`` in a DataLoader worker (seen in CI)."""
    ds = DeltaIterableDataset(cache_table, **KW)
    arena = sharedcache.SharedArena(ds.plan, ds._reader.read(ds.plan.units[0]))
    arena.generations[0] = 8
    info = arena.start_generation()  # generation 9
    info[1], info[2] = 1, 3  # one unsettled generation: 3
    arena.stamps.fill_(3)  # the first unit's stamp (1, trusted) too
    ctx = torch.multiprocessing.get_context("fork")
    stop = ctx.Event()
    sibling = ctx.Process(target=_restamp, args=(arena.stamps, stop, 3, 10**6), daemon=True)
    sibling.start()
    try:
        for _ in range(30000):
            arena.resident[:] = False
            arena.worker_pass(info)
            assert not arena.resident.any()  # 3 is unsettled and 10**6 is a later generation
        arena.generations[1] = 10  # the main process: generations up to 10 completed but 3, whose
        arena._writers = {3: (lambda: None, [FakeProcess()])}  # worker still runs
        for _ in range(30000):
            arena.resident[:] = False
            arena.main_pass()
            assert not arena.resident.any()
    finally:
        stop.set()
        sibling.join(10)
