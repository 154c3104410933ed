"""Usage errors are one line naming the command, whatever argparse or the OS says; numbers are bounded
before they reach delta-rs; options may sit between SOURCE and TABLE; Rust's logger stays quiet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SyntheticSource

from idxlake.cli import main


def _usage(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("argv", "line"), [
    (["info", "{t}", "--version", "x"], "idxlake info: error: argument --version: expected an integer, got 'x'"),
    (["history", "{t}", "--version", "0"], "idxlake history: error: unrecognized arguments: --version 0"),
    (["info", "{t}", "--version", "99999999999999999999999"], "idxlake info: error: argument --version: must be <="),
    (["sql", "{t}", "SELECT 1", "--version", "-1"], "idxlake sql: error: argument --version: must be >= 0, got -1"),
    (["history", "{t}", "--limit", "99999999999999999999"], "idxlake history: error: argument --limit: must be <="),
    (["vacuum", "{t}", "--retain-hours", "9" * 30], "idxlake vacuum: error: argument --retain-hours: must be <="),
    (["show", "{t}", "--scale", "2000"], "idxlake show: error: argument --scale: must be <= 64"),
    (["train", "{t}", "--workers", "100000"], "idxlake train: error: argument --workers: must be <= 64"),
    (["sql", "{t}", "SELECT 1", "--timeout", "0"], "idxlake sql: error: argument --timeout: must be > 0"),
])
def test_usage_errors_are_one_line_of_the_command(argv: list[str], line: str, capsys: pytest.CaptureFixture[str],
                                                  synthetic_table: tuple[str, SyntheticSource]) -> None:
    err = _usage(capsys, *[a.format(t=synthetic_table[0]) for a in argv])
    assert err.startswith(line) and err.rstrip().endswith(f"(see `idxlake {argv[0]} --help`)"), err


def test_a_huge_version_is_answered_at_once(synthetic_table: tuple[str, SyntheticSource],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """delta-rs walks the log one version at a time towards a version it was asked for: 2**63-1 ran for
    minutes (8.5 s for 60 million)."""
    from idxlake.schemas import TableNotFoundError, snapshot

    started = time.monotonic()
    for version in (2**63 - 1, 60_000_000):
        with pytest.raises(TableNotFoundError, match=rf"table has version 0 only .*; version {version} does not"):
            snapshot(synthetic_table[0], version=version)
    assert main(["sql", synthetic_table[0], "SELECT count(*) FROM t", "--version", str(2**63 - 1)]) == 2
    assert time.monotonic() - started < 10 and capsys.readouterr().err.count("\n") == 1


def test_options_between_source_and_table(tmp_path: Path, synthetic_source: SyntheticSource,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "t")
    assert main(["ingest", str(synthetic_source.root), "--mode", "error", "--no-progress", table]) == 0
    assert "version:  0" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["export", "{t}", "{f}"], ["export", "{t}", "{f}", "--format", "parquet"],
                                  ["download", "mnist", "{f}", "--mirror", "http://127.0.0.1:9/"]])
def test_an_output_directory_that_is_a_file_is_a_usage_error(argv: list[str], tmp_path: Path,
                                                             synthetic_table: tuple[str, SyntheticSource],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plainfile"
    plain.write_text("x")
    err = _usage(capsys, *[a.format(t=synthetic_table[0], f=plain) for a in argv])
    assert f"{plain} is a file; give a directory (it is created if missing)" in err


def test_a_path_error_of_the_os_is_one_line_exit_2(tmp_path: Path, synthetic_table: tuple[str, SyntheticSource],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An OS error naming a path the user gave (a folder to create below a plain file) is bad input: it was
    ``idxlake export: NotADirectoryError: [Errno 20] ...`` with exit 1."""
    plain = tmp_path / "plainfile"
    plain.write_text("x")
    rc = main(["export", synthetic_table[0], str(plain / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("idxlake export: error: ") and "Not a directory" in err


def test_rust_logs_are_quiet_unless_debug(synthetic_table: tuple[str, SyntheticSource],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """delta-rs' Rust logger printed multi-line WARN records (IMDS probes) before our one line."""
    monkeypatch.delenv("RUST_LOG", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    code = ("import os, sys; from idxlake.cli import main; rc = main(sys.argv[1:]); "
            "print(os.environ.get('RUST_LOG'))")
    for argv, expected in ((["info", synthetic_table[0]], "error"), (["--debug", "info", synthetic_table[0]], "None")):
        run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=60)
        assert run.stdout.splitlines()[-1] == expected
    env["RUST_LOG"] = "warn"  # the user's own setting wins
    run = subprocess.run([sys.executable, "-c", code, "info", synthetic_table[0]], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.stdout.splitlines()[-1] == "warn"


def test_ingest_usage_and_source_messages(tmp_path: Path, synthetic_source: SyntheticSource,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The usage read ``[SOURCE] TABLE [[SOURCE] TABLE ...]``; two source folders were "no such file(s)"."""
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert capsys.readouterr().out.startswith("usage: idxlake ingest [-h] [options] [SOURCE_DIR | FILE ...] TABLE\n")
    root = str(synthetic_source.root)
    assert main(["ingest", root, root, str(tmp_path / "t")]) == 2
    assert "directories among several sources; give one source directory, or the files themselves" in \
        capsys.readouterr().err


@pytest.mark.parametrize("point", ["-1", str(2**63 - 1), "v9"])
def test_diff_versions_out_of_range_name_the_range(point: str, synthetic_table: tuple[str, SyntheticSource],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``-1`` and 19-digit versions were reported as "is not a timestamp"."""
    assert main(["diff", synthetic_table[0], point]) == 2
    err = capsys.readouterr().err
    assert "table has version 0 only" in err and "does not exist" in err and "timestamp;" not in err
