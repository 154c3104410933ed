"""Loader throughput on the real MNIST table: in-memory limit vs hand-rolled vs DeltaIterableDataset.

Usage::

    .venv/bin/python benchmarks/bench_loader.py [--reps 5] [--batch-sizes 64 256 1024] [--json out.json]

Builds the MNIST tables in a temporary directory (LZ4_RAW, ZSTD, and 4x / 8x MNIST by
repeated appends), measures the peak RSS of every configuration in its own subprocess
(3 epochs at batch 256), then samples/s at each batch size: the median over ``--reps``
shuffled epochs of the train split (60000 rows per copy), with the configurations
interleaved epoch by epoch in one process so that machine noise hits them alike:

* ``in-memory``: the limit: a uint8 tensor in RAM, ``randperm``, one ``index_select``
  per batch for images and labels;
* ``hand-rolled``: the per-sample ``Dataset`` + ``DataLoader(shuffle=True)`` people write
  (gzip + ``np.frombuffer``, ``__getitem__`` returning a normalised float32 tensor);
* ``loader``: ``DeltaIterableDataset(columns=("image", "label"))`` through
  ``DataLoader(batch_size=None)`` (or iterated directly: "no DataLoader"), cold (decoded
  from Parquet each epoch; the OS page cache is warm) with 0 and 2 (persistent) workers,
  uint8 and float32, with the decode cache (epochs after the first), on a ZSTD table,
  and on 4x and 8x MNIST tables (memory must stay flat); and without verifying the Parquet
  page checksums (``loaders.plan.PAGE_CHECKSUMS``), to measure what the verification costs.

Ratios are against the in-memory limit and the hand-rolled loader at the same batch
size. Machines are noisy: compare medians and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: dict[str, dict] = {
    "in-memory": {"kind": "memory"},
    "loader uint8, 2 workers": {"kind": "loader", "workers": 2},  # before the slow hand-rolled one: idle
    "hand-rolled": {"kind": "hand"},                                # workers' last work cannot skew others
    "loader uint8, 0 workers": {"kind": "loader", "workers": 0},
    "loader float32, 0 workers": {"kind": "loader", "workers": 0, "dtype": "float32"},
    "loader uint8, cached": {"kind": "loader", "workers": 0, "cache": 1 << 30},
    "loader uint8, 0 workers, no DataLoader": {"kind": "loader", "direct": True},
    "loader uint8, cached, no DataLoader": {"kind": "loader", "direct": True, "cache": 1 << 30},
    "loader uint8, 0 workers, no page checksums": {"kind": "loader", "workers": 0, "checksums": False},
    "loader uint8, 0 workers, ZSTD": {"kind": "loader", "workers": 0, "table": "zstd"},
    "loader uint8, 0 workers, 4x MNIST": {"kind": "loader", "workers": 0, "table": "x4"},
    "loader uint8, 0 workers, 8x MNIST": {"kind": "loader", "workers": 0, "table": "x8"},
}


def _peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest (waited-for) child, in MB.

    This process's own peak is read from ``VmHWM``: ``ru_maxrss`` survives ``exec`` and would
    report the (large) benchmark parent that spawned us. Forked DataLoader workers start from
    this process, so their ``ru_maxrss`` is theirs.
    """
    with open("/proc/self/status") as status:
        me = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def _mnist_arrays(root: Path):
    import numpy as np

    images = np.frombuffer(gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((root / "train-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 28, 28), labels


def make_runner(config: dict, tables: dict[str, str], bs: int):
    """A callable running one shuffled epoch of ``config`` at batch size ``bs`` (returns rows)."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from idxlake.pipeline.ingest.sources import bundled_mnist

    kind = config["kind"]
    if kind == "memory":
        images, labels = _mnist_arrays(bundled_mnist())
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        y = torch.from_numpy(labels.astype("int64"))

        def run(epoch: int) -> int:
            perm = torch.randperm(len(x))
            n = 0
            for i in range(0, len(x), bs):
                idx = perm[i:i + bs]
                batch = {"image": x.index_select(0, idx), "label": y.index_select(0, idx)}
                n += len(batch["label"])
            return n
        return run
    if kind == "hand":
        images, labels = _mnist_arrays(bundled_mnist())

        class MNIST(Dataset):
            def __init__(self, images, labels) -> None:
                self.images, self.labels = images, labels

            def __len__(self) -> int:
                return len(self.images)

            def __getitem__(self, i: int):
                x = torch.tensor(self.images[i], dtype=torch.float32).div(255).unsqueeze(0)
                return (x - 0.1307) / 0.3081, int(self.labels[i])

        hand = DataLoader(MNIST(images, labels), batch_size=bs, shuffle=True)
        return lambda epoch: sum(len(y) for _, y in hand)
    from idxlake.loaders import DeltaIterableDataset

    ds = DeltaIterableDataset(tables[config.get("table", "lz4")], split="train", batch_size=bs,
                              columns=("image", "label"), image_dtype=config.get("dtype", "uint8"),
                              cache_bytes=config.get("cache", 0))
    workers = config.get("workers", 0)
    loader = ds if config.get("direct") else DataLoader(ds, batch_size=None, num_workers=workers,
                                                         persistent_workers=workers > 0)

    import idxlake.loaders.plan as plan

    def run(epoch: int) -> int:
        plan.PAGE_CHECKSUMS = config.get("checksums", True)  # read when a file is opened
        ds.set_epoch(epoch)
        return sum(len(b["label"]) for b in loader)
    return run


def throughput(configs: dict[str, dict], tables: dict[str, str], batch_sizes: list[int], reps: int) -> dict:
    """Samples/s per configuration and batch size: medians over ``reps`` epochs, configurations
    interleaved epoch by epoch (so that machine noise hits all of them alike)."""
    rates: dict[str, dict[str, float]] = {name: {} for name in configs}
    for bs in batch_sizes:
        runners = {name: make_runner(config, tables, bs) for name, config in configs.items()}
        samples: dict[str, list[float]] = {name: [] for name in configs}
        for epoch in range(reps + 1):  # the first epoch is a warm-up (and fills the caches)
            for name, run in runners.items():
                if configs[name]["kind"] == "hand" and epoch > max(2, reps // 2):
                    continue  # ~1 s an epoch: fewer repetitions
                start = time.perf_counter()
                n = run(epoch)
                if epoch:
                    samples[name].append(n / (time.perf_counter() - start))
        for name in configs:
            rates[name][str(bs)] = statistics.median(samples[name])
        print(f"  batch {bs}: " + ", ".join(f"{k} {v[str(bs)] / 1e6:.2f}M/s" for k, v in rates.items()), flush=True)
        del runners
    return rates


def peak_rss(config: dict, tables: dict[str, str], epochs: int = 3) -> dict:
    """Peak RSS of ``epochs`` epochs at batch 256 (run in a fresh subprocess by :func:`main`)."""
    run = make_runner(config, tables, 256)
    for epoch in range(epochs):
        run(epoch)
    del run
    import gc

    gc.collect()  # shuts DataLoader workers down, so their peak RSS is counted as children's
    me, kids = _peak_rss_mb()
    return {"rss_mb": me, "child_rss_mb": kids}


def build_tables(root: Path) -> dict[str, str]:
    """Ingest MNIST as LZ4_RAW (default), ZSTD, and 4x and 8x MNIST by appends."""
    from idxlake import ingest

    tables = {"lz4": str(root / "mnist_lz4"), "zstd": str(root / "mnist_zstd"),
              "x4": str(root / "mnist_x4"), "x8": str(root / "mnist_x8")}
    ingest(None, tables["lz4"], codec="LZ4_RAW")
    ingest(None, tables["zstd"], codec="ZSTD")
    for name, copies in (("x4", 4), ("x8", 8)):
        ingest(None, tables[name])
        for _ in range(copies - 1):
            ingest(None, tables[name], mode="append", allow_duplicate=True)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="measured epochs per point (median)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--only", nargs="+", default=None, help="configuration names to run")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--rss", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss:  # child mode: peak RSS of one configuration, as JSON on stdout
        job = json.loads(args.rss)
        print(json.dumps(peak_rss(job["config"], job["tables"])))
        return 0
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        start = time.perf_counter()
        tables = build_tables(Path(tmp))
        print(f"tables built in {time.perf_counter() - start:.1f}s ({os.cpu_count()} CPUs)", flush=True)
        results = {name: {"rates": {}} for name in configs}
        for name, config in configs.items():
            proc = subprocess.run([sys.executable, __file__, "--rss", json.dumps({"config": config, "tables": tables})],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[name].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        print("peak RSS measured; throughput (interleaved):", flush=True)
        for name, rates in throughput(configs, tables, args.batch_sizes, args.reps).items():
            results[name]["rates"] = rates
    print_table(results, args.batch_sizes)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, dict], batch_sizes: list[int]) -> None:
    """Markdown table: samples/s per batch size, ratios at 256 (or the middle size), peak RSS."""
    ref = str(256 if 256 in batch_sizes else batch_sizes[len(batch_sizes) // 2])
    mem = results.get("in-memory", {}).get("rates", {}).get(ref)
    hand = results.get("hand-rolled", {}).get("rates", {}).get(ref)
    head = " | ".join(f"batch {b}" for b in batch_sizes)
    print(f"\n| configuration | {head} | vs in-memory @{ref} | vs hand-rolled @{ref} | peak RSS MB (worker) |")
    print("|---" * (len(batch_sizes) + 4) + "|")
    for name, r in results.items():
        cells = " | ".join(f"{r['rates'][str(b)] / 1e6:.2f} M/s" for b in batch_sizes)
        at = r["rates"][ref]
        ratio_mem = f"{at / mem:.2f}x" if mem else "-"
        ratio_hand = f"{at / hand:.1f}x" if hand else "-"
        has_workers = r["child_rss_mb"] > 1 and "workers" in name and "0 workers" not in name
        kids = f" ({r['child_rss_mb']:.0f})" if has_workers else ""
        print(f"| {name} | {cells} | {ratio_mem} | {ratio_hand} | {r['rss_mb']:.0f}{kids} |")
    on, off = results.get("loader uint8, 0 workers"), results.get("loader uint8, 0 workers, no page checksums")
    if on and off:
        cost = ", ".join(f"batch {b}: {on['rates'][str(b)] / off['rates'][str(b)]:.3f}" for b in batch_sizes)
        print(f"\npage checksum verification, throughput with / without (same run): {cost}")


if __name__ == "__main__":
    sys.exit(main())
