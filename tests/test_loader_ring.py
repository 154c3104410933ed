"""RingDataLoader: batches from workers through a shared-memory ring, identical to the plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from idxlake.loaders import DeltaIterableDataset, RingDataLoader
from idxlake.loaders.ring import Token
from idxlake.schemas import LoaderConfigError

KW = dict(split="train", batch_size=24, seed=4, shuffle_buffer=100)


def ids_of(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def assert_plain_epoch(table: str, epoch: int, got: list, images: np.ndarray) -> None:
    """``got`` holds the plain DataLoader's batches of ``epoch``, with the source's pixels."""
    ref = DeltaIterableDataset(table, **KW)
    ref.set_epoch(epoch)
    assert ids_of(got) == ids_of(DataLoader(ref, batch_size=None))
    for b in got:
        assert not isinstance(b, Token) and np.array_equal(b["image"][:, 0].numpy(), images[b["id"].numpy()])


@pytest.mark.parametrize(("persistent", "group_rows", "workers"), [(False, 1024, 2), (True, 1024, 2),
                                                                    (False, 24, 2), (True, 72, 3)])
def test_ring_gives_the_plain_batches_as_fresh_tensors(synthetic_table, monkeypatch, persistent: bool,
                                                       group_rows: int, workers: int) -> None:
    from idxlake.loaders import ring

    monkeypatch.setattr(ring, "GROUP_ROWS", group_rows)  # batches per token: 42, 1, 3 (forked workers see it)
    table, source = synthetic_table
    images, _ = source.arrays["train"]
    ds = DeltaIterableDataset(table, **KW)
    loader = RingDataLoader(ds, num_workers=workers, persistent_workers=persistent, warm_passes="workers")
    for epoch in range(2):
        ds.set_epoch(epoch)
        kept = list(loader)  # held: later slots must not overwrite earlier batches
        ref = DeltaIterableDataset(table, **KW)
        ref.set_epoch(epoch)
        assert ids_of(kept) == ids_of(DataLoader(ref, batch_size=None))
        for b in kept:
            assert not isinstance(b, Token) and set(b) == {"image", "label", "id"}
            assert np.array_equal(b["image"][:, 0].numpy(), images[b["id"].numpy()])
    assert ds._ring is None  # only set while the workers start


@pytest.mark.parametrize("transform", [False, True])
def test_workers_gather_batches_straight_into_their_slots(synthetic_table, monkeypatch, transform: bool) -> None:
    """Without a transform every column of every batch is gathered in place (no batch tensor, no copy into
    the slot), on the streaming pass and on the warm (cached) one; a transformed batch is copied in."""
    from idxlake.loaders import slotwriter

    counts = torch.zeros(2, dtype=torch.int64).share_memory_()  # [columns gathered in place, columns sent]
    real = slotwriter.SlotWriter.send

    def counting(self, batches):  # forked workers inherit the patch and write into the shared counts
        for token in real(self, batches):
            counts[1] += sum(len(rows) for rows in token.places)
            yield token
        counts[0] += self.direct

    monkeypatch.setattr(slotwriter.SlotWriter, "send", counting)
    table, source = synthetic_table
    images, _ = source.arrays["train"]
    ds = DeltaIterableDataset(table, transform=(lambda b: b) if transform else None, **KW)
    loader = RingDataLoader(ds, num_workers=2, persistent_workers=True, warm_passes="workers")
    for epoch in range(2):  # the first pass streams (and fills the cache), the second is warm
        ds.set_epoch(epoch)
        got = list(loader)
        assert_plain_epoch(table, epoch, got, images)
        assert int(counts[1]) == 3 * len(got) * (epoch + 1)
    assert int(counts[0]) == (0 if transform else int(counts[1]))


def test_ring_carries_what_a_transform_adds_and_float_images(synthetic_table) -> None:
    table, _ = synthetic_table

    def extra(batch):
        batch["double"] = batch["label"].to(torch.float64) * 2
        batch["label"] = batch["label"][:1]  # a different shape than the slot: sent the usual way
        return batch

    ds = DeltaIterableDataset(table, transform=extra, image_dtype="float32", **KW)
    got = list(RingDataLoader(ds, num_workers=2))
    plain = list(DataLoader(DeltaIterableDataset(table, transform=extra, image_dtype="float32", **KW),
                            batch_size=None))
    assert len(got) == len(plain)
    for a, b in zip(got, plain, strict=True):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert a["image"].dtype == torch.float32


@pytest.mark.slow
def test_ring_with_spawned_workers_and_zero_workers(synthetic_table) -> None:
    table, _ = synthetic_table
    ref = ids_of(DeltaIterableDataset(table, **KW))
    assert ids_of(RingDataLoader(DeltaIterableDataset(table, **KW), num_workers=2,
                                 multiprocessing_context="spawn")) == ref
    assert ids_of(RingDataLoader(DeltaIterableDataset(table, **KW))) == ref


def test_ring_refuses_batching_options(synthetic_table) -> None:
    table, _ = synthetic_table
    with pytest.raises(LoaderConfigError, match="batch_size is not an option"):
        RingDataLoader(DeltaIterableDataset(table, **KW), batch_size=4)


def test_factory_gives_the_ring_to_the_streaming_dataset_with_workers(synthetic_table) -> None:
    table, source = synthetic_table
    images, _ = source.arrays["train"]
    ds = DeltaIterableDataset(table, **KW)
    loader = ds.dataloader(num_workers=2, prefetch_factor=3)
    assert isinstance(loader, RingDataLoader) and loader.batch_size is None and loader.persistent_workers
    assert loader.prefetch_factor == 3 and all(len(w) == 7 for w in loader._ring.slots)  # prefetch_factor + 2 + LEASES
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert_plain_epoch(table, epoch, list(loader), images)
    direct = ds.dataloader()  # no workers: the dataset's own iterator, the same batches
    assert isinstance(direct, RingDataLoader) and direct.num_workers == 0
    assert_plain_epoch(table, 1, list(direct), images)
    ds.set_epoch(0)
    custom = ds.dataloader(num_workers=1, collate_fn=lambda b: b)  # a custom collate: the plain DataLoader
    assert not isinstance(custom, RingDataLoader) and ids_of(custom) == ids_of(DeltaIterableDataset(table, **KW))


def test_ring_pins_what_it_copies_out_only_where_torch_pins(synthetic_table, monkeypatch) -> None:
    from idxlake.loaders import ring

    table, _ = synthetic_table
    seen: list[bool] = []
    real = ring.receive

    def spy(r, item, *, pin=False):
        seen.append(pin)
        return real(r, item, pin=pin)

    monkeypatch.setattr(ring, "receive", spy)
    got = list(RingDataLoader(DeltaIterableDataset(table, **KW), num_workers=1, pin_memory=True))
    assert 0 < len(seen) < len(got) and set(seen) == {torch.accelerator.is_available()}  # one per token
    if torch.accelerator.is_available():
        assert all(v.is_pinned() for b in got for v in b.values())
    direct = list(RingDataLoader(DeltaIterableDataset(table, **KW), pin_memory=True))  # 0 workers: pinned here
    assert ids_of(direct) == ids_of(got)
    assert all(v.is_pinned() == torch.accelerator.is_available() for b in direct for v in b.values())


def test_leased_slots_stay_intact_while_anything_views_them(synthetic_table, monkeypatch) -> None:
    """Batches are views of the worker's slot (leased) until the last view is freed: a slice kept from
    an early batch keeps its slot; a loop keeping every batch gets copies beyond LEASES slots."""
    from idxlake.loaders import ring

    monkeypatch.setattr(ring, "GROUP_ROWS", 24)  # 1 batch per token: 7 tokens a worker, more than its 6 slots
    table, source = synthetic_table
    images, _ = source.arrays["train"]
    ds = DeltaIterableDataset(table, **KW)
    loader = RingDataLoader(ds, num_workers=2, persistent_workers=True, warm_passes="workers")
    for epoch in range(2):
        ds.set_epoch(epoch)
        it = iter(loader)
        first = next(it)
        kept_ids, kept_pixels = first["id"][:5].clone(), first["image"][:5, 0]  # a view into the first slot
        assert loader._ring.leased[0] >= 1  # the first token came as views of its slot
        del first
        for batch in it:  # dropped at once: their slots come back, are written again
            assert np.array_equal(batch["image"][:, 0].numpy(), images[batch["id"].numpy()])
        assert np.array_equal(kept_pixels.numpy(), images[kept_ids.numpy()])  # never overwritten
        assert loader._ring.leased[0] >= 1  # the slice still holds its lease
        del kept_pixels, batch
        import gc

        gc.collect()
        assert loader._ring.leased == [0, 0] and not loader._ring.state.any()  # all free once unviewed


def test_abandoned_passes_give_their_slots_back(synthetic_table, monkeypatch) -> None:
    """Breaking out of epochs (torch drops the persistent workers' outstanding tokens) leaks no slot:
    more abandoned passes than a worker has slots, then whole epochs, quickly and correctly."""
    from idxlake.loaders import ring

    monkeypatch.setattr(ring, "GROUP_ROWS", 24)  # 1 batch per token
    table, source = synthetic_table
    images, _ = source.arrays["train"]
    ds = DeltaIterableDataset(table, **KW)
    loader = RingDataLoader(ds, num_workers=2, persistent_workers=True, timeout=20, warm_passes="workers")
    slots = len(loader._ring.slots[0])
    for epoch in range(slots + 2):
        ds.set_epoch(epoch)
        it = iter(loader)
        next(it)  # the others are left in flight
        del it
    for epoch in (100, 101):
        ds.set_epoch(epoch)
        assert_plain_epoch(table, epoch, list(loader), images)


@pytest.mark.parametrize("group_rows", [24, None])  # one batch per token; the default (several per token)
def test_two_live_iterators_of_one_loader_do_not_share_slots(tmp_path, source_factory, monkeypatch,
                                                             group_rows: int | None) -> None:
    """A plain DataLoader with non-persistent workers allows two live iterators; the second one's workers
    get a spare ring instead of overwriting the slots the first one has not handed on yet."""
    from idxlake import ingest
    from idxlake.loaders import ring

    if group_rows:
        monkeypatch.setattr(ring, "GROUP_ROWS", group_rows)
    src = source_factory("two_live", rows={"train": 6000, "test": 10}, seed=5)
    table = str(tmp_path / "two_live")
    ingest(src.root, table, row_group_rows=500)
    images, _ = src.arrays["train"]
    kw = {**KW, "batch_size": 24 if group_rows else 256}
    ds = DeltaIterableDataset(table, **kw)
    loader = RingDataLoader(ds, num_workers=2, warm_passes="workers")
    a = iter(loader)
    got_a = [next(a), next(a)]  # both workers of the first iterator have started their pass over epoch 0
    ds.set_epoch(1)
    got_b = list(iter(loader))
    got_a += list(a)

    def reference(epoch: int) -> list[list[int]]:
        ref = DeltaIterableDataset(table, **kw)
        ref.set_epoch(epoch)
        return ids_of(DataLoader(ref, batch_size=None))

    assert ids_of(got_a) == reference(0) and ids_of(got_b) == reference(1)
    for b in got_a + got_b:
        assert np.array_equal(b["image"][:, 0].numpy(), images[b["id"].numpy()])
    assert len(loader._spares) == 1  # made for the second live iterator, reused from now on
    assert ids_of(iter(loader)) == reference(1) and len(loader._spares) == 1


def test_the_pin_thread_pins_what_travels_outside_the_slot(synthetic_table, monkeypatch) -> None:
    """``pin_memory=True`` on an accelerator: torch's pin thread pins a token's extras (keys a transform adds,
    misfits) as it pins a plain batch; the slot columns are pinned by ``receive``. No accelerator here:
    ``Tensor.pin_memory`` / ``is_pinned`` are stood in for by a registry of pinned storages."""
    from torch.utils.data._utils.pin_memory import pin_memory as pin_thread_step

    from idxlake.loaders import ring

    pinned: set[int] = set()

    def fake_pin(self, *args, **kwargs):
        out = self.clone()
        pinned.add(out.data_ptr())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a, **k: self.data_ptr() in pinned)
    table, _ = synthetic_table
    r = ring.make_ring(DeltaIterableDataset(table, **KW), 1, 2)
    token = Token(0, 0, [[]], [{"double": torch.arange(24, dtype=torch.float64), "names": ["a"]}])
    through = pin_thread_step(token)  # what the DataLoader's pin thread does with each item
    assert isinstance(through, Token) and through.places == token.places
    _, (batch,) = ring.receive(r, through, pin=True)
    assert batch["double"].is_pinned() and torch.equal(batch["double"], torch.arange(24, dtype=torch.float64))
    assert batch["names"] == ["a"]


def test_large_records_travel_in_fewer_batches_a_token(synthetic_table, monkeypatch) -> None:
    from idxlake.loaders import ring

    assert ring.slot_count(2) == 6 and ring.slot_count(3) == 7
    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, **KW)  # 24 rows a batch
    assert ring.group_size(ds) == 4096 // 24
    row = sum(int(np.prod(shape[1:])) * torch.empty(0, dtype=dtype).element_size()
              for shape, dtype in ring.slot_layout(ds).values())
    monkeypatch.setattr(ring, "GROUP_BYTES", 100 * row)  # records "too large" for 4096 rows a slot
    assert ring.group_size(ds) == 100 // 24
    monkeypatch.setattr(ring, "GROUP_BYTES", row)  # not even one batch fits: one batch a token
    assert ring.group_size(ds) == 1


def test_a_worker_without_a_free_slot_waits_as_long_as_the_loop_pauses() -> None:
    """torch may give one worker more tasks than it has slots at the end of a pass; if the loop then
    pauses (an evaluation, a checkpoint), the worker waits for a slot instead of failing."""
    import threading
    import time

    from idxlake.loaders import ring, slotwriter

    flags = np.full(3, ring.SENT, dtype=np.uint8)  # every slot on its way to the main process
    threading.Timer(0.3, lambda: flags.__setitem__(1, ring.FREE)).start()  # the loop goes on after 0.3 s
    start = time.monotonic()
    assert slotwriter._acquire(flags, 2) == 1 and flags[1] == ring.SENT
    assert time.monotonic() - start >= 0.25


SLOW = True  # read by the transform below; each forked worker keeps the value it had at its fork


def _fail_or_dawdle(batch):
    """The first loader's workers: worker 0 fails, the others write their slots slowly."""
    import time

    from torch.utils.data import get_worker_info

    if SLOW:
        if get_worker_info().id == 0:
            time.sleep(0.3)  # the other workers are mid-token when this fails
            raise ValueError("worker 0 fails its first batch")
        time.sleep(0.05)
    return batch


def test_an_iterator_after_a_failed_one_does_not_share_its_workers_ring(tmp_path, source_factory,
                                                                       monkeypatch) -> None:
    """An iterator ended by a worker's error: torch's iterator (and its other workers, still filling the
    tokens they owe) lives on in the exception's traceback; the next iterator gets a spare ring."""
    global SLOW
    import time

    from idxlake import ingest
    from idxlake.loaders import ring

    monkeypatch.setattr(ring, "GROUP_ROWS", 240)  # 10 batches a token
    src = source_factory("failed", rows={"train": 6000, "test": 10}, seed=5)
    table = str(tmp_path / "failed")
    ingest(src.root, table, row_group_rows=500)
    images, _ = src.arrays["train"]
    ds = DeltaIterableDataset(table, transform=_fail_or_dawdle, **KW)
    loader = RingDataLoader(ds, num_workers=2)
    errors = []
    SLOW = True
    try:
        with pytest.raises(ValueError, match="worker 0 fails") as caught:
            list(loader)
        errors.append(caught.value)  # a loop that logs the failure and goes on with the next epoch
        SLOW = False  # the next iterator's workers (forked from now on) are fast and never fail
        ds.set_epoch(1)
        got = list(loader)
        time.sleep(1.0)  # the first iterator's worker 1 finishes its outstanding tokens meanwhile
        ref = DeltaIterableDataset(table, **KW)
        ref.set_epoch(1)
        assert ids_of(got) == ids_of(DataLoader(ref, batch_size=None))
        for b in got:
            assert np.array_equal(b["image"][:, 0].numpy(), images[b["id"].numpy()])
        assert len(loader._spares) == 1
    finally:
        SLOW = True


def test_received_batches_are_slot_views_that_allow_in_place_ops_with_grad() -> None:
    """``receive``: each batch is exactly its rows, a view of the slot (no copy), on any layout
    (end to end, gapped, offset); and, like a plain ``DataLoader``'s fresh tensors, it takes an
    in-place op whose operand requires grad (``torch.split``'s multi-output views refuse that)."""
    from idxlake.loaders.ring import FREE, Ring, receive

    for spans in ([(0, 4), (4, 4), (8, 2)], [(0, 3), (5, 2)], [(2, 3), (5, 5)]):
        column = torch.arange(10, dtype=torch.float32).share_memory_()
        ring = Ring([[{"image": column}]], torch.zeros((1, 1), dtype=torch.uint8).share_memory_(), [0])
        _, batches = receive(ring, Token(0, 0, [[("image", at, n)] for at, n in spans], [{} for _ in spans]))
        assert [b["image"].tolist() for b in batches] == [list(range(at, at + n)) for at, n in spans]
        assert all(b["image"].untyped_storage().data_ptr() == column.untyped_storage().data_ptr() for b in batches)
        batches[0]["image"].mul_(torch.ones(1, requires_grad=True))  # raises on a torch.split output
        assert batches[0]["image"].requires_grad
        del batches
        import gc

        gc.collect()
        assert int(ring.state[0, 0]) == FREE and ring.leased == [0]  # the lease ends with the views


def test_a_token_naming_a_column_the_slot_lacks_leaves_no_lease() -> None:
    """``receive`` looks every column up before it leases the slot: a bad token raises with the slot
    still free and nothing counted as lent."""
    from idxlake.loaders.ring import FREE, Ring, receive

    ring = Ring([[{"label": torch.zeros(4, dtype=torch.int64).share_memory_()}]],
                torch.zeros((1, 1), dtype=torch.uint8).share_memory_(), [0])
    with pytest.raises(KeyError):
        receive(ring, Token(0, 0, [[("label", 0, 2), ("image", 0, 2)]], [{}]))
    assert int(ring.state[0, 0]) == FREE and ring.leased == [0]


def test_ring_flags_set_through_numpy_views_are_the_shared_state() -> None:
    """The main side sets slot flags through ``Ring.views()`` (numpy, ~100x cheaper than tensor
    indexing): they must be the shared ``state`` tensor the workers read, and not travel in a pickle."""
    import pickle

    from idxlake.loaders.ring import LEASED, Ring

    ring = Ring([[{"label": torch.zeros(4, dtype=torch.int64).share_memory_()}]],
                torch.zeros((1, 1), dtype=torch.uint8).share_memory_(), [0])
    flags, arrays = ring.views()
    flags[0, 0] = LEASED
    assert int(ring.state[0, 0]) == LEASED
    arrays[0][0]["label"][1] = 7
    assert ring.slots[0][0]["label"].tolist() == [0, 7, 0, 0]
    assert pickle.loads(pickle.dumps(ring))._views is None


def test_a_ring_is_reused_only_once_its_workers_have_exited(synthetic_table) -> None:
    """torch marks an iterator shut down before it joins its workers (and a collection in another
    thread may be joining them): a ring whose workers are alive is not handed to a new iterator."""

    class Worker:
        def __init__(self, running: bool) -> None:
            self.running = running

        def is_alive(self) -> bool:
            return self.running

    loader = RingDataLoader(DeltaIterableDataset(synthetic_table[0], split="train", batch_size=16), num_workers=2)
    own = loader._ring
    loader._users[id(own)] = [Worker(False), Worker(True)]  # one still joining
    spare = loader._idle_ring()
    assert spare is not own and loader._spares == [spare]
    loader._users[id(own)][1].running = False
    assert loader._idle_ring() is own
