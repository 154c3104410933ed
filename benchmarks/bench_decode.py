"""What pyarrow alone spends decoding the MNIST train split, by Parquet layout, against the loader's budget.

Usage::

    .venv/bin/python benchmarks/bench_decode.py [--reps 5]

Ingests the bundled MNIST into a temporary table, takes its train file's columns and rewrites them
in other layouts (8192-row row groups, page CRCs written): as stored (LZ4_RAW), LZ4_RAW at levels 6
and 9 (LZ4HC, what ``ingest(compression_level=...)`` writes), uncompressed, and the image column as
``FIXED_LEN_BYTE_ARRAY`` (a Parquet type Delta has no name for), each read with and without page-CRC
verification; and an ``UNCOMPRESSED`` ingest read by the loader's own reader (``loaders/pages.py``:
the image pages read raw, CRC-32 by ISA-L). A point is the CPU time (``thread_time``) of
``read_row_group`` (or ``UnitReader.read``) over every row group of ``image`` and ``label``, median
of ``--reps``. The baseline, measured in the same run, is the in-memory limit's epoch (a uint8
tensor, ``randperm``, two ``index_select`` per batch of 256, 1 torch thread): the loader issue's
cold target (0.4x the limit) gives a whole cold epoch 2.5 limit epochs, decode included.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path


def limit_epoch_s(reps: int) -> float:
    """Median seconds of the in-memory limit's epoch (batch 256, 1 torch thread)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_loader import _mnist_arrays

    from idxlake.pipeline.ingest.sources import bundled_mnist

    torch.set_num_threads(1)
    images, labels = _mnist_arrays(bundled_mnist())
    x, y = torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype("int64"))
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            x.index_select(0, idx), y.index_select(0, idx)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def layouts(train_file: str, out: Path) -> dict[str, str]:
    """The train file's ``id``, ``label`` and ``image`` rewritten in each layout: name -> path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(train_file, columns=["id", "label", "image"])
    image = table.column("image").combine_chunks()
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(784), len(image), [None, image.buffers()[2]],
                                                 offset=0)
    base = pa.table({"id": table.column("id"), "label": table.column("label"), "image": image})
    fix = base.set_column(2, "image", fixed)
    paths = {"as stored (LZ4_RAW)": train_file}
    for name, data, codec, level in (("LZ4_RAW level 6 (LZ4HC; `--compression-level 6`)", base, "lz4", 6),
                                     ("LZ4_RAW level 9 (LZ4HC)", base, "lz4", 9),
                                     ("uncompressed", base, "none", None),
                                     ("FIXED_LEN_BYTE_ARRAY, LZ4_RAW", fix, "lz4", None),
                                     ("FIXED_LEN_BYTE_ARRAY, uncompressed", fix, "none", None)):
        path = out / f"{len(paths)}.parquet"
        pq.write_table(data, path, row_group_size=8192, compression=codec, compression_level=level,
                       write_page_checksum=True)
        paths[name] = str(path)
    return paths


def decode_cpu_s(path: str, *, verify: bool, reps: int) -> float:
    """Median CPU seconds of reading every row group's ``image`` and ``label`` of ``path``."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, page_checksum_verification=verify)
    times = []
    for _ in range(reps + 1):
        start = time.thread_time()
        for rg in range(pf.num_row_groups):
            pf.read_row_group(rg, columns=["image", "label"], use_threads=False)
        times.append(time.thread_time() - start)
    return statistics.median(times[1:])


def raw_cpu_s(table: str, *, verify: bool, reps: int) -> float:
    """Median CPU seconds of the loader's own reader (``UnitReader.read``) over MNIST train's row groups of an
    ``UNCOMPRESSED`` table: image pages read raw (``loaders/pages.py``), labels by pyarrow."""
    import idxlake.loaders.plan as plans
    from idxlake.loaders import DeltaIterableDataset

    plans.PAGE_CHECKSUMS = verify
    try:
        ds = DeltaIterableDataset(table, split="train", columns=("image", "label"), cache_bytes=0)
        reader, times = ds._reader, []
        for _ in range(reps + 1):
            start = time.thread_time()
            for unit in ds.plan.units:
                reader.read(unit)
            times.append(time.thread_time() - start)
        return statistics.median(times[1:])
    finally:
        plans.PAGE_CHECKSUMS = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per point (median)")
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    from idxlake.pipeline.ingest.job import ingest
    from idxlake.pipeline.ingest.sources import bundled_mnist

    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        ingest(bundled_mnist(), f"{tmp}/mnist")
        train = glob.glob(f"{tmp}/mnist/split=train/*.parquet")[0]
        paths = layouts(train, Path(tmp))
        limit = limit_epoch_s(args.reps)
        print(f"in-memory limit epoch (batch 256, 1 thread): {limit * 1e3:.1f} ms; a cold epoch at 0.4x of it: "
              f"{2.5 * limit * 1e3:.1f} ms in all\n")
        print("| layout | image MB | page CRCs verified | decode CPU ms | vs the limit's epoch |")
        print("|---|---|---|---|---|")
        for name, path in paths.items():
            meta = pq.ParquetFile(path).metadata
            size = sum(meta.row_group(r).column(2).total_compressed_size for r in range(meta.num_row_groups))
            for verify in (True, False):
                cpu = decode_cpu_s(path, verify=verify, reps=args.reps)
                print(f"| {name} | {size / 1e6:.1f} | {'yes' if verify else 'no'} | {cpu * 1e3:.1f} | "
                      f"{cpu / limit:.2f}x |", flush=True)
        ingest(bundled_mnist(), f"{tmp}/unc", codec="UNCOMPRESSED")
        meta = pq.ParquetFile(glob.glob(f"{tmp}/unc/split=train/*.parquet")[0]).metadata
        size = sum(meta.row_group(r).column(2).total_compressed_size for r in range(meta.num_row_groups))
        for verify in (True, False):
            cpu = raw_cpu_s(f"{tmp}/unc", verify=verify, reps=args.reps)
            print(f"| `--codec UNCOMPRESSED` (one page per chunk), idxlake's raw page reader | {size / 1e6:.1f} | "
                  f"{'yes' if verify else 'no'} | {cpu * 1e3:.1f} | {cpu / limit:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
