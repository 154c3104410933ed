"""``idxlake sql | info | history | show | optimize | vacuum | ddl``: look into a table and keep it healthy.

Library functions (idxlake.pipeline.inspect.sql, .info, .render, .maintenance, .ddl) return data; this
module parses arguments and prints. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from idxlake.cli.common import (
    add_json_option,
    add_table_options,
    bounded_int,
    positive_int,
    storage_options,
    time_travel,
)

DEFAULT_SQL_LIMIT = 100
"""Rows printed by ``idxlake sql --format table`` unless ``--limit`` says otherwise."""

DEFAULT_TIMEOUT_S = 60
"""``--timeout`` default (keep equal to idxlake.pipeline.inspect.engines.DEFAULT_TIMEOUT_S; tested)."""

DEFAULT_MEMORY_MB = 1024
"""``--memory-mb`` default (keep equal to idxlake.pipeline.inspect.engines.DEFAULT_MEMORY_MB; tested)."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 86400 seconds, got {text}")
    return value


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"cancel the query after SECONDS (default {DEFAULT_TIMEOUT_S})")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, metavar="MB",
                   help=f"memory limit of the engine, and of the result, in MiB (default {DEFAULT_MEMORY_MB})")


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


MAX_SHOW = 10_000
"""Most images one `show` renders."""


