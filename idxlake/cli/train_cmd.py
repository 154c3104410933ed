"""``idxlake train TABLE``: the reference CNN trained straight from the table (torch imported lazily)."""

from __future__ import annotations

import argparse
import sys

from idxlake.cli.common import add_json_option, add_table_options, bounded_int, storage_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the reference CNN from a table and report test accuracy",
        description="Train conv32-pool-conv64-pool-linear (Adam 1e-3) on the table's train split, streamed "
                    "with loaders.DeltaIterableDataset, then evaluate on its test split. Under "
                    "`torchrun --nproc_per_node=N` it trains with DDP (gloo on CPU); only rank 0 prints.")
    parser.add_argument("table", help="table path or URI")
    parser.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="rows per batch and rank (default 64, as PyTorch's examples/mnist)")
    parser.add_argument("--workers", type=bounded_int(0, 64), default=0, metavar="N",
                        help="DataLoader workers per rank (default 0: read in the training process)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="train on at most N samples per epoch and test on at most N (quick runs)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="model and shuffle seed (default 0)")
    add_json_option(parser, "the per-epoch figures and the test accuracy (rank 0 only)")
    add_table_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train and print per-epoch loss and throughput, then ``test accuracy: 0.xxxx``."""
    from idxlake.schemas.extras import require

    require("torch", purpose="idxlake train")
    from idxlake.loaders.train import train

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    result = train(args.table, epochs=args.epochs, batch_size=args.batch_size, workers=args.workers,
                   limit=args.limit, seed=args.seed, version=args.version, storage_options=storage_options(args),
                   log=log)
    if args.json and result.rank == 0:
        from idxlake.cli.formatting import json_document

        sys.stdout.write(json_document({
            "table": args.table, "version": result.version, "world_size": result.world_size,
            "epochs": [{"epoch": i + 1, "loss": loss, "samples_per_s": rate}
                       for i, (loss, rate) in enumerate(zip(result.losses, result.samples_per_s, strict=True))],
            "test_accuracy": result.accuracy}))
    return 0
