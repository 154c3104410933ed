"""Batches onto an accelerator: ``DeviceLoader`` over the loader against an in-device-memory limit.

Usage::

    .venv/bin/python benchmarks/bench_device.py [--device cuda] [--reps 5] [--batch-size 256] [--json out.json]

Builds the real MNIST table in a temporary directory and measures, in one process, samples/s of
shuffled epochs of the train split (60000 rows) ending in normalised float32 images on
``--device``:

* ``in-device limit``: the uint8 images and labels already on the device, ``randperm`` there, one
  ``index_select`` per batch and column, normalised on the device (no host, no bus);
* ``DeviceLoader, cached``: ``DeviceLoader(ds.dataloader(pin_memory=True), device,
  normalize=Normalizer(ds.meta))`` over ``DeltaIterableDataset`` with the decode cache (epochs after
  the first): uint8 batches gathered on the host, pinned, copied one batch ahead on a side stream,
  normalised on the device;
* ``DeviceLoader, cold``: the same with ``cache_bytes=0`` (decoded from Parquet every epoch);
* ``host float32``: the loader's own ``image_dtype="float32"`` copied with ``.to(device)`` (the
  4x bytes over the bus that ``DeviceLoader`` avoids).

Every epoch ends with a device synchronisation, so the copies are inside the clock. The
configurations are interleaved epoch by epoch; figures are medians of ``--reps`` epochs and ratios
are against the in-device limit of the same run. With ``--device cpu`` the same code path runs
without pinning, streams or a bus (a check that the benchmark works, not a transfer figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runners(table: str, device_name: str, batch_size: int) -> dict[str, Callable[[int], int]]:
    """One callable per configuration: runs a shuffled epoch, returns the rows that reached the device."""
    import torch

    from idxlake.loaders import DeltaIterableDataset, DeviceLoader
    from idxlake.loaders.decode import Normalizer

    device = torch.device(device_name)
    out: dict[str, Callable[[int], int]] = {}
    base = DeltaIterableDataset(table, split="train", columns=("image", "label"), batch_size=batch_size)
    normalize = Normalizer(base.meta)
    images = torch.cat([b["image"] for b in base]).to(device)  # the limit's data, on the device
    labels = torch.cat([b["label"] for b in base]).to(device)

    def limit(epoch: int) -> int:
        perm, n = torch.randperm(len(labels), device=device), 0
        for i in range(0, len(labels), batch_size):
            idx = perm[i:i + batch_size]
            batch = {"image": normalize(images.index_select(0, idx)), "label": labels.index_select(0, idx)}
            n += len(batch["label"])
        _sync(device)
        return n
    out["in-device limit"] = limit

    def loader_run(ds: DeltaIterableDataset, *, host_float: bool = False) -> Callable[[int], int]:
        wrapped = ds.dataloader(pin_memory=device.type == "cuda")

        def run(epoch: int) -> int:
            ds.set_epoch(epoch)
            it = (({k: v.to(device, non_blocking=True) for k, v in b.items()} for b in wrapped) if host_float
                  else DeviceLoader(wrapped, device, normalize=normalize))
            n = sum(len(b["label"]) for b in it)
            _sync(device)
            return n
        return run

    kw = dict(split="train", columns=("image", "label"), batch_size=batch_size)
    out["DeviceLoader, cached"] = loader_run(DeltaIterableDataset(table, **kw))
    out["DeviceLoader, cold"] = loader_run(DeltaIterableDataset(table, cache_bytes=0, **kw))
    out["host float32, .to(device)"] = loader_run(DeltaIterableDataset(table, image_dtype="float32", **kw),
                                                  host_float=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="target device (default cuda; cpu checks the path)")
    parser.add_argument("--reps", type=int, default=5, help="measured epochs per configuration (median)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    import idxlake

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); "
              "run with --device cpu to check the code path", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_device_") as tmp:
        table = str(Path(tmp) / "mnist")
        idxlake.ingest(None, table)
        runs = runners(table, args.device, args.batch_size)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for epoch in range(args.reps + 1):  # the first epoch warms up (and fills the cache)
            for name, run in runs.items():
                start = time.perf_counter()
                n = run(epoch)
                if epoch:
                    rates[name].append(n / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    limit = medians["in-device limit"]
    print(f"device {args.device} ({torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'host'}), "
          f"batch {args.batch_size}, medians of {args.reps} epochs")
    print("| configuration | samples/s | vs in-device limit |\n|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate / 1e6:.2f} M/s | {rate / limit:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "batch_size": args.batch_size,
                                               "rates": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
