"""Multi-process behaviour: training in workers, the shared image buffer, spawned workers, per-sample
randomness across workers and ranks, and the misuse warning carried back from a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from proc_memory import buffer_mapping, smaps
from torch.utils.data import DataLoader, DistributedSampler
from vision_transforms import Compose, Normalize, RandomCrop, ToTensor, crop_offsets, offsets

from idxlake import MNIST, DeltaImageDataset, DeltaIterableDataset
from idxlake.loaders import misuse

pytestmark = pytest.mark.slow


def _worker_pids(iterator) -> list[int]:
    return [w.pid for w in iterator._workers]


def _read_all(loader: DataLoader) -> tuple[list[int], int]:
    it = iter(loader)
    rows = sum(len(y) for _, y in it)
    return _worker_pids(it), rows


def test_seed_style_loop_trains_to_98_percent_in_one_epoch(mnist_table: str) -> None:
    tf = Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])
    train, test = MNIST(mnist_table, train=True, transform=tf), MNIST(mnist_table, train=False, transform=tf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 workers feed one compute thread: no oversubscription of the cores
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(512, 10))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        seen = 0
        for x, y in DataLoader(train, batch_size=64, shuffle=True, num_workers=2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            seen += len(y)
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in DataLoader(test, batch_size=1000))
    finally:
        torch.set_num_threads(threads)
    assert seen == 60000
    assert correct / len(test) >= 0.98, correct / len(test)


MEMORY_PROBE = """
import sys, idxlake
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
import pyarrow as pa
idxlake.MNIST(sys.argv[1], train=False)[0]      # imports and first-use costs, on the small split
pa.default_memory_pool().release_unused()
before = status("VmRSS")
ds = idxlake.MNIST(sys.argv[1], train=True)
print(ds.nbytes, status("VmHWM") - before, status("VmRSS") - before)
"""


def test_memory_is_the_image_bytes(mnist_table: str) -> None:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mnist_table], capture_output=True, text=True, check=True)
    nbytes, peak, held = map(int, out.stdout.split())
    assert nbytes == 47_040_000
    # held: the buffer; peak: the buffer and one row group being decoded (8192 rows): no float32 copy, no 2nd buffer
    assert 0.9 * nbytes < held < 1.2 * nbytes and peak < 1.6 * nbytes, (nbytes, peak, held)


FORK_PROBE = """
import json, os, sys
from proc_memory import buffer_mapping, total
from torch.utils.data import DataLoader
import idxlake
ds = idxlake.MNIST(sys.argv[1], train=True, image_type="tensor")
it = iter(DataLoader(ds, batch_size=256, shuffle=True, num_workers=2, persistent_workers=True,
                     multiprocessing_context="fork"))
rows = sum(len(y) for _, y in it)
out = [dict(buffer_mapping(w.pid, address=ds.data.data_ptr()), uss=total(w.pid, "Private_Clean")
            + total(w.pid, "Private_Dirty")) for w in it._workers]
print(json.dumps({"rows": rows, "nbytes": ds.nbytes, "workers": out}))
"""


def test_forked_workers_share_the_buffer(mnist_table: str) -> None:
    # In a fresh process: the pytest process's own heap churn after the fork would count as the
    # workers' private memory (pages the parent rewrites become the child's alone).
    out = subprocess.run([sys.executable, "-c", FORK_PROBE, mnist_table], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    nbytes = result["nbytes"]
    assert result["rows"] == 60000 and len(result["workers"]) == 2
    for region in result["workers"]:
        private = region["Private_Clean"] + region["Private_Dirty"]
        assert region["Rss"] > nbytes // 2, region  # the worker did read (about half of) the buffer...
        assert private < nbytes // 20, region       # ...through pages it shares with the parent
        assert region["uss"] < nbytes, region       # and holds no copy of it elsewhere (measured: 13 MB in all)


def test_spawned_workers_receive_the_buffer_through_shared_memory(mnist_table: str) -> None:
    ds = MNIST(mnist_table, train=False, image_type="tensor", transform=RandomCrop(28, 4))
    loader = DataLoader(ds, batch_size=500, shuffle=True, num_workers=2, persistent_workers=True,
                        multiprocessing_context="spawn")
    pids, rows = _read_all(loader)
    assert rows == 10000
    address = ds.data.data_ptr()  # pickling moved the buffer into shared memory, in place
    path = next(m["path"] for m in smaps(os.getpid()) if m["start"] <= address < m["end"])
    assert "/dev/shm" in path or "torch" in path, path
    for pid in pids:
        region = buffer_mapping(pid, path=path)
        assert region["Rss"] > ds.nbytes // 2 and region["Private_Clean"] + region["Private_Dirty"] == 0, region
    del loader


def test_per_sample_randomness_in_workers_for_both_datasets(ramp_table: str) -> None:
    torch.manual_seed(0)
    mapstyle = DeltaImageDataset(ramp_table, image_type="tensor", transform=RandomCrop(28, 4))
    streaming = DeltaIterableDataset(ramp_table, split="train", batch_size=64, sample_transform=RandomCrop(28, 4))
    for loader in (mapstyle.dataloader(num_workers=2), streaming.dataloader(num_workers=2)):
        batches = [b[0] if isinstance(b, list) else b["image"] for b in loader]
        assert len(batches) == 4 and all(len(offsets(images)) >= 8 for images in batches)
        assert crop_offsets(batches[0]) != crop_offsets(batches[1])  # the two workers' RNGs differ


def _crops(loader: DataLoader) -> list[tuple[int, int]]:
    return [offset for batch in loader for offset in crop_offsets(batch["image"])]


def test_ranks_draw_different_augmentations_through_the_factory(ramp_table: str) -> None:
    def rank_ds(rank: int) -> DeltaIterableDataset:
        return DeltaIterableDataset(ramp_table, split="train", batch_size=32, rank=rank, world_size=2,
                                    sample_transform=RandomCrop(28, 4))

    plain, factory = [], []
    for rank in (0, 1):  # every DDP rank seeds torch alike
        torch.manual_seed(0)
        plain.append(_crops(DataLoader(rank_ds(rank), batch_size=None, num_workers=1)))
        torch.manual_seed(0)
        factory.append(_crops(rank_ds(rank).dataloader(num_workers=1)))
    assert plain[0] == plain[1]  # what the worker_init_fn fixes: identical augmentations on both ranks
    assert factory[0] != factory[1] and len(factory[0]) == 128


def test_map_style_ranks_of_a_distributed_sampler_draw_different_augmentations(ramp_table: str) -> None:
    """The rank mixed into the workers' seeds comes from the ``DistributedSampler`` (no process group here)."""
    ds = DeltaImageDataset(ramp_table, image_type="tensor", transform=RandomCrop(28, 4))
    plain, factory = [], []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        torch.manual_seed(0)
        plain.append([o for x, _ in DataLoader(ds, sampler=sampler, batch_size=32, num_workers=1)
                      for o in crop_offsets(x)])
        torch.manual_seed(0)
        factory.append([o for x, _ in ds.dataloader(sampler=sampler, num_workers=1) for o in crop_offsets(x)])
    assert plain[0] == plain[1]  # without the rank: identical augmentations on both ranks
    assert factory[0] != factory[1] and len(factory[0]) == len(ds) // 2


def test_misuse_warning_arrives_from_workers_once(ramp_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(misuse, "_warned", False)
    ds = DeltaIterableDataset(ramp_table, split="train", batch_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shapes = [b["image"].shape for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert shapes == [(2, 16, 1, 28, 28)] * 8
    assert len([w for w in caught if "stacks 2 of them" in str(w.message)]) == 1
