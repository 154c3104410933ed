"""DeviceLoader on CPU (no GPU here): same batches, normalised on the device, one batch ahead."""

from __future__ import annotations

import torch

from idxlake.loaders import DeltaIterableDataset, DeviceLoader
from idxlake.loaders.decode import Normalizer


def test_device_loader_on_cpu_normalises_there(synthetic_table) -> None:
    table, _ = synthetic_table
    kw = dict(split="train", batch_size=40, seed=2)
    ds = DeltaIterableDataset(table, **kw)
    host = list(DeltaIterableDataset(table, **kw))
    floats = list(DeltaIterableDataset(table, image_dtype="float32", **kw))
    dev = DeviceLoader(ds, "cpu", normalize=Normalizer(ds.meta))
    got = list(dev)
    assert len(got) == len(host) == len(dev)
    for a, h, f in zip(got, host, floats, strict=True):
        assert a["image"].device.type == "cpu" and a["image"].dtype == torch.float32
        assert torch.allclose(a["image"], f["image"]) and torch.equal(a["id"], h["id"])
    raw = list(DeviceLoader(ds, "cpu"))
    assert all(torch.equal(a["image"], h["image"]) and a["image"].dtype == torch.uint8
               for a, h in zip(raw, host, strict=True))


def test_device_loader_fetches_one_batch_ahead(synthetic_table) -> None:
    table, _ = synthetic_table
    pulled = []

    class Counting:
        def __iter__(self):
            for b in DeltaIterableDataset(table, split="train", batch_size=100):
                pulled.append(len(pulled))
                yield b

    it = iter(DeviceLoader(Counting(), "cpu"))
    next(it)
    assert len(pulled) == 2  # the next batch is already on its way while the first is used
    assert len(list(it)) == 2 and len(pulled) == 3
