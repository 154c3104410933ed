"""``idxlake ingest`` and ``idxlake export``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from idxlake.cli.common import (
    add_json_option,
    add_table_options,
    is_tty,
    key_value,
    non_empty,
    output_dir,
    parse_storage_options,
    positive_int,
    storage_options,
    time_travel,
)

if TYPE_CHECKING:
    from idxlake.pipeline.ingest.job import IngestResult


def register(sub: Any) -> None:
    """Add the ``ingest`` and ``export`` subcommands."""
    p = sub.add_parser("ingest", help="ingest IDX files into a Delta table (default source: bundled MNIST)",
                       usage="idxlake ingest [-h] [options] [SOURCE_DIR | FILE ...] TABLE",
                       description="Decode and validate IDX files (.gz or raw) and write them to a Delta "
                                   "table in one atomic commit.")
    p.add_argument("paths", nargs="+", metavar="[SOURCE_DIR | FILE ...] TABLE", type=non_empty,
                   help="optional source: one directory, or files (default: the bundled MNIST); then the table "
                        "path or URI")
    p.add_argument("--dataset", default=None,
                   help="registered dataset name (mnist, fashion-mnist, kmnist, emnist-*) or 'generic'; "
                        "default: inferred from hashes and file names")
    p.add_argument("--mode", choices=["replace", "append", "overwrite", "error"], default="replace",
                   help="replace (default): replace exactly the ingested splits, no-op if unchanged; "
                        "append: add rows; overwrite: replace the whole table; error: refuse an existing table")
    p.add_argument("--codec", choices=["LZ4_RAW", "ZSTD", "SNAPPY", "UNCOMPRESSED"], default=None,
                   help="Parquet codec (default LZ4_RAW)")
    p.add_argument("--compression-level", type=int, default=None, metavar="N",
                   help="the codec's level (default: its own); LZ4_RAW 1-12, where 3 and above are LZ4HC: "
                        "slower to write, smaller and faster for the loader to decode (6 is a good trade)")
    p.add_argument("--row-group-rows", type=positive_int, default=None,
                   help="rows per Parquet row group (default 8192)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-duplicate", action="store_true",
                   help="with --mode append: add files the split already holds (refused by default)")
    p.add_argument("--source-option", action="append", metavar="K=V", default=None, type=key_value,
                   help="storage option for a SOURCE on an object store (repeatable; default: the table's "
                        "--storage-option values when both are on the same store)")
    add_json_option(p, "the ingest summary")
    add_table_options(p, version=False)
    p.set_defaults(run=run_ingest)

    e = sub.add_parser("export", help="write a table back to IDX .gz files (byte-identical content), "
                                      "or as a plain-Parquet snapshot of one version",
                       description="Write each split of a table version back to IDX files (the canonical file "
                                   "names for registered datasets), streaming one row group at a time. The "
                                   "uncompressed content is byte-identical to the ingested sources. With "
                                   "--format parquet: the live rows of one version as plain Parquet (same columns, "
                                   "field metadata and row groups), for readers without Delta support.")
    e.add_argument("table", help="table path or URI")
    e.add_argument("outdir", type=output_dir, help="directory to write the IDX files into (created if missing)")
    e.add_argument("--format", choices=["idx", "parquet"], default="idx",
                   help="idx (default): IDX files; parquet: a plain-Parquet snapshot of one version")
    e.add_argument("--split", action="append", default=None, help="split to export (repeatable; default all)")
    e.add_argument("--raw", action="store_true", help="write uncompressed IDX instead of .gz")
    add_json_option(e, "the files written")
    add_table_options(e, as_of=True)
    e.set_defaults(run=run_export)


def run_ingest(args: argparse.Namespace) -> int:
    """Run an ingest and print its summary."""
    from idxlake.pipeline.ingest.job import ingest
    *sources, table = args.paths
    source = None if not sources else sources[0] if len(sources) == 1 else sources
    kwargs: dict[str, Any] = {}
    if args.codec:
        kwargs["codec"] = args.codec
    if args.row_group_rows:
        kwargs["row_group_rows"] = args.row_group_rows
    if args.compression_level is not None:
        kwargs["compression_level"] = args.compression_level
    bar = None
    if is_tty() and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="ingest", file=sys.stderr, leave=False)
        kwargs["progress"] = bar.update
        kwargs["on_total"] = lambda total: setattr(bar, "total", total)
    try:
        result = ingest(source, table, dataset=args.dataset, mode=args.mode,
                        storage_options=storage_options(args), allow_duplicate=args.allow_duplicate,
                        source_storage_options=parse_storage_options(args.source_option), **kwargs)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        from idxlake.cli.formatting import json_document

        sys.stdout.write(json_document(ingest_document(result)))
        return 0
    rate = result.bytes_read / 1e6 / result.seconds if result.seconds else 0.0
    print(f"table:    {result.table}")
    print(f"dataset:  {result.dataset}")
    for split, n in result.rows.items():
        print(f"  {split:<6} {n:>9,} rows  from {', '.join(result.sources.get(split, []))}")
        print(f"         sources: {'match the published hashes' if result.verified else 'not verified'}; "
              f"split {split} at this version: "
              f"{'verified official data' if result.split_verified.get(split) else 'not verified official data'}")
    if result.noop:
        print(f"version:  {result.version} (unchanged: the table already holds these sources)")
    else:
        print(f"version:  {result.version} (mode {result.mode})")
    print(f"time:     {result.seconds:.2f} s, {rate:.0f} MB/s of IDX data")
    return 0


def ingest_document(result: IngestResult) -> dict[str, Any]:
    """The ``ingest --json`` document (stable keys, documented in the README)."""
    return {
        "table": result.table, "version": result.version, "mode": result.mode, "dataset": result.dataset,
        "noop": result.noop, "seconds": result.seconds, "bytes_read": result.bytes_read,
        "splits": {split: {"rows": n, "sources": list(result.sources.get(split, [])),
                           "sources_verified": result.verified,
                           "split_verified": bool(result.split_verified.get(split))}
                   for split, n in result.rows.items()},
    }


def run_export(args: argparse.Namespace) -> int:
    """Export a table to IDX files or a plain-Parquet snapshot."""
    from idxlake.pipeline.export import export

    if args.format == "parquet":
        return _export_parquet(args)
    version, as_of = time_travel(args)
    done = export(args.table, args.outdir, splits=args.split, version=version, as_of=as_of,
                  storage_options=storage_options(args), compress=not args.raw)
    if args.json:
        from idxlake.cli.formatting import json_document

        sys.stdout.write(json_document({"table": args.table, "outdir": str(args.outdir), "splits": {
            d.split: {"rows": d.rows, "images": str(d.images), "labels": str(d.labels), "verified": d.verified}
            for d in done}}))
        return 0
    for d in done:
        check = ("sha256 equals the ingested sources" if d.verified
                 else "not compared: the split has no single ingested source pair")
        print(f"{d.split}: {d.rows:,} rows -> {d.images} , {d.labels} ({check})")
    return 0


def _export_parquet(args: argparse.Namespace) -> int:
    """``export --format parquet``: the live rows of one version as plain Parquet."""
    from idxlake.pipeline.export_parquet import export_parquet

    version, as_of = time_travel(args)
    snap = export_parquet(args.table, args.outdir, splits=args.split, version=version, as_of=as_of,
                          storage_options=storage_options(args))
    if args.json:
        from idxlake.cli.formatting import json_document

        sys.stdout.write(json_document({"table": args.table, "outdir": str(args.outdir), "version": snap.version,
                                        "format": "parquet", "files": list(snap.files), "rows": dict(snap.rows),
                                        "row_groups": snap.row_groups}))
        return 0
    rows = ", ".join(f"{split} {n:,}" for split, n in snap.rows.items())
    print(f"version {snap.version}: {rows} rows in {len(snap.files)} files, {snap.row_groups} row groups -> {snap.out}")
    return 0
