"""DeltaIterableDataset on real tables: sharding, determinism, resume, projection, filters, pinning, dtypes."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from torch.utils.data import DataLoader

from idxlake import ingest
from idxlake.loaders import DeltaIterableDataset
from idxlake.schemas import snapshot


def batches(ds: DeltaIterableDataset, num_workers: int = 0, **loader_kwargs) -> list[dict[str, torch.Tensor]]:
    """All batches of one pass, through a DataLoader (fork workers when ``num_workers > 0``)."""
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, **loader_kwargs)
    return list(loader)


def ids_of(bs: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [b["id"].tolist() for b in bs]


def flat(lists: list[list[int]]) -> list[int]:
    return [i for part in lists for i in part]


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_exactly_once_and_equal_batches_per_rank(synthetic_table, world_size: int, num_workers: int) -> None:
    table, source = synthetic_table
    n = len(source.arrays["train"][1])
    per_rank = []
    for rank in range(world_size):
        ds = DeltaIterableDataset(table, split="train", batch_size=32, shuffle_buffer=100, seed=7,
                                  rank=rank, world_size=world_size)
        got = batches(ds, num_workers)
        assert len(got) == len(ds)
        per_rank.append(got)
    assert len({len(r) for r in per_rank}) == 1, [len(r) for r in per_rank]
    seen = Counter(i for r in per_rank for b in r for i in b["id"].tolist())
    assert set(seen) == set(range(n))
    extra = sum(seen.values()) - n
    assert extra < world_size  # padding only, and the fewest possible
    assert sum(c - 1 for c in seen.values()) == extra


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_gives_full_equal_batches(synthetic_table, world_size: int) -> None:
    table, _ = synthetic_table
    per_rank = [batches(DeltaIterableDataset(table, split="train", batch_size=32, drop_last=True,
                                             rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(r) for r in per_rank}) == 1
    assert len(per_rank[0]) == 300 // (32 * world_size)
    ids = [i for r in per_rank for b in r for i in b["id"].tolist()]
    assert all(len(b["id"]) == 32 for r in per_rank for b in r)
    assert len(ids) == len(set(ids))


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_global_order_independent_of_workers_and_ranks(synthetic_table) -> None:
    table, _ = synthetic_table
    kw = dict(split="train", shuffle_buffer=100, seed=3)
    ds = DeltaIterableDataset(table, batch_size=32, **kw)
    ds.set_epoch(2)
    reference = ids_of(batches(ds))
    for workers in (1, 2, 3):  # a rank's batch sequence does not depend on its workers
        ds = DeltaIterableDataset(table, batch_size=32, **kw)
        ds.set_epoch(2)
        assert ids_of(batches(ds, workers)) == reference, workers
    # two ranks of half the batch: the same rows in every global step
    ranks = []
    for rank in range(2):
        ds = DeltaIterableDataset(table, rank=rank, world_size=2, batch_size=16, **kw)
        ds.set_epoch(2)
        ranks.append(ids_of(batches(ds, 2)))
    steps = [sorted(a + b) for a, b in zip(*ranks, strict=True)]
    assert steps[:len(reference) - 1] == [sorted(b) for b in reference[:-1]]
    assert sorted(flat(ranks[0] + ranks[1])) == sorted(flat(reference))


def test_deterministic_and_set_epoch_changes_order(synthetic_table) -> None:
    table, _ = synthetic_table
    a = DeltaIterableDataset(table, split="train", batch_size=50, seed=11)
    b = DeltaIterableDataset(table, split="train", batch_size=50, seed=11)
    first = ids_of(batches(a))
    assert first == ids_of(batches(b))
    assert first == ids_of(batches(a))  # same epoch again: same batches
    a.set_epoch(1)
    second = ids_of(batches(a))
    assert second != first and sorted(flat(second)) == sorted(flat(first))
    c = DeltaIterableDataset(table, split="train", batch_size=50, seed=12)
    assert ids_of(batches(c)) != first
    plain = DeltaIterableDataset(table, split="train", batch_size=50, shuffle=False)
    assert flat(ids_of(batches(plain))) == list(range(300))


@pytest.mark.parametrize("name, value", [("seed", 12), ("batch_size", 10), ("shuffle", False), ("lanes", 24),
                                         ("shuffle_buffer", 0), ("drop_last", True), ("phases", 1),
                                         ("image_dtype", "float32"), ("plan", None)])
def test_order_options_cannot_change_once_built(synthetic_table, name: str, value: object) -> None:
    """``ds.seed = 12`` between epochs applied only from the pass after next (the next was planned
    ahead with the old seed) and never in persistent workers: now refused, the dataset unchanged."""
    from idxlake.schemas import LoaderConfigError

    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", batch_size=50, seed=11)
    before = ids_of(batches(ds))
    with pytest.raises(LoaderConfigError, match=f"{name} cannot change once the dataset is built.*"
                                                f"build a new dataset with {name}="):
        setattr(ds, name, value)
    with pytest.raises(LoaderConfigError, match=f"{name} cannot be removed"):
        delattr(ds, name)  # nor removed, which let the next assignment through
    assert ids_of(batches(ds)) == before
    ds.transform = None  # the other attributes stay settable
    ds.set_epoch(1)
    assert ids_of(batches(ds)) != before


def test_rows_are_mixed_across_units(synthetic_table) -> None:
    table, _ = synthetic_table  # row groups of 64 rows
    ds = DeltaIterableDataset(table, split="train", batch_size=64, shuffle_buffer=128)
    groups = [len({i // 64 for i in b}) for b in ids_of(batches(ds))]
    assert max(groups) >= 2


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")
def test_set_epoch_reaches_persistent_workers(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", batch_size=40, seed=5)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, pin_memory=True)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append(ids_of(list(loader)))
    reference = []
    for epoch in range(2):
        ref = DeltaIterableDataset(table, split="train", batch_size=40, seed=5)
        ref.set_epoch(epoch)
        reference.append(ids_of(batches(ref)))
    assert seen == reference and seen[0] != seen[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_with_batches_consumed(synthetic_table, num_workers: int) -> None:
    table, _ = synthetic_table
    kw = dict(split="train", batch_size=16, seed=4, shuffle_buffer=100)
    ds = DeltaIterableDataset(table, **kw)
    ds.set_epoch(3)
    full = ids_of(batches(ds, num_workers))
    for k in (0, 1, 5, len(full) - 1, len(full)):
        resumed = DeltaIterableDataset(table, **kw)
        resumed.load_state_dict({"epoch": 3, "batches_consumed": k})
        resumed.set_epoch(3)  # the resume applies to a pass over its epoch; it never sets the epoch
        assert ids_of(batches(resumed, num_workers)) == full[k:], k


def test_state_dict_round_trip_in_process(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", batch_size=16, seed=9)
    ds.set_epoch(1)
    it = iter(ds)
    head = [next(it)["id"].tolist() for _ in range(7)]
    state = ds.state_dict()
    assert state["epoch"] == 1 and state["batches_consumed"] == 7 and state["version"] == ds.version
    rest = [b["id"].tolist() for b in it]
    again = DeltaIterableDataset(table, split="train", batch_size=16, seed=9)
    again.load_state_dict(state)
    again.set_epoch(1)
    assert again.state_dict()["batches_consumed"] == 7
    assert ids_of(list(again)) == rest
    assert sorted(flat(head + rest)) == list(range(300))
    # after the resumed epoch, the next epoch is whole again
    again.set_epoch(2)
    assert len(list(again)) == len(ds)


def test_resume_is_refused_for_another_seed_or_version(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", seed=1)
    with pytest.raises(ValueError, match="seed 2"):
        ds.load_state_dict({"epoch": 0, "seed": 2, "batches_consumed": 1})
    with pytest.raises(ValueError, match="version 99"):
        ds.load_state_dict({"epoch": 0, "version": 99, "batches_consumed": 1})


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")
def test_stateful_dataloader_resume_with_workers(synthetic_table) -> None:
    import torchdata.stateful_dataloader as sdl
    table, _ = synthetic_table
    kw = dict(split="train", batch_size=16, seed=2, shuffle_buffer=100)
    full = ids_of(batches(DeltaIterableDataset(table, **kw), 2))
    for workers in (0, 2):
        loader = sdl.StatefulDataLoader(DeltaIterableDataset(table, **kw), batch_size=None, num_workers=workers)
        it = iter(loader)
        head = [next(it)["id"].tolist() for _ in range(5)]
        state = loader.state_dict()
        del it
        resumed = sdl.StatefulDataLoader(DeltaIterableDataset(table, **kw), batch_size=None, num_workers=workers)
        resumed.load_state_dict(state)
        assert head + ids_of(list(resumed)) == full, workers


def test_projection_and_output_types(synthetic_table) -> None:
    table, source = synthetic_table
    images, labels = source.arrays["test"]
    ds = DeltaIterableDataset(table, split="test", shuffle=False, batch_size=64)
    first = next(iter(ds))
    assert set(first) == {"image", "label", "id"}
    assert first["image"].dtype == torch.uint8 and first["image"].shape == (64, 1, 28, 28)
    assert first["label"].dtype == torch.int64 and first["id"].dtype == torch.int64
    assert torch.equal(first["image"][:, 0], torch.from_numpy(images[:64]))
    assert first["label"].tolist() == labels[:64].astype(int).tolist()
    only = DeltaIterableDataset(table, split="test", columns=("label",), batch_size=100)
    got = next(iter(only))
    assert set(got) == {"label"} and sorted(got["label"].tolist()) == sorted(labels.astype(int).tolist())
    assert only.plan.columns == ("label",)


def test_other_record_shapes_keep_their_shape(tmp_path, source_factory) -> None:
    src = source_factory("vec", rows={"train": 50}, shape=(3, 4, 5))
    table = str(tmp_path / "vec_table")
    ingest(src.root, table, row_group_rows=16)
    batch = next(iter(DeltaIterableDataset(table, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 3, 4, 5)
    assert torch.equal(batch["image"], torch.from_numpy(src.arrays["train"][0][:8]))


@pytest.mark.parametrize(("flt", "expect"), [
    ("label < 3", lambda i: i % 10 < 3),
    ("id >= 100 AND label IN (1, 2)", lambda i: i >= 100 and i % 10 in (1, 2)),
    (pads.field("id") < 70, lambda i: i < 70),
    ("split = 'test' OR id < 5", lambda i: i < 5),
])
def test_filters_select_exact_rows_and_prune(synthetic_table, flt, expect) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", filter=flt, batch_size=32, rank=0, world_size=1)
    want = [i for i in range(300) if expect(i)]
    got = sorted(i for b in ids_of(batches(ds)) for i in b)
    assert got == want
    assert ds.num_rows == len(want)
    if flt is not None and "id < 70" in str(flt):
        assert len(ds.plan.units) == 2  # row groups 2..4 pruned by id statistics
    for b in batches(ds):
        assert all(expect(i) for i in b["id"].tolist())
        assert (b["label"] == b["id"] % 10).all()


def test_filters_with_two_ranks_and_workers(synthetic_table) -> None:
    table, _ = synthetic_table
    per_rank = [batches(DeltaIterableDataset(table, filter="label IN (3, 4)", batch_size=8, rank=r,
                                             world_size=2), 2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    ids = sorted(i for r in per_rank for b in r for i in b["id"].tolist())
    # both splits: 60 train + 20 test rows with label 3 or 4 (ids restart per split)
    assert len(ids) == 80


def test_version_is_pinned_while_another_ingest_commits(tmp_path, source_factory) -> None:
    first = source_factory("a", rows={"train": 200, "test": 10}, seed=1)
    table = str(tmp_path / "pinned")
    ingest(first.root, table, row_group_rows=64)
    ds = DeltaIterableDataset(table, split="train", batch_size=64, rank=0, world_size=1)
    pinned = ds.version
    more = source_factory("b", rows={"train": 100, "test": 10}, seed=2)
    ingest(more.root, table, mode="append", row_group_rows=64)
    assert snapshot(table).version > pinned
    ids = sorted(i for b in ids_of(batches(ds, 2)) for i in b)
    assert ids == list(range(200)) and ds.version == pinned
    assert DeltaIterableDataset(table, split="train").num_rows == 300
    old = DeltaIterableDataset(table, split="train", version=pinned)
    assert old.num_rows == 200


def test_missing_file_of_pinned_version_is_a_clear_error(tmp_path, source_factory) -> None:
    src = source_factory("m", rows={"train": 100}, seed=3)
    table = str(tmp_path / "vacuumed")
    ingest(src.root, table, row_group_rows=32)
    ds = DeltaIterableDataset(table, split="train")
    victim = ds.plan.files[0]
    import os

    os.remove(ds.snapshot.file_path(victim))
    with pytest.raises(FileNotFoundError, match=rf"{victim.uri}.*version {ds.version}"):
        list(ds)
    with pytest.raises(FileNotFoundError, match="pinned version"):
        DeltaIterableDataset(table, split="train")


def test_float32_is_normalised_with_the_table_statistics(mnist_table) -> None:
    ds = DeltaIterableDataset(mnist_table, split="train", image_dtype="float32", batch_size=4096,
                              columns=("image",))
    total, total_sq, count = 0.0, 0.0, 0
    for b in ds:
        x = b["image"].double()
        assert b["image"].dtype == torch.float32 and b["image"].shape[1:] == (1, 28, 28)
        total, total_sq, count = total + x.sum().item(), total_sq + (x * x).sum().item(), count + x.numel()
    mean = total / count
    std = math.sqrt(total_sq / count - mean**2)
    assert abs(mean) < 1e-4 and abs(std - 1) < 1e-4
    stats = ds.meta.splits["train"].stats
    assert ds.meta.normalization() == (stats.mean, stats.std)
    assert abs(stats.mean - 0.1307) < 1e-3 and abs(stats.std - 0.3081) < 1e-3
    raw = next(iter(DeltaIterableDataset(mnist_table, split="test", shuffle=False, batch_size=8)))
    norm = next(iter(DeltaIterableDataset(mnist_table, split="test", shuffle=False, batch_size=8,
                                          image_dtype="float32")))
    expected = (raw["image"].float() / 255 - stats.mean) / stats.std
    assert torch.allclose(norm["image"], expected, atol=1e-5)


def test_mnist_epoch_covers_every_row_once_with_the_cache(mnist_table) -> None:
    ds = DeltaIterableDataset(mnist_table, split="train", batch_size=1024, cache_bytes=1 << 30)
    for epoch in range(2):
        ds.set_epoch(epoch)
        ids = torch.cat([b["id"] for b in ds])
        assert len(ids) == 60000 and len(ids.unique()) == 60000
    assert ds._cache is not None and ds._cache.used == 60000
    small = DeltaIterableDataset(mnist_table, split="train", batch_size=1024, cache_bytes=20 << 20)
    for epoch in range(2):
        small.set_epoch(epoch)
        labels = np.bincount(torch.cat([b["label"] for b in small]).numpy())
        assert labels.sum() == 60000 and labels.min() > 5000


def test_transform_runs_on_each_batch(synthetic_table) -> None:
    table, _ = synthetic_table

    def flip(batch):
        batch["image"] = batch["image"].flip(-1)
        batch["double"] = batch["label"] * 2
        return batch

    plain = next(iter(DeltaIterableDataset(table, split="test", shuffle=False, batch_size=10)))
    got = next(iter(DeltaIterableDataset(table, split="test", shuffle=False, batch_size=10, transform=flip)))
    assert torch.equal(got["image"], plain["image"].flip(-1)) and torch.equal(got["double"], plain["label"] * 2)


@pytest.mark.slow
def test_spawned_workers_get_the_same_batches(synthetic_table) -> None:
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, split="train", batch_size=32, seed=8, rank=1, world_size=2)
    ds.set_epoch(4)
    reference = ids_of(batches(ds))
    assert ids_of(batches(ds, 2, multiprocessing_context="spawn")) == reference


@pytest.mark.parametrize("shuffle_buffer", [100, 150, 1000])
def test_successive_passes_match_fresh_datasets(synthetic_table, shuffle_buffer: int) -> None:
    table, _ = synthetic_table  # windows: 3, 2 or 1 per epoch (buffers reused across passes)
    kw = dict(split="train", batch_size=24, seed=6, shuffle_buffer=shuffle_buffer)
    ds = DeltaIterableDataset(table, **kw)
    seen = []
    for epoch in (0, 1, 2, 2, 4, 5):
        ds.set_epoch(epoch)
        if epoch == 4:  # stop early: the next pass must not be disturbed
            it = iter(ds)
            next(it)
            del it
        seen.append(ids_of(list(ds)))
    for epoch, got in zip((0, 1, 2, 2, 4, 5), seen, strict=True):
        fresh = DeltaIterableDataset(table, **kw)
        fresh.set_epoch(epoch)
        assert got == ids_of(list(fresh)), epoch


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20, 1 << 30])
@pytest.mark.parametrize("shuffle_buffer", [100, 150])
def test_images_stay_with_their_rows_across_epochs(synthetic_table, cache_bytes: int, shuffle_buffer: int) -> None:
    table, source = synthetic_table
    images, labels = source.arrays["train"]
    ds = DeltaIterableDataset(table, split="train", batch_size=40, shuffle_buffer=shuffle_buffer,
                              cache_bytes=cache_bytes)  # 1 MiB caches only some row groups
    for epoch in range(4):
        ds.set_epoch(epoch)
        kept = list(ds)  # hold every batch: later windows must not overwrite earlier batches
        for b in kept:
            ids = b["id"].numpy()
            assert np.array_equal(b["image"][:, 0].numpy(), images[ids])
            assert np.array_equal(b["label"].numpy(), labels[ids].astype(np.int64))
        assert sorted(np.concatenate([b["id"].numpy() for b in kept]).tolist()) == list(range(300))
