"""The peers' loaders for ``bench_peers.py``, each run in its own interpreter (its own venv).

This file imports nothing of idxlake: it runs under the peers' interpreters (``benchmarks/peers.sh``
builds them), which cannot hold idxlake's dependencies (Petastorm needs pyarrow < 15 and numpy < 2;
Mosaic Streaming pins transformers < 5, which breaks HF datasets 5). Each peer is given the train
split's Parquet files of the same Delta table version and yields what idxlake yields: shuffled
batches of ``batch_size`` rows, ``{"image": uint8 [B, 1, 28, 28], "label": int64 [B]}`` as torch
tensors, through its own documented PyTorch path. Bytes become tensors as cheaply as each peer's
output allows (an Arrow binary array: a zero-copy view of its data buffer; Python bytes: one
``b"".join`` per batch), so no peer pays for our conversion.

Usage (by ``bench_peers.py``)::

    PYTHON benchmarks/peer_loaders.py --peer NAME --files JSON --batch-size 256 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

SHAPE = (1, 28, 28)
Runner = Callable[[int], int]
"""One shuffled epoch (the argument is the epoch number); returns the rows it yielded."""


def from_arrow(images: Any, labels: Any) -> dict[str, torch.Tensor]:
    """A batch from an Arrow binary column and a label column: zero-copy views where possible."""
    if isinstance(images, pa.ChunkedArray):
        images = images.combine_chunks()
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    width = np.int64 if pa.types.is_large_binary(images.type) else np.int32
    offsets = np.frombuffer(images.buffers()[1], width, len(images) + 1, images.offset * np.dtype(width).itemsize)
    data = np.frombuffer(images.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    return {"image": torch.from_numpy(data).view(-1, *SHAPE),
            "label": torch.from_numpy(labels.to_numpy(zero_copy_only=False).astype(np.int64))}


def from_bytes(images: Iterable[bytes], labels: Any) -> dict[str, torch.Tensor]:
    """A batch from Python bytes objects (one join) and labels (a list or an array)."""
    data = np.frombuffer(b"".join(images), np.uint8)
    return {"image": torch.from_numpy(data.copy()).view(-1, *SHAPE),
            "label": torch.as_tensor(np.asarray(labels, dtype=np.int64))}


def collate_rows(rows: list[dict]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for peers yielding one dict per row."""
    return from_bytes([r["image"] for r in rows], [int(r["label"]) for r in rows])


def count(batches: Iterable[dict]) -> int:
    """Rows of an epoch's batches, each checked to be what idxlake yields."""
    n = 0
    for b in batches:
        image, label = b["image"], b["label"]
        if image.dtype != torch.uint8 or tuple(image.shape[1:]) != SHAPE or label.dtype != torch.int64 \
                or len(label) != len(image):
            raise RuntimeError(f"not an MNIST batch: image {image.dtype} {tuple(image.shape)}, label {label.dtype}")
        n += len(label)
    return n


def in_memory(files: list[str], bs: int) -> Runner:
    """The limit (as ``bench_loader.py``): a uint8 tensor in RAM, ``randperm``, two ``index_select``."""
    table = pq.read_table(files, columns=["image", "label"])
    batch = from_arrow(table["image"], table["label"])
    x, y = batch["image"].clone(), batch["label"].clone()

    def run(epoch: int) -> int:
        perm = torch.randperm(len(x))
        n = 0
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            n += len({"image": x.index_select(0, idx), "label": y.index_select(0, idx)}["label"])
        return n
    return run


def daft_torch(files: list[str], bs: int) -> Runner:
    """Daft's documented path: ``df.shuffle(seed).to_torch_dataloader(batch_size)`` over a collected frame."""
    import daft

    df = daft.read_parquet(files).select("image", "label").collect()
    return lambda epoch: count(from_bytes(b["image"], b["label"])
                               for b in df.shuffle(seed=epoch).to_torch_dataloader(batch_size=bs))


def daft_arrow(files: list[str], bs: int, *, collect: bool = True) -> Runner:
    """Daft at its fastest: ``df.shuffle(seed).to_arrow_iter()``, record batches cut into batches;
    over a collected frame, or (``collect=False``) read from the Parquet files every epoch."""
    import daft

    df = daft.read_parquet(files).select("image", "label")
    if collect:
        df = df.collect()

    def run(epoch: int) -> int:
        return count(from_arrow(rb.column("image").slice(i, bs), rb.column("label").slice(i, bs))
                     for rb in df.shuffle(seed=epoch).to_arrow_iter() for i in range(0, rb.num_rows, bs))
    return run


def hf_datasets(files: list[str], bs: int, workers: int = 0) -> Runner:
    """HF datasets: ``Dataset.from_parquet`` (its memory-mapped Arrow cache); 0 workers:
    ``ds.shuffle(seed).with_format("arrow").iter(batch_size)``; with workers: ``DataLoader(ds,
    shuffle=True, batch_size, num_workers)``, ``__getitems__`` fetching a batch's rows in one call."""
    import datasets

    cache = tempfile.mkdtemp(prefix="hf_")
    ds = datasets.Dataset.from_parquet(files, columns=["image", "label"], cache_dir=cache)
    if not workers:
        return lambda epoch: count(from_arrow(t["image"], t["label"])
                                   for t in ds.shuffle(seed=epoch).with_format("arrow").iter(batch_size=bs))
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers,
                                         persistent_workers=True, collate_fn=collate_rows)
    return lambda epoch: count(loader)


