"""``idxlake download DATASET DIR``: the canonical files of a registered dataset, verified before they are kept."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from idxlake.cli.common import add_json_option, is_tty, output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download", help="download a registered dataset's IDX files, verified against the registry",
        description="Fetch the canonical files of a registered dataset from its published mirrors (or --mirror), "
                    "resuming cut connections with HTTP Range requests. Each file is verified (md5 of the .gz, "
                    "or sha256 of the uncompressed payload for re-compressed mirrors) before it is renamed into "
                    "DIR; a bad file is never kept.")
    parser.add_argument("dataset", help="registered dataset name, e.g. mnist, fashion-mnist, kmnist")
    parser.add_argument("directory", metavar="DIR", type=output_dir, help="directory to download into (created)")
    parser.add_argument("--mirror", action="append", default=None, metavar="URL",
                        help="base URL to try instead of the published mirrors (repeatable, tried in order)")
    add_json_option(parser, "the files kept")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Download, verify, and report each file."""
    from idxlake.pipeline.ingest.download import download

    kwargs: dict[str, Any] = {}
    bar = None
    if is_tty() and not args.no_progress and not args.json:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=args.dataset, file=sys.stderr, leave=False)
        kwargs["progress"] = bar.update
        kwargs["on_file"] = bar.set_description
    try:
        files = download(args.dataset, args.directory, mirrors=args.mirror, **kwargs)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        from idxlake.cli.formatting import json_document

        sys.stdout.write(json_document({"dataset": args.dataset, "directory": args.directory, "files": [
            {"name": f.name, "path": str(f.path), "bytes": f.bytes, "verified": f.verified, "source": f.source}
            for f in files]}))
        return 0
    for f in files:
        print(f"{f.name:<32} {f.bytes:>11,} B  verified by {f.verified:<6}  {f.source}")
    return 0
