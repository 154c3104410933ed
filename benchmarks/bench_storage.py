"""Loader samples/s over object stores on loopback against local disk, in one run.

Usage::

    .venv/bin/python benchmarks/bench_storage.py [--reps 3] [--workers 0 2] [--json out.json]

Starts moto (S3), Azurite (Azure Blob) and fake-gcs-server on 127.0.0.1 (as the tests do,
``tests/stores.py``), writes the real MNIST table to a local directory, ``s3://``, ``abfss://``
(ingest) and ``gs://`` (ingest locally, files copied in with pyarrow: delta-rs cannot commit to
fake-gcs-server), then reads the train split (60000 rows, batch 256, uint8, shuffled) with
``DeltaIterableDataset`` through ``DataLoader(batch_size=None)``, with 0 and 2 workers (the
start method from ``worker_context``). Throughput is counted after the first batch; the time to
the first batch (worker start, plan, first reads) is reported apart. Stores are interleaved rep
by rep so that machine noise hits them alike; the figure is the median samples/s over ``--reps``
epochs, and the ratio is against local disk at the same worker count. Loopback servers measure
the client path (HTTP, signing, the servers' own speed), not a cloud's network: treat them as a
lower bound on the overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def epoch(uri: str, options: dict[str, str] | None, workers: int, seed: int) -> tuple[float, float]:
    """One shuffled epoch of the train split: ``(seconds to the first batch, samples/s after it)``."""
    from torch.utils.data import DataLoader

    from idxlake.loaders import DeltaIterableDataset
    from idxlake.schemas import worker_context

    ds = DeltaIterableDataset(uri, split="train", columns=("image", "label"), storage_options=options,
                              batch_size=256, seed=seed)
    loader = DataLoader(ds, batch_size=None, num_workers=workers,
                        multiprocessing_context=worker_context(uri) if workers else None)
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter()
    rows = sum(len(batch["label"]) for batch in it)
    return first - start, rows / (time.perf_counter() - first)


def main() -> None:
    import pyarrow.fs as pafs
    import stores

    from idxlake import ingest
    from idxlake.schemas import pyarrow_filesystem

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers = [stores.start_moto(), stores.start_azurite(root / "azurite"), stores.start_fake_gcs(root)]
        try:
            s3, azure, gcs = servers
            local = str(root / "mnist")
            ingest(None, local)
            tables = {"local": (local, None), "s3 (moto)": ("s3://lake/mnist", s3.options),
                      "azure (Azurite)": ("abfss://lake@devstoreaccount1.dfs.core.windows.net/mnist", azure.options),
                      "gcs (fake-gcs-server)": ("gs://lake/mnist", gcs.options)}
            for name, (uri, options) in tables.items():
                if name.startswith("s3") or name.startswith("azure"):
                    ingest(None, uri, storage_options=options)
                elif name.startswith("gcs"):
                    fs, path = pyarrow_filesystem(uri, options)
                    pafs.copy_files(local, path, destination_filesystem=fs)
            results: dict[str, dict[int, list[float]]] = {n: {w: [] for w in args.workers} for n in tables}
            startup: dict[str, dict[int, list[float]]] = {n: {w: [] for w in args.workers} for n in tables}
            for rep in range(args.reps):
                for workers in args.workers:
                    for name, (uri, options) in tables.items():
                        first, rate = epoch(uri, options, workers, seed=rep)
                        startup[name][workers].append(first)
                        results[name][workers].append(rate)
        finally:
            for server in servers:
                server.stop()

    report = []
    for workers in args.workers:
        base = statistics.median(results["local"][workers])
        for name in tables:
            med = statistics.median(results[name][workers])
            first = statistics.median(startup[name][workers])
            report.append({"store": name, "workers": workers, "median_samples_per_s": round(med),
                           "ratio_vs_local": round(med / base, 3), "median_first_batch_s": round(first, 3),
                           "runs": [round(x) for x in results[name][workers]]})
            print(f"{name:<24} workers={workers}  {med:>10,.0f} samples/s  x{med / base:.2f} of local  "
                  f"first batch {first:6.2f} s  runs {[round(x) for x in results[name][workers]]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
