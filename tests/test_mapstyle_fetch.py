"""The map-style dataset's per-sample path: batched fetch (``__getitems__``), ``image_type="float32"``,
the PIL images mapped over the buffer, and the buffer's views surviving the move to shared memory."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SyntheticSource
from PIL import Image
from torch.utils.data import DataLoader
from vision_transforms import Compose, Normalize, ToTensor

from idxlake import DeltaImageDataset, ingest
from idxlake.loaders.bufferimage import BufferImage


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Image.Image):
        return a.mode == b.mode and a.size == b.size and np.array_equal(np.array(a), np.array(b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("image_type", ["pil", "numpy", "tensor", "float32"])
def test_getitems_is_getitem_per_index(synthetic_table: tuple[str, SyntheticSource], image_type: str) -> None:
    table, _ = synthetic_table
    ds = DeltaImageDataset(table, image_type=image_type)  # type: ignore[arg-type]
    indices = [5, 0, 299, 5, -1, 17]
    batch = ds.__getitems__(indices)
    assert len(batch) == len(indices)
    for (image, target), i in zip(batch, indices, strict=True):
        one, expected = ds[i]
        assert _same(image, one) and target == expected and type(target) is int
    assert ds.__getitems__([]) == []
    with pytest.raises(IndexError):
        ds.__getitems__([0, 300])
    images, labels = synthetic_table[1].arrays["train"]
    last, target = ds[-1]
    want = images[299].astype(np.float32) / 255 if image_type == "float32" else images[299]
    assert np.array_equal(np.asarray(last).reshape(want.shape), want) and target == int(labels[299])
    for bad in (300, -301):
        with pytest.raises(IndexError):
            ds[bad]
    assert _same(ds[np.int64(7)][0], ds[7][0]) and _same(ds[torch.tensor(7)][0], ds[7][0])
    with pytest.raises(TypeError, match=r"indices must be integers, not slice; ds.data\[a:b\]"):
        ds[0:3]  # type: ignore[index]


def test_getitems_transforms_each_sample_with_its_own_randomness(synthetic_table: tuple[str, SyntheticSource]
                                                                  ) -> None:
    table, src = synthetic_table
    images, labels = src.arrays["train"]
    calls: list[int] = []

    def noisy(image: Image.Image) -> torch.Tensor:  # random on every call, as torchvision's random transforms
        calls.append(1)
        return torch.from_numpy(np.array(image)).float() + torch.rand(())

    ds = DeltaImageDataset(table, transform=noisy, target_transform=lambda t: t + 100)
    batch = ds.__getitems__(list(range(64)))
    assert len(calls) == 64
    noise = [float((x - torch.from_numpy(images[i]).float()).mean()) for i, (x, _) in enumerate(batch)]
    assert len({round(n, 6) for n in noise}) == 64  # 64 independent draws
    assert [t for _, t in batch] == [int(v) + 100 for v in labels[:64]]


def test_dataloader_fetches_a_batch_in_one_call(synthetic_table: tuple[str, SyntheticSource],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    table, src = synthetic_table
    ds = DeltaImageDataset(table, transform=Compose([ToTensor(), Normalize((0.5,), (0.25,))]))
    calls: list[int] = []
    real = ds.__getitems__
    monkeypatch.setattr(ds, "__getitems__", lambda idx: calls.append(len(idx)) or real(idx))
    seen = []
    for x, y in DataLoader(ds, batch_size=64, shuffle=True):
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        seen.extend(y.tolist())
    assert calls == [64, 64, 64, 64, 44]
    assert sorted(seen) == sorted(src.arrays["train"][1].tolist())


def test_float32_images_are_the_seeds_values(synthetic_table: tuple[str, SyntheticSource],
                                             source_factory, tmp_path: Path) -> None:
    table, src = synthetic_table
    images = src.arrays["train"][0]
    seed = images.astype(np.float32) / 255  # the seed's float32 copy of everything
    ds = DeltaImageDataset(table, image_type="float32")
    x, _ = ds[9]
    assert x.dtype == np.float32 and x.shape == (28, 28) and np.array_equal(x, seed[9])
    batch = ds.__getitems__([3, 250, 3])
    assert all(np.array_equal(b, seed[i]) for (b, _), i in zip(batch, [3, 250, 3], strict=True))
    batch[0][0][0, 0] = 7.0  # samples are fresh: neither the buffer nor the other samples change
    assert np.array_equal(batch[2][0], seed[3]) and np.array_equal(ds.data[3].numpy(), images[3])
    other = source_factory("i16", rows={"train": 10}, dtype="int16")  # not uint8: converted, not scaled
    ingest(other.root, str(tmp_path / "i16"))
    y, _ = DeltaImageDataset(str(tmp_path / "i16"), image_type="float32")[4]
    assert y.dtype == np.float32 and np.array_equal(y, other.arrays["train"][0][4].astype(np.float32))


def test_pil_images_map_the_buffer_read_only(synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, src = synthetic_table
    images = src.arrays["train"][0]
    ds = DeltaImageDataset(table)
    image, _ = ds[8]
    assert isinstance(image, Image.Image) and isinstance(image, BufferImage) and image.mode == "L"
    assert np.array_equal(np.array(image), images[8]) and np.array(image).flags.writeable
    view = np.asarray(image)  # no copy: a read-only view of the dataset's row
    start = ds.data.data_ptr()
    assert not view.flags.writeable and start <= view.__array_interface__["data"][0] < start + ds.nbytes
    assert np.array_equal(np.array(image.crop((2, 3, 10, 9))), images[8][3:9, 2:10])
    image.putpixel((0, 0), 255 - int(images[8][0, 0]))  # PIL copies first: the buffer is untouched
    assert np.array(image)[0, 0] == 255 - images[8][0, 0] and np.array_equal(ds.data[8].numpy(), images[8])
    other, _ = ds[9]
    other.frombytes(bytes(784))  # PIL's own frombytes would write into the mapped buffer
    assert not np.array(other).any() and np.array_equal(ds.data[9].numpy(), images[9])
    back = pickle.loads(pickle.dumps(ds[10][0]))
    assert back.mode == "L" and np.array_equal(np.array(back), images[10])


def test_views_follow_the_buffer_into_shared_memory(synthetic_table: tuple[str, SyntheticSource]) -> None:
    """Pickled for spawned workers, the buffer goes to shared memory: new samples view it, and the views
    made before (a sample, ``np.asarray`` of one, ``ds.data.numpy()``) still read valid memory."""
    table, src = synthetic_table
    images, labels = src.arrays["train"]
    ds = DeltaImageDataset(table)
    sample, view_before, data_before = ds[11][0], np.asarray(ds[12][0]), ds.data.numpy()
    targets_before = ds.targets.numpy()
    ForkingPickler(io.BytesIO()).dump(ds)  # what a DataLoader does for spawned workers
    churn = [np.full(ds.nbytes, 0xAB, dtype=np.uint8) for _ in range(8)]  # would reuse freed memory
    assert np.array_equal(np.asarray(sample), images[11]) and np.array_equal(view_before, images[12])
    assert np.array_equal(data_before, images) and np.array_equal(targets_before, labels)
    del churn
    assert ds.data.is_shared() and ds.targets.is_shared()
    start = ds.data.data_ptr()  # the buffer moved: the samples read the new memory, not the freed one
    view = np.asarray(ds[12][0])
    assert start <= view.__array_interface__["data"][0] < start + ds.nbytes
    assert np.array_equal(view, images[12]) and ds[12][1] == int(src.arrays["train"][1][12])


def test_rgba_maps_and_rgb_copies(source_factory, tmp_path: Path) -> None:
    for channels, mode in ((4, "RGBA"), (3, "RGB")):
        src = source_factory(mode, rows={"train": 6}, shape=(5, 7, channels))
        ingest(src.root, str(tmp_path / mode))
        ds = DeltaImageDataset(str(tmp_path / mode))
        image, _ = ds.__getitems__([4])[0]
        assert image.mode == mode and image.size == (7, 5) and isinstance(image, BufferImage) == (mode == "RGBA")
        assert np.array_equal(np.array(image), src.arrays["train"][0][4])
        image.putpixel((0, 0), (1, 2, 3, 4)[:channels])
        assert np.array(image)[0, 0].tolist() == [1, 2, 3, 4][:channels]
        assert np.array_equal(ds.data[4].numpy(), src.arrays["train"][0][4])


def test_the_public_constructor_fallback_builds_the_same_images(synthetic_table: tuple[str, SyntheticSource],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from idxlake.loaders import bufferimage

    table, src = synthetic_table
    images = src.arrays["train"][0]
    assert bufferimage._direct_works()  # this Pillow: the direct construction is checked and used
    ds = DeltaImageDataset(table)
    direct = ds[21][0]
    monkeypatch.setattr(bufferimage, "_make", bufferimage._make_frombuffer)  # what another Pillow gets
    image = ds[21][0]
    assert isinstance(image, BufferImage) and _same(image, direct) and image.readonly
    assert not np.asarray(image).flags.writeable
    image.putpixel((1, 1), 0 if images[21][1, 1] else 9)
    assert np.array(image)[1, 1] != images[21][1, 1] and np.array_equal(ds.data[21].numpy(), images[21])