def ray_data(files: list[str], bs: int) -> Runner:
    """Ray Data: a materialized dataset, ``iter_torch_batches`` with a local shuffle buffer of 16
    batches (Ray's advice for training; a global ``random_shuffle`` per epoch is slower)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rds = ray.data.read_parquet(files, columns=["image", "label"]).materialize()

    def run(epoch: int) -> int:
        return count(rds.iter_torch_batches(batch_size=bs, local_shuffle_buffer_size=16 * bs,
                                            local_shuffle_seed=epoch,
                                            collate_fn=lambda b: from_bytes(b["image"], b["label"])))
    return run


def petastorm(files: list[str], bs: int) -> Runner:
    """Petastorm: ``make_batch_reader`` (row groups shuffled, 2 reader threads) into
    ``petastorm.pytorch.BatchedDataLoader`` with a shuffling queue; a ``TransformSpec`` turns the
    image bytes into uint8 arrays (its documented way to shape a column)."""
    from petastorm import TransformSpec, make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    def decode(df: Any) -> Any:
        df["image"] = [np.frombuffer(b, np.uint8).reshape(SHAPE) for b in df["image"]]
        return df

    spec = TransformSpec(decode, edit_fields=[("image", np.uint8, SHAPE, False)])
    urls = [f"file://{f}" for f in files]

    def run(epoch: int) -> int:
        with make_batch_reader(urls, schema_fields=["image", "label"], num_epochs=1, seed=epoch,
                               shuffle_row_groups=True, workers_count=2, transform_spec=spec) as reader:
            loader = BatchedDataLoader(reader, batch_size=bs, shuffling_queue_capacity=16 * bs)
            return count({"image": b["image"], "label": b["label"].long()} for b in loader)
    return run


def mosaic(files: list[str], bs: int, workers: int = 0) -> Runner:
    """Mosaic Streaming: the rows written once to MDS shards (off the clock), then
    ``StreamingDataset(local, shuffle=True, batch_size)`` through ``DataLoader(batch_size)``."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("streaming")  # skip streaming/__init__, which imports torchvision
    pkg = types.ModuleType("streaming")
    pkg.__path__ = list(spec.submodule_search_locations or [])
    sys.modules["streaming"] = pkg
    from streaming.base import MDSWriter, StreamingDataset

    out = tempfile.mkdtemp(prefix="mds_")
    table = pq.read_table(files, columns=["image", "label"])
    with MDSWriter(out=out, columns={"image": "bytes", "label": "int"}) as writer:
        for image, label in zip(table["image"].to_pylist(), table["label"].to_pylist(), strict=True):
            writer.write({"image": image, "label": label})
    ds = StreamingDataset(local=out, shuffle=True, shuffle_seed=0, batch_size=bs)
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=collate_rows,
                                         persistent_workers=workers > 0)
    return lambda epoch: count(loader)


PEERS: dict[str, Callable[[list[str], int], Runner]] = {
    "Daft, to_arrow_iter": daft_arrow,
    "Daft, to_arrow_iter, from Parquet": lambda files, bs: daft_arrow(files, bs, collect=False),
    "Daft, to_torch_dataloader": daft_torch,
    "HF datasets": hf_datasets,
    "HF datasets, 2 workers": lambda files, bs: hf_datasets(files, bs, workers=2),
    "Mosaic Streaming": mosaic,
    "Mosaic Streaming, 2 workers": lambda files, bs: mosaic(files, bs, workers=2),
    "Petastorm": petastorm,
    "Ray Data": ray_data,
}
"""Every peer configuration, by the name ``bench_peers.py`` prints."""


BLOCK = 3
"""Consecutive epochs timed together, as a training loop runs them (as in ``bench_loader.py``)."""


def measure(run: Runner, limit: Runner, reps: int) -> dict[str, float]:
    """Interleave ``reps`` blocks of :data:`BLOCK` epochs of ``run`` with blocks of the in-memory
    ``limit`` (after one warm-up block of each); medians of samples/s and of the per-block ratio."""
    rates: list[float] = []
    limits: list[float] = []
    for rep in range(reps + 1):
        rows, timed = [], []
        for fn in (limit, run):
            start = time.perf_counter()
            rows.append([fn(BLOCK * rep + i) for i in range(BLOCK)])
            timed.append(sum(rows[-1]) / (time.perf_counter() - start))
        if rows[1] != rows[0]:
            raise RuntimeError(f"block {rep}: the loader yielded {rows[1]} rows an epoch, the split has {rows[0]}")
        if rep:
            limits.append(timed[0])
            rates.append(timed[1])
    return {"rate": statistics.median(rates), "limit": statistics.median(limits),
            "ratio": statistics.median(r / m for r, m in zip(rates, limits, strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--files", required=True, help="JSON list of the train split's Parquet files")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = json.loads(args.files)
    run = PEERS[args.peer](files, args.batch_size)
    print(json.dumps(measure(run, in_memory(files, args.batch_size), args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
