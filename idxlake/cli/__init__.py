"""The ``idxlake`` command line: the one place that ties pipeline and loaders together.

Subcommands live in small modules, imported only to build their parsers; each
imports its heavy dependencies inside its ``run`` function, so ``idxlake sql``
never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from idxlake.schemas import IdxlakeError

COMMAND_MODULES: tuple[str, ...] = (
    "idxlake.cli.download_cmd",
    "idxlake.cli.ingest_cmd",
    "idxlake.cli.inspect_cmd",
    "idxlake.cli.train_cmd",
)
"""Modules that each define ``register(subparsers)``; the registry of subcommands."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from idxlake.schemas.version import __version__

    parser = argparse.ArgumentParser(
        prog="idxlake", description="IDX image datasets into Delta Lake and back into PyTorch training.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # Global --version (before the command) prints the release; `COMMAND --version N` is time travel.
    parser.add_argument("-V", "--version", action="version", version=f"idxlake {__version__}",
                        help="print the idxlake version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage, 1 anything else)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        return int(args.run(args) or 0)
    except IdxlakeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"idxlake {args.command}: error: {exc}", file=sys.stderr)
        # Bad input or usage is 2; an environment failure (e.g. a concurrent commit) is 1.
        return EXIT_FAILURE if isinstance(exc, RuntimeError) else EXIT_USAGE
    except KeyboardInterrupt:
        print(f"idxlake {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"idxlake {args.command}: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_FAILURE


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
