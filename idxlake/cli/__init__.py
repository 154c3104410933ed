"""The ``idxlake`` command line: the one place that ties pipeline and loaders together.

Subcommands live in small modules, imported only to build their parsers; each
imports its heavy dependencies inside its ``run`` function, so ``idxlake sql``
never pays for importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import NoReturn

from idxlake.cli.messages import CleanFormatter, StderrHandler, one_line, strip_ansi
from idxlake.schemas import IdxlakeError

COMMAND_MODULES: tuple[str, ...] = (
    "idxlake.cli.download_cmd",
    "idxlake.cli.ingest_cmd",
    "idxlake.cli.inspect_cmd",
    "idxlake.cli.diff_cmd",
    "idxlake.cli.train_cmd",
    "idxlake.cli.verify_cmd",
)
"""Modules that each define ``register(subparsers)``; the registry of subcommands."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
"""OS errors naming a path: e.g. an OUTDIR that is a plain file (exit 2, one line)."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are ONE line, ``idxlake <command>: error: ...`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {strip_ansi(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from idxlake.schemas.version import __version__

    parser = OneLineParser(
        prog="idxlake", description="IDX image datasets into Delta Lake and back into PyTorch training.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # Global --version (before the command) prints the release; `COMMAND --version N` is time travel.
    parser.add_argument("-V", "--version", action="version", version=f"idxlake {__version__}",
                        help="print the idxlake version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


@contextlib.contextmanager
def _logging_to_stderr(debug: bool) -> Iterator[None]:
    """Log records (ANSI stripped) to stderr for the duration of one command; restore the root logger after."""
    root = logging.getLogger()
    handler = StderrHandler()
    handler.setFormatter(CleanFormatter("%(levelname)s %(name)s: %(message)s"))
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def _debug_trace(debug: bool) -> None:
    if debug:
        sys.stderr.write(strip_ansi(traceback.format_exc()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage, 1 anything else).

    Every error is ONE line on stderr, without ANSI escapes; ``--debug`` adds the traceback.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser: `idxlake history: error: unrecognized arguments ...`
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = commands.choices[args.command]
        if args.command == "ingest" and not any(e.startswith("-") for e in extra):
            args.paths += extra  # options between SOURCE and TABLE: `ingest SRC --mode append TABLE`
        else:
            command.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.debug:  # delta-rs' Rust logger writes warnings (IMDS probes...) straight to stderr
        os.environ.setdefault("RUST_LOG", "error")
    try:
        with _logging_to_stderr(args.debug):
            return int(args.run(args) or 0)
    except IdxlakeError as exc:
        _debug_trace(args.debug)
        print(f"idxlake {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        # Bad input or usage is 2; an environment failure (e.g. a concurrent commit) is 1.
        return EXIT_FAILURE if isinstance(exc, RuntimeError) else EXIT_USAGE
    except KeyboardInterrupt:
        print(f"idxlake {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        _debug_trace(args.debug)
        if isinstance(exc, PATH_ERRORS) and exc.filename is not None:  # a path given that cannot be used: bad input
            print(f"idxlake {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        hint = "" if args.debug else " (rerun with --debug for details)"
        print(f"idxlake {args.command}: {type(exc).__name__}: {one_line(str(exc))}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def entry() -> None:
    """Console-script entry point."""
    code = main()
    supervisor = sys.modules.get("idxlake.pipeline.inspect.interrupts")
    if supervisor is not None and supervisor.abandoned():
        # A stopped DataFusion statement still inside one long poll: exit now rather than wait for
        # it, and without interpreter finalisation, which that thread would race for the GIL.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
