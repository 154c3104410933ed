"""``idxlake verify TABLE``: the table's fsck (files, footers, row counts, page checksums, lineage)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from idxlake.cli.common import add_table_options, storage_options


def register(sub: Any) -> None:
    """Add the ``verify`` subcommand."""
    p = sub.add_parser(
        "verify", help="check that a table version reads back exactly as ingested (exit 0 only if all holds)",
        description="Check every live data file of a version: it exists with the logged size, its footer "
                    "reads, its row counts match the log, every page's CRC checksum verifies, and each "
                    "split's image/label payload sha256 equals the lineage of its ingest. Orphan files and "
                    "stale temporary log files are listed (removed by `idxlake vacuum --full`). Exit 0 when "
                    "every check holds, 1 when one fails.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_table_options(p)
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """Verify and print the report; 1 when a check failed."""
    from idxlake.cli.formatting import json_document
    from idxlake.pipeline.inspect.verify import CHECKS, verify_table

    report = verify_table(args.table, version=args.version, storage_options=storage_options(args))
    if args.json:
        sys.stdout.write(json_document(report.to_json()))
    else:
        print(f"{report.table}@v{report.version}: {report.files} files, {report.rows:,} rows")
        for check in CHECKS:
            gaps = report.not_compared.get(check, [])
            state = "FAILED" if check in report.failed else f"not compared: {'; '.join(gaps)}" if gaps else "ok"
            print(f"  {check:<11} {state}")
        for problem in report.problems:
            print(f"  problem: {problem}")
        for note in report.notes:
            print(f"  note: {note}")
        for path in report.orphans:
            print(f"  orphan (not in the log): {path}")
        for path in report.stale_log_files:
            print(f"  stale temporary log file: {path}")
        print(f"FAILED: {len(report.problems)} problem(s)" if not report.ok else "verified: every check holds"
              if report.complete else f"no problem found, but NOT verified: {', '.join(report.not_compared)} could "
              "not compare everything (above)")
    return 0 if report.ok else 1
