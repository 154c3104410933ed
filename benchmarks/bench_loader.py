"""Loader throughput on the real MNIST table: in-memory limit vs hand-rolled vs DeltaIterableDataset.

Usage::

    .venv/bin/python benchmarks/bench_loader.py [--reps 5] [--batch-sizes 64 256 1024] [--json out.json]

Builds the MNIST tables in a temporary directory (LZ4_RAW, ZSTD, and 4x / 8x MNIST by
repeated appends), measures the peak RSS of every configuration in its own subprocess
(3 epochs at batch 256), then samples/s at each batch size: the median over ``--reps`` blocks of
shuffled epochs of the train split (60000 rows per copy), with the configurations
interleaved block by block in one process so that machine noise hits them alike:

* ``in-memory``: the limit: a uint8 tensor in RAM, ``randperm``, one ``index_select``
  per batch for images and labels;
* ``hand-rolled``: the per-sample ``Dataset`` + ``DataLoader(shuffle=True)`` people write
  (gzip + ``np.frombuffer``, ``__getitem__`` returning a normalised float32 tensor);
* ``loader``: ``DeltaIterableDataset(columns=("image", "label"))`` through
  ``DataLoader(batch_size=None)`` (or iterated directly: "no DataLoader"), cold (decoded
  from Parquet each epoch; the OS page cache is warm) with 0 and 2 (persistent) workers,
  uint8 and float32, with the decode cache (epochs after the first; with 0 and 2 workers, the latter both as
  ``ds.dataloader()`` runs them, warm passes in the main process over the workers' shared cache, and with
  ``warm_passes="workers"``), on a ZSTD table and on
  one written with ``compression_level=6`` (LZ4HC),
  and on 4x and 8x MNIST tables (memory must stay flat); and without verifying the Parquet
  page checksums (``loaders.plan.PAGE_CHECKSUMS``), to measure what the verification costs; and with
  torch's gathers and copies in the passes that decode (``loaders.gather.NUMPY_WHILE_DECODING``), to
  measure what keeping torch's intra-op pool asleep there gains; the LZ4_RAW table read by pyarrow
  (``loaders.pages.RAW_PAGES = False``) against the loader's own LZ4 pages; an UNCOMPRESSED table
  with its local file mapped into the arena, read into slots (``loaders.mapped.MAP_LOCAL_FILES =
  False``, as on object storage), and read by pyarrow.

After the tables, sections: a heavy transform with 2 workers against 0, the first epoch filling the
cache, simulated world sizes, a warm epoch's gathers in one process against two at once
(:func:`concurrent_gathers`), and S3 against local disk.

After each throughput table, warm epochs back to back (:func:`back_to_back`): the limit and the
cached loader alternating epoch by epoch without pauses, as a training loop runs them; and cold
epochs back to back (:func:`cold_consecutive`, alone with ``--cold-consecutive``).

Ratios are against the in-memory limit and the hand-rolled loader at the same batch
size. Each point is a block of 3 consecutive epochs (the first starts cold, without the epoch read
ahead, see ``BLOCK_GAP``), the configurations interleaved block by block with a pause between them.
Machines are noisy: compare medians and ratios, not single runs.
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
    "loader uint8, 2 workers, ring": {"kind": "loader", "workers": 2, "ring": True},
    "loader uint8, 2 workers, ds.dataloader()": {"kind": "loader", "workers": 2, "factory": True},
    "loader uint8, cached, 2 workers, ds.dataloader()": {"kind": "loader", "workers": 2, "factory": True,
                                                         "cache": None},
    "loader uint8, cached, 2 workers, warm passes in the workers": {"kind": "loader", "workers": 2, "factory": True,
                                                                    "cache": None, "warm_passes": "workers"},
    "hand-rolled": {"kind": "hand"},                                # workers' last work cannot skew others
    "loader uint8, 0 workers": {"kind": "loader", "workers": 0},
    "loader float32, 0 workers": {"kind": "loader", "workers": 0, "dtype": "float32"},
    "loader uint8, cached": {"kind": "loader", "workers": 0, "cache": None},
    "loader uint8, 0 workers, no DataLoader": {"kind": "loader", "direct": True},
    "loader uint8, cached, ds.dataloader()": {"kind": "loader", "workers": 0, "cache": None, "factory": True},
    "loader uint8, cached, no DataLoader": {"kind": "loader", "direct": True, "cache": None},
    "loader uint8, 0 workers, no page checksums": {"kind": "loader", "workers": 0, "checksums": False},
    "loader uint8, 0 workers, ZSTD": {"kind": "loader", "workers": 0, "table": "zstd"},
    "loader uint8, no DataLoader, LZ4_RAW level 6": {"kind": "loader", "direct": True, "table": "lz4hc"},
    "loader uint8, no DataLoader, LZ4_RAW via pyarrow": {"kind": "loader", "direct": True, "raw": False},
    "loader uint8, no DataLoader, UNCOMPRESSED (raw pages)": {"kind": "loader", "direct": True, "table": "unc"},
    "loader uint8, no DataLoader, UNCOMPRESSED read into slots": {"kind": "loader", "direct": True, "table": "unc",
                                                                 "map": False},
    "loader uint8, no DataLoader, UNCOMPRESSED via pyarrow": {"kind": "loader", "direct": True, "table": "unc",
                                                             "raw": False},
    "loader uint8, 2 workers, ds.dataloader(), UNCOMPRESSED": {"kind": "loader", "workers": 2, "factory": True,
                                                              "table": "unc"},
    "loader uint8, no DataLoader, torch gathers while decoding": {"kind": "loader", "direct": True,
                                                                  "numpy_gathers": False},
    "loader uint8, 0 workers, 4x MNIST": {"kind": "loader", "workers": 0, "table": "x4"},
    "loader uint8, 0 workers, 8x MNIST": {"kind": "loader", "workers": 0, "table": "x8"},
    "loader uint8, cached, 8x MNIST": {"kind": "loader", "workers": 0, "table": "x8", "cache": None},
}
"""Every loader configuration reads cold (``cache_bytes=0``) unless it says cached (the default
``cache_bytes=None``: on when the selection fits a quarter of the available memory)."""

HEAVY_ROWS = 6000
"""Rows of the heavy-transform runs (``id < 6000``: ~0.6 s of transform per epoch)."""


def heavy_transform(batch: dict) -> dict:
    """A CPU-heavy per-sample transform: ~100 us of pure-Python work for each sample of the batch
    (stands in for ``sample_transform=`` of the vision branch, which calls a function per row)."""
    for _ in range(len(batch["label"])):
        end = time.perf_counter() + 100e-6
        while time.perf_counter() < end:
            pass
    return batch


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
    from idxlake.loaders import DeltaIterableDataset, RingDataLoader

    ds = DeltaIterableDataset(tables[config.get("table", "lz4")], split="train", batch_size=bs,
                              columns=("image", "label"), image_dtype=config.get("dtype", "uint8"),
                              cache_bytes=config.get("cache", 0), storage_options=config.get("storage"),
                              filter=f"id < {HEAVY_ROWS}" if config.get("heavy") else None,
                              transform=heavy_transform if config.get("heavy") else None,
                              rank=config.get("rank"), world_size=config.get("world_size"))
    workers = config.get("workers", 0)
    if config.get("direct"):
        loader = ds
    elif config.get("factory"):
        loader = ds.dataloader(num_workers=workers, **({"warm_passes": config["warm_passes"]}
                                                       if "warm_passes" in config else {}))
    elif config.get("ring"):
        loader = RingDataLoader(ds, num_workers=workers, persistent_workers=workers > 0)
    else:
        loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    import idxlake.loaders.gather as gather
    import idxlake.loaders.mapped as mapped
    import idxlake.loaders.pages as pages
    import idxlake.loaders.plan as plan

    def run(epoch: int) -> int:
        plan.PAGE_CHECKSUMS = config.get("checksums", True)  # read when a file is opened
        pages.RAW_PAGES = config.get("raw", True)  # read when a row group is first read
        mapped.MAP_LOCAL_FILES = config.get("map", True)  # read when an arena is made (at the first pass)
        gather.NUMPY_WHILE_DECODING = config.get("numpy_gathers", True)
        ds.set_epoch(epoch)
        return sum(len(b["label"]) for b in loader)
    return run


BLOCK = 3
"""Consecutive epochs timed together (a point is the rate of a block): the loader reads the next
epoch's first row groups during the current one (loaders/lookahead.py), as in a training loop."""

