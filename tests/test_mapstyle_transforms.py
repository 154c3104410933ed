"""Per-sample transforms (both datasets), the DataLoader factory, worker seeding and the misuse warning."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from vision_transforms import RAMP, Compose, PILToTensor, RandomCrop, offsets

from idxlake import DeltaImageDataset, DeltaIterableDataset, LoaderConfigError
from idxlake.loaders import misuse
from idxlake.loaders.factory import worker_context
from idxlake.loaders.samples import seed_worker, worker_seed


def test_sample_transform_draws_per_image_where_a_batch_transform_draws_once(ramp_table: str) -> None:
    torch.manual_seed(0)
    seen_dtypes = []

    def crop(image: torch.Tensor) -> torch.Tensor:
        seen_dtypes.append((image.dtype, tuple(image.shape)))
        return RandomCrop(28, 4)(image)

    ds = DeltaIterableDataset(ramp_table, split="train", batch_size=64, sample_transform=crop)
    batch = next(iter(ds))
    assert batch["image"].shape == (64, 1, 28, 28) and batch["label"].shape == (64,)
    assert len(offsets(batch["image"])) >= 8
    assert seen_dtypes[0] == (torch.uint8, (1, 28, 28)) and len(seen_dtypes) == 64
    batchwise = DeltaIterableDataset(ramp_table, split="train", batch_size=64,
                                     transform=lambda b: {**b, "image": RandomCrop(28, 4)(b["image"])})
    assert len(offsets(next(iter(batchwise))["image"])) == 1  # the pitfall sample_transform avoids


def test_sample_transform_runs_before_the_float32_normalisation(ramp_table: str) -> None:
    ds = DeltaIterableDataset(ramp_table, split="test", batch_size=16, image_dtype="float32",
                              sample_transform=lambda image: torch.flip(image, dims=[-1]))
    batch = next(iter(ds))
    mean, std = ds.meta.normalization()
    expected = (torch.from_numpy(RAMP[:, ::-1].copy()).float() / 255 - mean) / std
    assert batch["image"].dtype == torch.float32 and torch.allclose(batch["image"][3, 0], expected, atol=1e-5)


def test_sample_transform_must_return_tensors_of_one_shape(ramp_table: str) -> None:
    sizes = iter([28, 20] * 64)
    ds = DeltaIterableDataset(ramp_table, split="test", batch_size=8,
                              sample_transform=lambda image: image[..., :next(sizes), :])
    with pytest.raises(LoaderConfigError, match=r"returned shape \(1, 20, 28\) for image 1 .* \(1, 28, 28\) for "
                                                r"image 0; it must return tensors of one shape"):
        next(iter(ds))
    arrays = DeltaIterableDataset(ramp_table, split="test", batch_size=8, sample_transform=lambda image: image.numpy())
    with pytest.raises(LoaderConfigError, match=r"returned ndarray for image 0 of the batch; it must return a tensor"):
        next(iter(arrays))


def test_map_style_random_crop_differs_within_a_batch(ramp_table: str) -> None:
    torch.manual_seed(0)
    for ds in (DeltaImageDataset(ramp_table, image_type="tensor", transform=RandomCrop(28, 4)),
               DeltaImageDataset(ramp_table, transform=Compose([PILToTensor(), RandomCrop(28, 4)]))):
        images, _ = next(iter(DataLoader(ds, batch_size=64, shuffle=True)))
        assert images.shape == (64, 1, 28, 28) and len(offsets(images)) >= 8


@pytest.mark.parametrize(("uri", "method"), [
    ("/data/mnist", "fork"), ("file:///data/mnist", "fork"), ("s3://bucket/mnist", "fork"),
    ("az://container/mnist", "forkserver"), ("abfss://c@acct.dfs.core.windows.net/mnist", "forkserver"),
    ("gs://bucket/mnist", "fork"), ("dbfs:/mnt/mnist", "fork"),
])
def test_worker_context_by_storage(uri: str, method: str) -> None:
    assert worker_context(uri) == method


def test_streaming_dataloader_is_configured(ramp_table: str) -> None:
    ds = DeltaIterableDataset(ramp_table, split="train", batch_size=64, rank=1, world_size=2)
    loader = ds.dataloader(num_workers=2, prefetch_factor=4)
    assert loader.batch_size is None and loader.persistent_workers and loader.num_workers == 2
    assert loader.multiprocessing_context.get_start_method() == "fork" and loader.prefetch_factor == 4
    assert isinstance(loader.worker_init_fn, functools.partial) and loader.worker_init_fn.keywords["rank"] == 1
    plain = ds.dataloader()
    assert not plain.persistent_workers and plain.multiprocessing_context is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shapes = [b["image"].shape for b in plain]
    assert shapes == [(64, 1, 28, 28)] * 2
    assert ds.dataloader(batch_size=None).batch_size is None
    with pytest.raises(LoaderConfigError, match=r"instead of DataLoader\(batch_size=...\) use batch_size=... on "
                                                r"DeltaIterableDataset.*instead of DataLoader\(shuffle=...\)"):
        ds.dataloader(batch_size=4, shuffle=True)
    with pytest.raises(LoaderConfigError, match="num_workers must be an integer >= 0"):
        ds.dataloader(num_workers=-1)


def test_map_style_dataloader_defaults_and_overrides(ramp_table: str) -> None:
    ds = DeltaImageDataset(ramp_table, image_type="tensor")
    loader = ds.dataloader(num_workers=2, multiprocessing_context="spawn")
    assert loader.batch_size == 64 and isinstance(loader.sampler, RandomSampler) and loader.persistent_workers
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert isinstance(ds.dataloader(batch_size=16, shuffle=False).sampler, SequentialSampler)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0)
    dist = ds.dataloader(sampler=sampler)
    assert dist.sampler is sampler and dist.batch_size == 64
    assert [len(y) for _, y in dist] == [64, 64]


def test_seed_worker_separates_ranks_and_chains_the_callers_init() -> None:
    assert worker_seed(12345, 0) != worker_seed(12345, 1) != worker_seed(12346, 1)
    assert worker_seed(12345, 0) == worker_seed(12345, 0) and worker_seed(2**63, 3) < 2**64
    draws, calls = [], []
    for rank in (0, 1, 0):
        torch.manual_seed(7)
        seed_worker(0, rank=rank, user_init=calls.append)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2]) and calls == [0, 0, 0]


def test_default_batching_over_the_streaming_dataset_warns_once(ramp_table: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(misuse, "_warned", False)
    ds = DeltaIterableDataset(ramp_table, split="train", batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(DataLoader(ds))
    hits = [w for w in caught if "automatic batching" in str(w.message)]
    assert len(hits) == 1 and hits[0].category is UserWarning
    assert "stacks 1 of them into tensors of shape [1, batch, ...]. Pass batch_size=None" in str(hits[0].message)
    assert len(batches) == 8 and batches[0]["image"].shape == (1, 32, 1, 28, 28)  # behaviour unchanged
    monkeypatch.setattr(misuse, "_warned", False)
    with pytest.warns(UserWarning, match=r"stacks 4 of them into tensors of shape \[4, batch, ...\]"):
        assert next(iter(DataLoader(ds, batch_size=4)))["label"].shape == (4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = next(iter(DataLoader(ds, batch_size=None)))
    assert isinstance(batch, dict) and batch["image"].shape == (32, 1, 28, 28)
