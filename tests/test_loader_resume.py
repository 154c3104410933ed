"""Resume across passes, epochs, workers and processes: exactly once, exactly the next pass."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from idxlake import ingest
from idxlake.loaders import DeltaIterableDataset, World
from idxlake.schemas import LoaderConfigError, snapshot

KW = dict(split="train", batch_size=24, seed=2, shuffle_buffer=100)  # 13 batches of the 300 train rows
pytestmark = [pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
              pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")]


def ids_of(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def epoch_ids(table: str, epoch: int) -> list[list[int]]:
    ds = DeltaIterableDataset(table, **KW)
    ds.set_epoch(epoch)
    return ids_of(ds)


@pytest.mark.parametrize("workers", [0, 2])
def test_end_of_epoch_checkpoint_then_next_epoch_is_whole(synthetic_table, workers: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers)
    ds.set_epoch(0)
    assert ids_of(loader) == epoch_ids(table, 0)
    state = loader.state_dict()  # saved after the last batch of epoch 0
    again = DeltaIterableDataset(table, **KW)
    resumed = StatefulDataLoader(again, batch_size=None, num_workers=workers)
    resumed.load_state_dict(state)
    again.set_epoch(1)
    assert ids_of(resumed) == epoch_ids(table, 1)  # not epoch 0's order, not empty
    assert again.epoch == 1
    # the same with the dataset protocol alone
    plain = DeltaIterableDataset(table, **KW)
    list(plain)
    fresh = DeltaIterableDataset(table, **KW)
    fresh.load_state_dict(plain.state_dict())
    fresh.set_epoch(1)
    assert ids_of(fresh) == epoch_ids(table, 1)


@pytest.mark.parametrize("k", [0, 1, 5])
def test_persistent_workers_checkpoint_in_the_second_epoch(synthetic_table, k: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    table, _ = synthetic_table
    full = epoch_ids(table, 1)
    ds = DeltaIterableDataset(table, **KW)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=3, persistent_workers=True)
    ds.set_epoch(0)
    list(loader)
    ds.set_epoch(1)
    it = iter(loader)
    head = [next(it)["id"].tolist() for _ in range(k)]
    state = loader.state_dict()  # workers that have not yielded in epoch 1 yet report epoch 1, not 0
    del it, loader
    again = DeltaIterableDataset(table, **KW)
    resumed = StatefulDataLoader(again, batch_size=None, num_workers=3, persistent_workers=True)
    resumed.load_state_dict(state)
    again.set_epoch(1)
    assert head + ids_of(resumed) == full  # exactly once across the interruption
    again.set_epoch(2)
    assert ids_of(resumed) == epoch_ids(table, 2)


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_resume_applies_to_exactly_the_next_pass(synthetic_table, workers: int, persistent: bool) -> None:
    table, _ = synthetic_table
    full = epoch_ids(table, 0)
    ds = DeltaIterableDataset(table, **KW)
    ds.load_state_dict({"epoch": 0, "batches_consumed": 5})
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=persistent)
    passes = [ids_of(loader) for _ in range(3)]
    assert [len(p) for p in passes] == [len(full) - 5, len(full), len(full)]
    assert passes == [full[5:], full, full]
    assert ids_of(ds) == full  # and not again in this process either


def test_main_process_state_dict_refuses_when_workers_read(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    it = iter(DataLoader(ds, batch_size=None, num_workers=2))
    next(it)
    with pytest.raises(LoaderConfigError, match=r"StatefulDataLoader.*batches_consumed"):
        ds.state_dict()
    del it
    ds.set_epoch(1)  # a new epoch, not started: nothing consumed
    assert ds.state_dict()["epoch"] == 1 and ds.state_dict()["batches_consumed"] == 0
    list(ds)  # read here: this process knows again
    assert ds.state_dict()["batches_consumed"] == len(ds)


def test_pickled_dataset_takes_the_process_group_seen_when_pickled(synthetic_table, monkeypatch) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)  # created before the process group exists
    real = World.distributed
    monkeypatch.setattr(World, "distributed", staticmethod(
        lambda rank=None, world_size=None: (1, 2) if rank is None else real(rank, world_size)))
    data = pickle.dumps(ds)  # what a spawned DataLoader worker receives, after init_process_group
    monkeypatch.setattr(World, "distributed", staticmethod(real))  # the worker has no process group
    clone = pickle.loads(data)
    assert clone.batches_per_rank() == len(DeltaIterableDataset(table, rank=1, world_size=2, **KW))
    assert World.detect(*clone._dist()) == World(1, 2)


def _child_filesystem_is_new(snap, inherited_id: int, out) -> None:
    out.put(id(snap.filesystem()) != inherited_id)


def test_filesystem_is_created_once_per_process(synthetic_table) -> None:
    table, _ = synthetic_table
    snap = snapshot(table)
    fs = snap.filesystem()
    assert snap.filesystem() is fs
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_filesystem_is_new, args=(snap, id(fs), out))
    child.start()
    child.join(30)
    assert out.get(timeout=5) is True  # a forked worker never reuses the parent's (S3) client


def test_s3_table_through_forked_workers(tmp_path, source_factory, s3_endpoint) -> None:
    src = source_factory("s3src", rows={"train": 200, "test": 10})
    ingest(src.root, "s3://lake/loader_workers", storage_options=s3_endpoint, row_group_rows=64)
    ds = DeltaIterableDataset("s3://lake/loader_workers", storage_options=s3_endpoint, split="train",
                              batch_size=32, seed=1, shuffle_buffer=100)
    main = sorted(i for b in ds for i in b["id"].tolist())  # the parent reads first (client, threads)
    assert main == list(range(200))
    loader = DataLoader(ds, batch_size=None, num_workers=2, timeout=30)  # a hang fails in 30 s
    ids = torch.cat([b["id"] for b in loader]).tolist()
    assert sorted(ids) == list(range(200))


def test_a_state_from_another_order_or_lane_count_is_refused(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    ds.set_epoch(1)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    assert state["order"] == "lanes-4" and state["lanes"] == 48 and state["batches_consumed"] == 1
    old = {k: v for k, v in state.items() if k != "order"}  # saved by a build before the order was named
    with pytest.raises(LoaderConfigError, match=r"epoch order of an earlier build.*'lanes-4'.*next epoch"):
        DeltaIterableDataset(table, **KW).load_state_dict(old)
    for earlier in ("lanes-1", "lanes-2", "lanes-3"):  # lanes-2: tail over the phases; lanes-3: unshuffled
        with pytest.raises(LoaderConfigError, match=f"epoch order '{earlier}'"):
            DeltaIterableDataset(table, **KW).load_state_dict({**state, "order": earlier})
    with pytest.raises(LoaderConfigError, match="state has lanes 48, this dataset 24"):
        DeltaIterableDataset(table, **KW, lanes=24).load_state_dict(state)
    resumed = DeltaIterableDataset(table, **KW)
    resumed.load_state_dict({"epoch": 1, "batches_consumed": 1})  # a minimal state names no order: accepted
    resumed.set_epoch(1)
    assert ids_of(resumed) == epoch_ids(table, 1)[1:]
    again = DeltaIterableDataset(table, **KW)
    again.load_state_dict(state)
    again.set_epoch(1)
    assert ids_of(again) == epoch_ids(table, 1)[1:]


@pytest.mark.parametrize("consumed", [-1, -5, 2.5, "3", True])
def test_a_state_with_a_bad_count_is_refused(synthetic_table, consumed: object) -> None:
    """A negative ``batches_consumed`` indexed from the end: the rank yielded more batches than
    ``len(ds)`` (14 of 13 with -1), repeating rows and breaking the equal count DDP relies on."""
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    with pytest.raises(LoaderConfigError, match=r"cannot resume: state 'batches_consumed' must be an integer >= 0"):
        ds.load_state_dict({"epoch": 1, "batches_consumed": consumed})
    with pytest.raises(LoaderConfigError, match=r"state 'epoch' must be an integer >= 0"):
        ds.load_state_dict({"epoch": -1, "batches_consumed": 0})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_state_with_more_batches_than_the_epoch_is_refused(synthetic_table, workers: int) -> None:
    """``batches_consumed=10**6`` yielded nothing, silently: a state of another selection or batch size."""
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    assert len(ds) == 13
    ds.load_state_dict({"epoch": 1, "batches_consumed": 13})  # the whole epoch consumed: nothing left, fine
    ds.set_epoch(1)
    assert ids_of(ds.dataloader(num_workers=workers)) == []
    ds.load_state_dict({"epoch": 1, "batches_consumed": 10**6})
    with pytest.raises(LoaderConfigError, match=r"cannot resume epoch 1: the state has 1000000 batches consumed, "
                                                r"but this rank has 13 per epoch"):
        ids_of(ds.dataloader(num_workers=workers))


@pytest.mark.parametrize("epoch", [-1, 1.5, True, 2**70, "2"])
def test_set_epoch_takes_non_negative_integers(synthetic_table, epoch: object) -> None:
    """``set_epoch(-1)`` failed later inside numpy (in a worker traceback), 1.5 and True became 1."""
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)
    with pytest.raises(LoaderConfigError, match=r"set_epoch: epoch must be an integer >= 0"):
        ds.set_epoch(epoch)  # type: ignore[arg-type]
    ds.set_epoch(3)
    assert ds.epoch == 3
