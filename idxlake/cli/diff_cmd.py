"""``idxlake diff TABLE [A] [B]``: what changed between two versions (default: previous -> latest)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from idxlake.cli.common import add_table_options, storage_options


def register(sub: Any) -> None:
    """Add the ``diff`` subcommand."""
    p = sub.add_parser("diff", help="what changed between two table versions: rows, files, metadata, lineage",
                       description="Compare version A with version B (default: the previous version with the "
                                   "latest). A and B are versions (3 or v3) or timestamps. Rows are counted per "
                                   "split and label from the Delta log and the id/label columns of the files "
                                   "that changed; images are read only with --content.")
    p.add_argument("table", help="table path or URI")
    p.add_argument("a", nargs="?", default=None, metavar="A", help="older version or timestamp (default: B - 1)")
    p.add_argument("b", nargs="?", default=None, metavar="B", help="newer version or timestamp (default: latest)")
    p.add_argument("--content", action="store_true",
                   help="also compare the image bytes (sha256) of the rows in changed files")
    p.add_argument("--json", action="store_true", help="print the JSON document (see README)")
    add_table_options(p, version=False)
    p.set_defaults(run=run_diff)


def _signed(n: int, sign: str) -> str:
    return f"{sign}{n:,}" if n else "0"


def diff_text(doc: dict[str, Any]) -> str:
    """``idxlake diff`` for people."""
    from idxlake.cli.formatting import _grid, human_bytes, lineage_summary

    a, b, rows = doc["from"], doc["to"], doc["rows"]
    lines = [f"{doc['table']}: version {a['version']} ({a['timestamp']}) -> version {b['version']} "
             f"({b['timestamp']})",
             f"rows:     {rows['from']:,} -> {rows['to']:,}: {_signed(rows['added'], '+')} added, "
             f"{_signed(rows['removed'], '-')} removed, {rows['rewritten']:,} rewritten into new files"
             + (f", {rows['changed']:,} changed (label or image)" if doc["content"] else
                " (images not compared; --content compares them)")]
    table = []
    for split, entry in doc["splits"].items():
        for e in entry["labels"]:
            if any(e[k] for k in ("added", "removed")) or e["from"] != e["to"] or e["rewritten"]:
                table.append([split, e["label"], e["from"], e["to"], _signed(e["added"], "+"),
                              _signed(e["removed"], "-"), e["rewritten"]])
    if table:
        lines += ["", *_grid(["split", "label", "from", "to", "added", "removed", "rewritten"], table)]
    files = doc["files"]
    lines += ["", f"files:    +{len(files['added'])} added, -{len(files['removed'])} removed, {files['kept']} kept"]
    for sign, key in (("+", "added"), ("-", "removed")):
        lines += [f"  {sign} {f['path']}  {f['rows']:,} rows, {human_bytes(f['bytes'])}" for f in files[key]]
    if doc["metadata"]:
        lines += ["", "metadata:"]
        lines += [f"  {m['key']}: {_short(m['from'])} -> {_short(m['to'])}" for m in doc["metadata"]]
    else:
        lines += ["", "metadata: unchanged"]
    lines += ["", "commits:"]
    lines += [f"  {c['version']}  {c['timestamp']}  {c['operation']}  {lineage_summary(c['lineage'])}".rstrip()
              for c in doc["commits"]]
    return "\n".join(lines) + "\n"


def _short(value: Any, width: int = 70) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 3] + "..."


def run_diff(args: argparse.Namespace) -> int:
    """Print the diff."""
    from idxlake.cli.formatting import json_document
    from idxlake.pipeline.inspect.diff import table_diff

    doc = table_diff(args.table, args.a, args.b, content=args.content, storage_options=storage_options(args))
    sys.stdout.write(json_document(doc) if args.json else diff_text(doc))
    return 0
