"""Ingest benchmark: full MNIST ingest vs a plain-pyarrow floor, and peak RSS on a >= 2 GB IDX file.

Usage::

    python benchmarks/bench_ingest.py [--reps 5] [--big-gb 2.1] [--skip-big]

Prints medians and ratios measured in the same run:

* floor: stdlib-gzip decompress of the same four files + ``np.frombuffer`` + ``pyarrow.parquet.write_table``
  of the same arrays (same codec and row groups), no validation, no hashes, no Delta log.
* idxlake: ``idxlake.pipeline.ingest.job`` of the bundled MNIST into a fresh table (two validated passes, hashes,
  statistics, one Delta commit).
* memory: peak RSS of a subprocess ingesting a generated IDX file (MNIST images tiled to >= 2 GB).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from idxlake import ingest  # noqa: E402
from idxlake.pipeline.idx.write import idx_header  # noqa: E402
from idxlake.pipeline.ingest.delta_commit import image_array  # noqa: E402
from idxlake.pipeline.ingest.sources import bundled_mnist  # noqa: E402

PAIRS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def floor_once(out: Path, opener=gzip.open) -> float:
    """The hand-rolled baseline: decompress, frombuffer with fixed offsets, write Parquet."""
    t0 = time.perf_counter()
    for split, (img_name, lab_name) in PAIRS.items():
        with opener(bundled_mnist() / img_name) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
        with opener(bundled_mnist() / lab_name) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        table = pa.table({"id": np.arange(len(labels), dtype=np.int64), "label": labels.astype(np.int16),
                          "image": image_array(images, 784)})
        pq.write_table(table, out / f"{split}.parquet", row_group_size=8192, compression="lz4_raw")
    return time.perf_counter() - t0


def ingest_once(out: Path, **options: object) -> float:
    t0 = time.perf_counter()
    ingest(None, str(out / "table"), **options)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def make_big(path: Path, gigabytes: float) -> int:
    """Write a raw IDX images/labels pair of MNIST digits tiled to ``gigabytes``; returns the records."""
    src = np.frombuffer(gzip.decompress((bundled_mnist() / "train-images-idx3-ubyte.gz").read_bytes()),
                        np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((bundled_mnist() / "train-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)
    reps = int(np.ceil(gigabytes * 1e9 / src.nbytes))
    n = reps * len(labels)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "train-images-idx3-ubyte", "wb") as f:
        f.write(idx_header("uint8", (n, 28, 28)))
        for _ in range(reps):
            f.write(src)
    with open(path / "train-labels-idx1-ubyte", "wb") as f:
        f.write(idx_header("uint8", (n,)))
        for _ in range(reps):
            f.write(labels)
    return n


def peak_rss_mb(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter; return (its own peak RSS in MB, seconds)."""
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report this (larger) parent's peak.
    probe = f"{code}\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    return int(out.stdout.split()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--big-gb", type=float, default=2.1)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from isal import igzip

        floors, fast_floors, ours, hc = [], [], [], []
        for i in range(args.reps):
            d = Path(tmp) / f"r{i}"
            (d / "floor").mkdir(parents=True)
            floors.append(floor_once(d / "floor"))
            fast_floors.append(floor_once(d / "floor", igzip.open))
            ours.append(ingest_once(d))
            hc.append(ingest_once(d / "hc", compression_level=6))
        f, ff, o = statistics.median(floors), statistics.median(fast_floors), statistics.median(ours)
        print(f"MNIST full ingest (70,000 records, 54.9 MB of IDX), median of {args.reps}:")
        print(f"  floor (stdlib gzip + frombuffer + pyarrow.parquet): {f:6.3f} s")
        print(f"  floor with ISA-L gzip instead of stdlib:            {ff:6.3f} s")
        print(f"  idxlake ingest (validated, hashed, one Delta commit): {o:6.3f} s")
        print(f"  ratio idxlake / floor:        {o / f:5.2f}x  (target <= 1.3x)")
        print(f"  ratio idxlake / ISA-L floor:  {o / ff:5.2f}x")
        print(f"  idxlake ingest --compression-level 6 (LZ4HC): {statistics.median(hc):6.3f} s, "
              f"{statistics.median(hc) / o:.2f}x the default")
        if args.skip_big:
            return
        big = Path(tmp) / "big"
        n = make_big(big, args.big_gb)
        size = (big / "train-images-idx3-ubyte").stat().st_size
        baseline, _ = peak_rss_mb("import numpy, pyarrow, deltalake, pipeline")
        rss, secs = peak_rss_mb(f"from pipeline import ingest; ingest({str(big)!r}, {str(Path(tmp) / 'bigtable')!r})")
        print(f"Large file: {n:,} records, {size / 1e9:.2f} GB raw IDX")
        print(f"  peak RSS ingesting: {rss:7.0f} MB  (target < 500 MB; {rss / (size / 1e6):.3f}x the file size)")
        print(f"  peak RSS of the imports alone: {baseline:.0f} MB")
        print(f"  time: {secs:.1f} s, {size / 1e6 / secs:.0f} MB/s")


if __name__ == "__main__":
    main()