def register(sub: Any) -> None:
    """Add the inspect and maintenance subcommands."""
    p = sub.add_parser("sql", help="run a read-only SQL query over a table (DataFusion or DuckDB)",
                       description="Run one read-only SQL statement (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE, "
                                   "SHOW) over the table, registered as NAME. Older versions: FROM NAME VERSION AS "
                                   "OF N, FROM NAME TIMESTAMP AS OF 'TS', NAME@vN. Binary columns print as "
                                   "<N bytes>; octet_length(image) gives byte sizes on both engines.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("query", help='SQL, e.g. "SELECT split, label, count(*) FROM mnist GROUP BY 1, 2 ORDER BY 1, 2"')
    p.add_argument("--name", default=None, help="table name in the query (default: last path component of TABLE "
                                                "as an identifier, e.g. my-table -> my_table)")
    p.add_argument("--engine", choices=["datafusion", "duckdb"], default="datafusion",
                   help="datafusion (default): DataFusion over the Delta table; "
                        "duckdb: DuckDB over the table's Arrow dataset")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
    p.add_argument("--limit", type=bounded_int(0, 2**62), default=None, metavar="N",
                   help=f"print at most N rows (0 = all; default {DEFAULT_SQL_LIMIT} for table, all for csv/json)")
    _add_limits(p)
    add_table_options(p, as_of=True)
    p.set_defaults(run=run_sql)

    p = sub.add_parser("info", help="what a table holds: schema, rows per split and label, files, lineage",
                       description="Describe one table version from its Delta log and Parquet footers: image "
                                   "shape and dtype, rows per split and label, pixel statistics, which splits "
                                   "are verified official data, files, and the lineage of the last ingest.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--json", action="store_true", help="print the stable JSON document (see schemas/README.md)")
    add_table_options(p, as_of=True)
    p.set_defaults(run=run_info)

    p = sub.add_parser("history", help="table versions with timestamps, operations and lineage",
                       description="List the table's commits, newest first: version, timestamp, operation "
                                   "and the idxlake lineage recorded with it.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--limit", type=bounded_int(1, 2**62), default=None, metavar="N", help="newest N versions only")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_table_options(p, version=False)
    p.set_defaults(run=run_history)

    p = sub.add_parser("show", help="look at the images: a labelled PNG grid, or text renderings",
                       description="Draw selected records as a labelled PNG grid (--png) or as text in the "
                                   "terminal. --split and --where select rows; a selection with no rows is an "
                                   "error.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--split", default=None, help="only this split")
    p.add_argument("--where", default=None, metavar="SQL", help="SQL predicate, e.g. \"label = 3 AND id < 500\"")
    p.add_argument("--limit", type=bounded_int(1, MAX_SHOW), default=16, metavar="N",
                   help=f"number of images (default 16, at most {MAX_SHOW})")
    p.add_argument("--png", default=None, metavar="FILE", help="write a PNG grid instead of printing text")
    p.add_argument("--columns", type=bounded_int(1, 1000), default=None, metavar="C",
                   help="images per grid row (PNG; default 8)")
    p.add_argument("--scale", type=bounded_int(1, 64), default=3, metavar="S", help="PNG magnification (default 3)")
    p.add_argument("--width", type=bounded_int(1, 1000), default=28, metavar="W",
                   help="characters per image in text (default 28)")
    p.add_argument("--engine", choices=["datafusion", "duckdb"], default="datafusion",
                   help="engine evaluating --where")
    p.add_argument("--name", default=None, help="table name usable in --where subqueries")
    _add_limits(p)
    add_table_options(p, as_of=True)
    p.set_defaults(run=run_show)

    p = sub.add_parser("optimize", help="compact small files (e.g. after appends); content and id order kept",
                       description="Rewrite each split whose files are smaller than the target into as few "
                                   "files as the target allows, keeping the rows, their id order and the row "
                                   "groups, in one Delta commit. Old files stay for time travel until vacuum.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--target-mb", type=positive_int, default=None, metavar="MB",
                   help="uncompressed image MiB per file (default 128)")
    p.add_argument("--compression-level", type=int, default=None, metavar="N",
                   help="level of the files' codec (default: its own; Parquet does not record the level an "
                        "ingest used, so give its --compression-level again)")
    add_json_option(p, "what was compacted")
    add_table_options(p, version=False)
    p.set_defaults(run=run_optimize)

    p = sub.add_parser("vacuum", help="delete files no version within the retention needs",
                       description="Delete data files removed from the table more than the retention ago "
                                   "(default 168 h) and so needed by no recent version. Versions older than "
                                   "the retention can no longer be read afterwards.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--retain-hours", type=bounded_int(0, 10**7), default=None, metavar="H",
                   help="retention in hours (default: the table's delta.deletedFileRetentionDuration or 168)")
    p.add_argument("--dry-run", action="store_true", help="only list the files that would be deleted")
    p.add_argument("--force", action="store_true",
                   help="allow a retention below 168 h (not needed with --dry-run, which deletes nothing)")
    p.add_argument("--full", action="store_true", help="also delete files the log never referenced "
                                                       "(orphans of failed writes)")
    add_json_option(p, "the files deleted (or that would be)")
    add_table_options(p, version=False)
    p.set_defaults(run=run_vacuum)

    p = sub.add_parser("ddl", help="Spark SQL that registers the table in a metastore / Unity Catalog",
                       description="Print the Spark SQL (CREATE TABLE ... USING DELTA LOCATION ...) that "
                                   "registers the table in a Hive metastore or Unity Catalog, with its "
                                   "description as the table comment.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--name", default=None, metavar="CATALOG.SCHEMA.TABLE",
                   help="name to register (default: the table's name)")
    add_table_options(p, version=False)
    p.set_defaults(run=run_ddl)


def run_sql(args: argparse.Namespace) -> int:
    """Run the query and print the result."""
    from idxlake.cli.formatting import csv_text, json_rows, text_table
    from idxlake.pipeline.inspect.sql import display_table, query

    limit = args.limit if args.limit is not None else (DEFAULT_SQL_LIMIT if args.format == "table" else 0)
    if limit < 0:
        from idxlake.schemas import QueryError

        raise QueryError(f"--limit must be >= 0, got {limit}")
    version, as_of = time_travel(args)
    result = query(args.table, args.query, engine=args.engine, name=args.name, version=version, as_of=as_of,
                   storage_options=storage_options(args), max_rows=limit or None, timeout=args.timeout,
                   memory_mb=args.memory_mb)
    table = display_table(result.table)
    if args.format == "csv":
        _out(csv_text(table))
    elif args.format == "json":
        _out(json_rows(table))
    else:
        _out(text_table(table))
        _out(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")
    if result.truncated:
        print(f"idxlake sql: showing the first {limit} rows; --limit 0 prints all", file=sys.stderr)
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the info document."""
    from idxlake.cli.formatting import info_text, json_document
    from idxlake.pipeline.inspect.info import table_info

    version, as_of = time_travel(args)
    info = table_info(args.table, version=version, as_of=as_of, storage_options=storage_options(args))
    _out(json_document(info) if args.json else info_text(info))
    return 0


def run_history(args: argparse.Namespace) -> int:
    """Print the table's commits, newest first."""
    from idxlake.cli.formatting import history_text, json_document
    from idxlake.pipeline.inspect.info import table_history

    entries = table_history(args.table, limit=args.limit, storage_options=storage_options(args))
    _out(json_document(entries) if args.json else history_text(entries))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Draw the selected images as a PNG grid or as text."""
    from idxlake.pipeline.inspect.render import (
        caption_lines,
        decode_images,
        display_pixels,
        png_grid,
        select_images,
        text_grid,
    )
    from idxlake.schemas import QueryError

    if args.limit < 1 or args.scale < 1 or args.width < 1 or (args.columns is not None and args.columns < 1):
        raise QueryError("--limit, --scale, --width and --columns must be positive")
    version, as_of = time_travel(args)
    rows, meta = select_images(args.table, split=args.split, where=args.where, limit=args.limit,
                               engine=args.engine, name=args.name, version=version, as_of=as_of,
                               storage_options=storage_options(args), timeout=args.timeout,
                               memory_mb=args.memory_mb)
    if rows.num_rows == 0:
        pinned = f"as of {as_of}" if as_of else f"version {'latest' if version is None else version}"
        where = " AND ".join(x for x in (f"split = {args.split!r}" if args.split else "", args.where or "") if x)
        raise QueryError(f"{args.table}: no rows match{' ' + where if where else ''}"
                         f" ({pinned}); "
                         "widen --where or check the split with `idxlake info`")
    images = decode_images(rows.column("image"), meta)
    pixels = [display_pixels(image) for image in images]
    captions = [caption_lines(r, meta.class_names) for r in rows.select(["split", "id", "label"]).to_pylist()]
    if args.png:
        grid = png_grid(pixels, captions, columns=args.columns, scale=args.scale)
        try:
            grid.save(args.png, format="PNG")
        except OSError as exc:
            raise QueryError(f"cannot write {args.png}: {exc}") from exc
        print(f"wrote {args.png}: {rows.num_rows} images, {grid.width}x{grid.height} px")
    else:
        columns = shutil.get_terminal_size((100, 24)).columns
        _out(text_grid(pixels, captions, width=args.width, total_width=columns))
    return 0


def run_optimize(args: argparse.Namespace) -> int:
    """Compact and report files before/after."""
    from idxlake.pipeline.inspect.maintenance import optimize

    target = args.target_mb << 20 if args.target_mb else None
    result = optimize(args.table, target_file_bytes=target, compression_level=args.compression_level,
                      storage_options=storage_options(args))
    if args.json:
        from idxlake.cli.formatting import json_document

        _out(json_document({"table": result.table, "version_before": result.version_before,
                            "version": result.version, "compacted": result.compacted,
                            "files_before": dict(result.files_before), "files_after": dict(result.files_after),
                            "rows_rewritten": result.rows_rewritten, "seconds": result.seconds}))
        return 0
    before, after = sum(result.files_before.values()), sum(result.files_after.values())
    if not result.compacted:
        print(f"{result.table}: nothing to compact ({before} files; version {result.version} unchanged)")
        return 0
    for split in result.compacted:
        print(f"  {split:<8} {result.files_before[split]} files -> {result.files_after.get(split, 0)}")
    print(f"{result.table}: {before} files -> {after}, {result.rows_rewritten:,} rows rewritten in "
          f"{result.seconds:.2f} s; version {result.version_before} -> {result.version}")
    print("old files stay for time travel until `idxlake vacuum` (after the 168 h retention)")
    return 0


def run_vacuum(args: argparse.Namespace) -> int:
    """Delete (or list) unreferenced files."""
    from idxlake.pipeline.inspect.maintenance import vacuum

    result = vacuum(args.table, retain_hours=args.retain_hours, dry_run=args.dry_run, force=args.force,
                    full=args.full, storage_options=storage_options(args))
    if args.json:
        from idxlake.cli.formatting import json_document

        _out(json_document({"table": result.table, "dry_run": result.dry_run,
                            "retain_hours": result.retain_hours, "files": list(result.files)}))
        return 0
    retention = f"{result.retain_hours} h" if result.retain_hours is not None else "the table's, default 168 h"
    verb = "would delete" if result.dry_run else "deleted"
    print(f"{result.table}: {verb} {len(result.files)} files (retention {retention})")
    for path in result.files:
        print(f"  {path}")
    return 0


def run_ddl(args: argparse.Namespace) -> int:
    """Print the Spark registration DDL."""
    from idxlake.pipeline.inspect.ddl import spark_ddl

    _out(spark_ddl(args.table, name=args.name, storage_options=storage_options(args)))
    return 0
