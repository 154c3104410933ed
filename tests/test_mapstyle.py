"""DeltaImageDataset and the drop-in MNIST family: torchvision's map-style contract over a pinned table."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MNIST_TEST_COUNTS, MNIST_TRAIN_COUNTS, SyntheticSource, make_source
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from vision_transforms import Compose, Normalize, ToTensor

import idxlake
from idxlake import EMNIST, KMNIST, MNIST, DeltaImageDataset, FashionMNIST, LoaderConfigError, ingest


def test_mnist_first_record_is_the_bundled_files_first(mnist_table: str, mnist_dir: Path) -> None:
    raw = gzip.decompress((mnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    ds = MNIST(mnist_table, train=True)
    image, target = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "L" and image.size == (28, 28)
    assert np.array_equal(np.array(image), np.frombuffer(raw, np.uint8, 784, offset=16).reshape(28, 28))
    assert target == 5 == labels[8] and isinstance(target, int)
    last = np.frombuffer(raw, np.uint8, 784, offset=16 + 59999 * 784).reshape(28, 28)
    assert np.array_equal(np.array(ds[59999][0]), last) and ds[59999][1] == labels[8 + 59999]


def test_mnist_lengths_counts_and_classes(mnist_table: str) -> None:
    train, test = MNIST(mnist_table, train=True), MNIST(mnist_table, train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.targets.dtype == torch.int64
    assert torch.bincount(train.targets).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.targets).tolist() == MNIST_TEST_COUNTS
    assert train.data.dtype == torch.uint8 and train.data.shape == (60000, 28, 28) and train.data.is_contiguous()
    assert list(train.meta.class_names) == list("0123456789")  # the table's names; torchvision's on MNIST
    assert train.classes == ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                             "7 - seven", "8 - eight", "9 - nine"]
    assert train.class_to_idx["3 - three"] == 3 and len(train.class_to_idx) == 10
    assert DeltaImageDataset(mnist_table).classes == list("0123456789")  # any table: its own names
    assert train.nbytes == 60000 * 784 and train.train and not test.train


def test_image_types_and_transforms(synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, src = synthetic_table
    images, labels = src.arrays["train"]
    as_tensor = DeltaImageDataset(table, image_type="tensor")
    as_numpy = DeltaImageDataset(table, image_type="numpy")
    x, y = as_tensor[7]
    assert x.dtype == torch.uint8 and x.shape == (1, 28, 28) and torch.equal(x[0], torch.from_numpy(images[7]))
    x[0, 0, 0] += 1  # a fresh copy: the shared buffer is untouched
    assert torch.equal(as_tensor.data[7], torch.from_numpy(images[7]))
    a, y = as_numpy[7]
    assert a.dtype == np.uint8 and np.array_equal(a, images[7]) and y == labels[7]
    seen = []
    ds = DeltaImageDataset(table, transform=Compose([ToTensor(), Normalize((0.5,), (0.25,))]),
                           target_transform=lambda t: seen.append(t) or t * 10)
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.allclose(x[0], (torch.from_numpy(images[3]).float() / 255 - 0.5) / 0.25)
    assert y == int(labels[3]) * 10 and seen == [int(labels[3])]
    assert len(ds) == 300 and ds.ids.tolist() == list(range(300))


def test_splits_order_and_filter(synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, src = synthetic_table
    both = DeltaImageDataset(table, split=["train", "test"], image_type="numpy")  # not the files' order
    assert len(both) == 400
    assert np.array_equal(both.data[:300].numpy(), src.arrays["train"][0])
    assert np.array_equal(both.data[300:].numpy(), src.arrays["test"][0])
    assert both.ids.tolist() == list(range(300)) + list(range(100))
    picked = DeltaImageDataset(table, filter="label < 3 AND id >= 100", image_type="numpy")
    keep = [i for i in range(100, 300) if i % 10 < 3]
    assert picked.ids.tolist() == keep and picked.targets.tolist() == [i % 10 for i in keep]
    assert np.array_equal(picked.data.numpy(), src.arrays["train"][0][keep])


def test_rows_are_in_id_order_across_files_and_versions_pinned(tmp_path: Path,
                                                                  synthetic_source: SyntheticSource) -> None:
    table = str(tmp_path / "t")
    more = make_source(tmp_path / "more", seed=1)
    ingest(synthetic_source.root, table, row_group_rows=64)
    ingest(more.root, table, mode="append", row_group_rows=64)
    ds = DeltaImageDataset(table, image_type="numpy")
    assert len(ds.snapshot.files_of(["train"])) == 2
    assert ds.ids.tolist() == list(range(600))
    expected = np.concatenate([synthetic_source.arrays["train"][0], more.arrays["train"][0]])
    assert np.array_equal(ds.data.numpy(), expected)
    assert len(DeltaImageDataset(table, version=0)) == 300 and DeltaImageDataset(table, version=0).version == 0


def test_max_bytes_refusal_names_the_size_and_the_streaming_dataset(synthetic_table: tuple[str, SyntheticSource],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from idxlake.loaders import mapstyle

    table, _ = synthetic_table
    with monkeypatch.context() as m:
        m.setattr(mapstyle, "load_buffer", lambda plan: pytest.fail("decoded before the budget check"))
        with pytest.raises(LoaderConfigError, match=r"300 images of 784 bytes are 229\.7 KiB \(235,200 bytes\), "
                                                    r"above max_bytes=100,000.*DeltaIterableDataset"):
            DeltaImageDataset(table, max_bytes=100_000)
    assert len(DeltaImageDataset(table, max_bytes=235_200)) == 300
    with pytest.raises(LoaderConfigError, match="image_type must be one of"):
        DeltaImageDataset(table, image_type="jpeg")  # type: ignore[arg-type]


def test_pil_needs_uint8_records(source_factory, tmp_path: Path) -> None:
    src = source_factory("f", rows={"train": 20}, dtype="float32")
    table = str(tmp_path / "f32")
    ingest(src.root, table)
    with pytest.raises(LoaderConfigError, match=r"image_type='pil' needs uint8 .* holds 28x28 float32"):
        DeltaImageDataset(table)
    x, _ = DeltaImageDataset(table, image_type="tensor")[4]
    assert x.dtype == torch.float32 and torch.equal(x[0], torch.from_numpy(src.arrays["train"][0][4]))


def test_rgb_records_become_rgb_images(source_factory, tmp_path: Path) -> None:
    src = source_factory("rgb", rows={"train": 12}, shape=(8, 6, 3))
    table = str(tmp_path / "rgb")
    ingest(src.root, table)
    image, _ = DeltaImageDataset(table)[5]
    assert image.mode == "RGB" and image.size == (6, 8) and np.array_equal(np.array(image), src.arrays["train"][0][5])
    x, _ = DeltaImageDataset(table, image_type="tensor")[5]
    assert x.shape == (8, 6, 3) and torch.equal(x, torch.from_numpy(src.arrays["train"][0][5]))


def test_pickles_by_value_and_keeps_working(synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, src = synthetic_table
    ds = DeltaImageDataset(table, image_type="numpy")
    back = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(back[11][0], src.arrays["train"][0][11]) and back[11][1] == 1
    assert torch.equal(back.targets, ds.targets) and back.data.data_ptr() != ds.data.data_ptr()


def test_classes_fallback_for_a_table_without_names(tmp_path: Path) -> None:
    src = make_source(tmp_path / "s", rows={"train": 30}, classes=4)
    table = str(tmp_path / "t")
    ingest(src.root, table, dataset="generic")
    ds = DeltaImageDataset(table)
    assert ds.meta.class_names == () and ds.classes == ["0", "1", "2", "3"]
    assert ds.class_to_idx == {"0": 0, "1": 1, "2": 2, "3": 3}


def test_dataloader_shuffle_and_distributed_sampler(synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    ds = DeltaImageDataset(table, transform=ToTensor())
    torch.manual_seed(0)
    batches = list(DataLoader(ds, batch_size=64, shuffle=True))
    labels = torch.cat([y for _, y in batches])
    assert batches[0][0].shape == (64, 1, 28, 28) and sorted(labels.tolist()) == sorted(ds.targets.tolist())
    assert labels.tolist() != ds.targets.tolist()  # shuffled
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        seen.append(list(sampler))
        assert sum(len(y) for _, y in DataLoader(ds, batch_size=32, sampler=sampler)) == 150
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(300))


def test_named_datasets_check_what_the_table_holds(mnist_table: str, tmp_path: Path) -> None:
    with pytest.raises(LoaderConfigError, match=r"idxlake.FashionMNIST needs a table of 'fashion-mnist' "
                                                r"\(Fashion-MNIST\), but this table holds 'mnist' \(MNIST\); "
                                                r"read it with idxlake.MNIST\(table\), or ingest"):
        FashionMNIST(mnist_table)
    with pytest.raises(LoaderConfigError, match="holds 'mnist'"):
        EMNIST(mnist_table, split="digits")
    with pytest.raises(TypeError, match=r"idxlake.MNIST\(\) takes the table as its only positional argument.*"
                                        r"by keyword, e.g. idxlake.MNIST\(table, train=False\)"):
        MNIST(mnist_table, False)  # torchvision's positional train
    with pytest.raises(TypeError, match=r"idxlake.EMNIST\(\) takes the table .*split='digits'"):
        EMNIST(mnist_table, "digits")
    with pytest.raises(TypeError, match=r"idxlake.EMNIST\(\) needs split=, one of \['byclass'"):
        EMNIST(mnist_table)
    with pytest.raises(LoaderConfigError, match=r"EMNIST split must be one of \['byclass'"):
        EMNIST(mnist_table, split="letterz")
    for name, cls in (("fashion-mnist", FashionMNIST), ("kmnist", KMNIST)):
        src = make_source(tmp_path / name, rows={"train": 40, "test": 10})
        ingest(src.root, str(tmp_path / f"t-{name}"), dataset=name)
        ds = cls(str(tmp_path / f"t-{name}"), train=False)
        assert len(ds) == 10 and ds.classes == list(idxlake.get_dataset(name).class_names)
        assert np.array_equal(np.array(ds[2][0]), src.arrays["test"][0][2])
        with pytest.raises(LoaderConfigError, match=f"holds '{name}'.*read it with idxlake.{cls.__name__}"):
            MNIST(str(tmp_path / f"t-{name}"))


def test_emnist_is_upright_and_checks_the_variant(tmp_path: Path) -> None:
    src = make_source(tmp_path / "e", rows={"train": 30, "test": 10}, prefix="emnist-digits-")
    table = str(tmp_path / "emnist")
    ingest(src.root, table)
    ds = EMNIST(table, split="digits", train=True)
    assert ds.split == "digits" and len(ds) == 30
    assert np.array_equal(np.array(ds[5][0]), src.arrays["train"][0][5].T)  # stored upright by ingest
    with pytest.raises(LoaderConfigError, match=r"holds 'emnist-digits'.*idxlake.EMNIST\(table, split='digits'\), or"):
        EMNIST(table, split="letters")