BLOCK_GAP = 100
"""Blocks start at epochs 0, 100, 200...: the read-ahead planned at the end of a block is for an epoch
that does not come, so no block gains from work done off the clock (its first epoch starts cold)."""

SETTLE_S = 0.1
"""Pause after each block (off the clock) so that its background work does not slow the next one."""


def throughput(configs: dict[str, dict], tables: dict[str, str], batch_sizes: list[int], reps: int) -> dict:
    """Samples/s per configuration and batch size: medians over ``reps`` epochs, configurations
    interleaved epoch by epoch (so that machine noise hits all of them alike)."""
    rates: dict[str, dict[str, float]] = {name: {} for name in configs}
    for bs in batch_sizes:
        runners = {name: make_runner(config, tables, bs) for name, config in configs.items()}
        samples: dict[str, list[float]] = {name: [] for name in configs}
        for rep in range(reps + 1):  # the first block is a warm-up (and fills the caches)
            for name, run in runners.items():
                hand = configs[name]["kind"] == "hand"
                if hand and rep > max(2, reps // 2):
                    continue  # ~1 s an epoch: fewer repetitions
                start = time.perf_counter()
                n = sum(run(BLOCK_GAP * rep + i) for i in range(1 if hand else BLOCK))
                if rep:
                    samples[name].append(n / (time.perf_counter() - start))
                time.sleep(SETTLE_S)  # reads ahead of an epoch that never comes end off the clock
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


PEERS_AT_256 = {"Daft": 0.057, "Petastorm": 0.029, "HF datasets": 0.016, "Ray Data": 0.008, "Mosaic": 0.002}
"""Peers' warm bs-256 ratio to the in-memory limit, as issue 10 quotes them (printed for reference;
``bench_peers.py`` measures the peers themselves, each in its own venv, in one run)."""


def _timed(run, epoch: int) -> float:
    start = time.perf_counter()
    n = run(epoch)
    return n / (time.perf_counter() - start)


def back_to_back(tables: dict[str, str], epochs: int = 40) -> dict:
    """Warm epochs as a training loop runs them: the limit, the cached loader (iterated directly) and
    ``ds.dataloader(num_workers=2)`` over its own cached dataset (its workers filled the shared cache in
    the first epoch; warm passes then run in the main process) alternating epoch by epoch with no pause
    (``set_epoch(e)`` then a full pass), medians of ``epochs``; also the loader's time to its first
    batch (where an epoch's planning shows). After each loader's epoch the planning of its next pass,
    which it starts in a reader thread as the epoch ends, is waited for, so that it does not run on the
    next measurement's clock (in a training loop it runs beside the step's compute)."""
    from idxlake.loaders import DeltaIterableDataset

    def settle(d: DeltaIterableDataset) -> None:
        if d._warm is not None:
            d._warm.future.result()

    mem = make_runner(CONFIGS["in-memory"], tables, 256)
    ds, ds2 = (DeltaIterableDataset(tables["lz4"], split="train", batch_size=256, columns=("image", "label"))
               for _ in range(2))
    workers = ds2.dataloader(num_workers=2)
    ds.set_epoch(0)
    ds2.set_epoch(0)
    sum(len(b["label"]) for b in ds)  # fills the cache
    sum(len(b["label"]) for b in workers)  # the workers fill theirs
    limit, loader, first, two = [], [], [], []
    for epoch in range(1, epochs + 1):
        limit.append(_timed(mem, epoch))
        ds.set_epoch(epoch)
        start = time.perf_counter()
        it = iter(ds)
        n = len(next(it)["label"])
        first.append(time.perf_counter() - start)
        n += sum(len(b["label"]) for b in it)
        loader.append(n / (time.perf_counter() - start))
        settle(ds)
        ds2.set_epoch(epoch)
        start = time.perf_counter()
        n = sum(len(b["label"]) for b in workers)
        two.append(n / (time.perf_counter() - start))
        settle(ds2)
    return {"limit M/s": statistics.median(limit) / 1e6, "loader M/s": statistics.median(loader) / 1e6,
            "ratio": statistics.median(loader) / statistics.median(limit),
            "first batch ms": statistics.median(first) * 1e3,
            "2 workers M/s": statistics.median(two) / 1e6,
            "2 workers / 0 workers": statistics.median(two) / statistics.median(loader)}


def cold_consecutive(tables: dict[str, str], blocks: int = 6, epochs: int = 10, drop: int = 2) -> dict:
    """Cold epochs as a training loop runs them: blocks of ``epochs`` consecutive cold epochs
    (``cache_bytes=0``, iterated directly, so each epoch's first row groups are read ahead during the
    one before), of the LZ4_RAW table (read raw, and by pyarrow), the LZ4HC and the UNCOMPRESSED table (its file
    mapped, and read into slots), against blocks of as
    many limit epochs, the blocks alternating, the first ``drop`` epochs of each block left out (the first
    has nothing read ahead); medians. The throughput tables' blocks of 3 weigh that first epoch as one in three."""
    import idxlake.loaders.mapped as mapped
    import idxlake.loaders.pages as pages
    from idxlake.loaders import DeltaIterableDataset

    mem = make_runner(CONFIGS["in-memory"], tables, 256)
    loaders = {name: DeltaIterableDataset(tables[name.split()[0]], split="train", batch_size=256,
                                          columns=("image", "label"), cache_bytes=0)
               for name in ("lz4", "lz4 pyarrow", "lz4hc", "unc", "unc slots")}
    rates: dict[str, list[float]] = {"limit": [], "lz4": [], "lz4 pyarrow": [], "lz4hc": [], "unc": [],
                                     "unc slots": []}
    epoch = 0
    for _ in range(blocks):
        for name, kept in rates.items():
            block = []
            for _ in range(epochs):
                epoch += 1  # increasing for every dataset: consecutive within a block
                start = time.perf_counter()
                if name == "limit":
                    n = mem(epoch)
                else:
                    mapped.MAP_LOCAL_FILES = name != "unc slots"  # read when its arena is made
                    pages.RAW_PAGES = name != "lz4 pyarrow"  # read when its reader first reads a row group
                    loaders[name].set_epoch(epoch)
                    n = sum(len(b["label"]) for b in loaders[name])
                block.append(n / (time.perf_counter() - start))
            kept.extend(block[drop:])
            time.sleep(SETTLE_S)
    med = {name: statistics.median(values) for name, values in rates.items()}
    mapped.MAP_LOCAL_FILES = pages.RAW_PAGES = True
    return {"limit M/s": med["limit"] / 1e6, "cold M/s": med["lz4"] / 1e6, "cold / limit": med["lz4"] / med["limit"],
            "cold LZ4_RAW via pyarrow / limit": med["lz4 pyarrow"] / med["limit"],
            "cold LZ4HC M/s": med["lz4hc"] / 1e6, "cold LZ4HC / limit": med["lz4hc"] / med["limit"],
            "cold UNCOMPRESSED M/s": med["unc"] / 1e6, "cold UNCOMPRESSED / limit": med["unc"] / med["limit"],
            "cold UNCOMPRESSED into slots / limit": med["unc slots"] / med["limit"]}


def scale_sections(tables: dict[str, str], reps: int) -> dict:
    """Workers with a heavy transform, the cost of filling the cache, simulated world sizes 1-8
    on 8x MNIST (row groups decoded by rank 0 and its epoch time), S3 (moto) against local disk."""
    from idxlake.loaders import DeltaIterableDataset
    from idxlake.loaders.decode import UnitReader

    out: dict = {}
    mem = make_runner(CONFIGS["in-memory"], tables, 256)
    heavy = {w: make_runner({"kind": "loader", "workers": w, "ring": True, "heavy": True}, tables, 256)
             for w in (0, 2)}
    rates = {w: statistics.median(_timed(run, e) for e in range(1, 3)) for w, run in heavy.items()}
    out["heavy transform, 2 workers (ring) / 0 workers"] = rates[2] / rates[0]
    fills, colds = [], []
    for e in range(reps):  # the first epoch of a fresh dataset: filling the cache vs not caching
        fills.append(_timed(make_runner({"kind": "loader", "direct": True, "cache": None}, tables, 256), e))
        colds.append(_timed(make_runner({"kind": "loader", "direct": True}, tables, 256), e))
    out["first epoch, filling the cache / not caching"] = statistics.median(fills) / statistics.median(colds)
    out["in-memory limit M/s"] = statistics.median(_timed(mem, e) for e in range(reps)) / 1e6
    decoded: list[int] = []
    real = UnitReader.read

    def counting(self, unit, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded.append(1)
        return real(self, unit, *args, **kwargs)

    UnitReader.read = counting  # type: ignore[method-assign]
    try:
        base = None
        for world in range(1, 9):
            ds = DeltaIterableDataset(tables["x8"], split="train", batch_size=256, columns=("image", "label"),
                                      cache_bytes=0, rank=0, world_size=world)
            times = []
            for e in range(3):
                decoded.clear()
                ds.set_epoch(e)
                start = time.perf_counter()
                for _ in ds:
                    pass
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            base = base or t
            out[f"world size {world}: rank 0 row groups decoded / total"] = f"{len(decoded)} / {len(ds.plan.units)}"
            out[f"world size {world}: rank 0 epoch time / world size 1"] = t / base
    finally:
        UnitReader.read = real  # type: ignore[method-assign]
    out.update(concurrent_gathers(reps))
    out.update(s3_vs_local(tables["lz4"]))
    out.update({f"UNCOMPRESSED, {k}": v for k, v in s3_vs_local(tables["unc"], "UNCOMPRESSED").items()})
    return out


GATHER_ROWS = 30000
"""Rows each process gathers in :func:`concurrent_gathers` (one DataLoader worker's half of MNIST train)."""


def _gather_epoch(src, index, slots) -> float:  # type: ignore[no-untyped-def]
    """Seconds to gather ``index`` from ``src`` in batches of 256, 16 batches a slot, slots round robin
    (what a ring worker's warm pass does, without the loader around it)."""
    import torch

    start = time.perf_counter()
    for k, s in enumerate(range(0, len(index), 4096)):
        dest = slots[k % len(slots)]
        for b in range(s, min(s + 4096, len(index)), 256):
            rows = index[b:b + 256]
            torch.index_select(src, 0, rows, out=dest[b - s:b - s + len(rows)])
    return time.perf_counter() - start


def _gather_setup(seed: int):  # type: ignore[no-untyped-def]
    """A process's own source tensor (60000 MNIST-sized rows), random rows of it, and 6 shared-memory slots."""
    import numpy as np
    import torch

    src = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    index = torch.from_numpy(np.random.default_rng(seed).permutation(60000)[:GATHER_ROWS].copy())
    slots = [torch.empty((4096, 1, 28, 28), dtype=torch.uint8).share_memory_() for _ in range(6)]
    for _ in range(3):
        _gather_epoch(src, index, slots)
    return src, index, slots


def concurrent_gathers(reps: int) -> dict:
    """A warm epoch's gathers alone, then with a second process gathering at the same time.

    Each process has its own source tensor, rows and slots, as two DataLoader workers have their
    own caches and ring slots (:func:`_gather_setup`; 1 torch thread). The ratio says whether two
    workers gathering at once go faster than one process: per-process time 2x = no gain.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src, index, slots = _gather_setup(0)
        alone = statistics.median(_gather_epoch(src, index, slots) for _ in range(10 * reps))
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the second process: its own data, gathering until killed
            try:
                os.close(ready_r)
                other = _gather_setup(1)
                os.write(ready_w, b"1")
                while True:
                    _gather_epoch(*other)
            finally:
                os._exit(0)
        os.close(ready_w)
        try:
            os.read(ready_r, 1)
            together = statistics.median(_gather_epoch(src, index, slots) for _ in range(10 * reps))
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(ready_r)
    finally:
        torch.set_num_threads(threads)
    return {f"gathers of {GATHER_ROWS} rows, one process alone (ms)": alone * 1e3,
            f"gathers of {GATHER_ROWS} rows, two processes at once (ms, each)": together * 1e3,
            "two processes at once / one alone (time per process; 2.0 = no gain from the second)": together / alone}


def s3_vs_local(table: str, codec: str = "LZ4_RAW") -> dict:
    """Cold epochs (bs 256) over MNIST on a moto S3 server on 127.0.0.1 against local disk (``table``,
    ingested with the same ``codec``)."""
    import socket
    import urllib.request

    import boto3

    from idxlake import ingest
    from idxlake.loaders import DeltaIterableDataset

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        opts = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
        boto3.client("s3", endpoint_url=opts["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="lake")
        ingest(None, "s3://lake/mnist", storage_options=opts, codec=codec)
        rates = {}
        for name, uri, so, depth in (("local", table, None, 8), ("S3, prefetch_depth=1", "s3://lake/mnist", opts, 1),
                                     ("S3, prefetch_depth=8", "s3://lake/mnist", opts, 8)):
            ds = DeltaIterableDataset(uri, storage_options=so, split="train", batch_size=256, cache_bytes=0,
                                      columns=("image", "label"), prefetch_depth=depth)
            rates[name] = statistics.median(_timed(lambda e, ds=ds: (ds.set_epoch(e), sum(
                len(b["label"]) for b in ds))[1], e) for e in range(3))
        return {f"{k} / local": v / rates["local"] for k, v in rates.items() if k != "local"}
    finally:
        server.kill()


def build_tables(root: Path) -> dict[str, str]:
    """Ingest MNIST as LZ4_RAW (default), LZ4_RAW level 6 (LZ4HC), ZSTD, UNCOMPRESSED, and 4x and 8x MNIST by
    appends."""
    from idxlake import ingest

    tables = {"lz4": str(root / "mnist_lz4"), "zstd": str(root / "mnist_zstd"), "lz4hc": str(root / "mnist_lz4hc"),
              "unc": str(root / "mnist_unc"), "x4": str(root / "mnist_x4"), "x8": str(root / "mnist_x8")}
    ingest(None, tables["unc"], codec="UNCOMPRESSED")
    ingest(None, tables["lz4"], codec="LZ4_RAW")
    ingest(None, tables["lz4hc"], codec="LZ4_RAW", compression_level=6)
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
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="torch intra-op threads of each throughput run (0: torch's default)")
    parser.add_argument("--no-scale", action="store_true", help="skip workers/world-size/S3 sections")
    parser.add_argument("--cold-consecutive", action="store_true",
                        help="only the section of consecutive cold epochs (each --threads setting), then exit")
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
        if args.cold_consecutive:
            import torch

            default_threads = torch.get_num_threads()
            for threads in args.threads:
                torch.set_num_threads(threads or default_threads)
                cold = cold_consecutive(tables)
                print(f"cold epochs back to back, {torch.get_num_threads()} thread(s): " + ", ".join(
                    f"{k} {v:.2f}" for k, v in cold.items()), flush=True)
            return 0
        results = {name: {"rates": {}} for name in configs}
        for name, config in configs.items():
            proc = subprocess.run([sys.executable, __file__, "--rss", json.dumps({"config": config, "tables": tables})],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[name].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        import torch

        default_threads = torch.get_num_threads()
        back: dict[str, dict] = {}
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            print(f"peak RSS measured; throughput (interleaved), {torch.get_num_threads()} torch thread(s):",
                  flush=True)
            for name, rates in throughput(configs, tables, args.batch_sizes, args.reps).items():
                results[name]["rates"] = rates
                results[name].setdefault("rates_by_threads", {})[str(torch.get_num_threads())] = rates
            print_table(results, args.batch_sizes)
            b2b = back_to_back(tables)
            back[str(torch.get_num_threads())] = b2b
            print(f"warm epochs back to back, {torch.get_num_threads()} thread(s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in b2b.items()), flush=True)
            b2b["cold consecutive"] = cold = cold_consecutive(tables)
            print(f"cold epochs back to back, {torch.get_num_threads()} thread(s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in cold.items()), flush=True)
            warm = results.get("loader uint8, cached, no DataLoader", {}).get("rates", {}).get("256")
            mem = results.get("in-memory", {}).get("rates", {}).get("256")
            if warm and mem:
                print("peers (issue 10's bs-256 warm ratios): " + ", ".join(
                    f"{k} {v:.3f}x" for k, v in PEERS_AT_256.items()) + f"; idxlake cached {warm / mem:.2f}x")
        torch.set_num_threads(default_threads)
        results["back_to_back"] = back
        if not args.no_scale:
            scale = scale_sections(tables, args.reps)
            for key, value in scale.items():
                print(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}", flush=True)
            results["scale"] = scale
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
