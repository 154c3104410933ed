"""CLI conventions: --version, descriptions and help, --json everywhere, one clean error line, exit codes."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SyntheticSource

from idxlake import ingest
from idxlake.cli import build_parser, main
from idxlake.cli.messages import one_line, strip_ansi
from idxlake.schemas import QueryError
from idxlake.schemas.version import __version__


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"idxlake {command}: error: "), err
    assert "Traceback" not in err and "\x1b" not in err
    return lines[0]


def test_global_version_prints_the_release_and_subcommand_version_is_time_travel(
        capsys: pytest.CaptureFixture[str], synthetic_table: tuple[str, SyntheticSource]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"idxlake {__version__}"
    table, _ = synthetic_table
    rc, out, _ = _run(capsys, "sql", table, "SELECT count(*) AS n FROM t", "--name", "t", "--version", "0")
    assert rc == 0 and "400" in out


def test_python_dash_m_idxlake_is_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "idxlake", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"idxlake {__version__}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_a_description_and_every_positional_has_help() -> None:
    for name, sub in _subparsers().items():
        assert sub.description, f"`idxlake {name}` has no description"
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, f"`idxlake {name}`: positional {action.dest!r} has no help"


@pytest.mark.parametrize("command", ["ingest", "export", "optimize", "vacuum", "train", "info", "history", "sql"])
def test_every_reporting_command_has_json(command: str) -> None:
    options = {o for a in _subparsers()[command]._actions for o in a.option_strings}
    assert "--json" in options


def test_json_documents_of_ingest_export_optimize_vacuum(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        synthetic_source: SyntheticSource) -> None:
    table = str(tmp_path / "t")
    rc, out, _ = _run(capsys, "ingest", str(synthetic_source.root), table, "--json", "--no-progress",
                      "--row-group-rows", "64")
    doc = json.loads(out)
    assert rc == 0 and doc["version"] == 0 and doc["noop"] is False and doc["dataset"] == "generic"
    assert doc["splits"]["train"]["rows"] == 300 and doc["splits"]["test"]["rows"] == 100
    assert doc["splits"]["train"]["sources_verified"] is False
    assert set(doc) == {"table", "version", "mode", "dataset", "noop", "seconds", "bytes_read", "splits"}

    rc, out, _ = _run(capsys, "export", table, str(tmp_path / "out"), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["splits"]["test"]["rows"] == 100 and Path(doc["splits"]["test"]["images"]).exists()
    assert set(doc) == {"table", "outdir", "splits"}  # the README's --json table lists exactly these
    assert set(doc["splits"]["test"]) == {"rows", "images", "labels", "verified"}
    assert doc["splits"]["test"]["verified"] is True
    rc, out, _ = _run(capsys, "export", table, str(tmp_path / "pq"), "--format", "parquet", "--json")
    assert rc == 0 and set(json.loads(out)) == {"format", "table", "version", "outdir", "files", "rows", "row_groups"}

    rc, out, _ = _run(capsys, "optimize", table, "--json")
    doc = json.loads(out)
    assert rc == 0 and {"version_before", "version", "compacted", "files_before", "files_after"} <= set(doc)

    rc, out, _ = _run(capsys, "vacuum", table, "--json", "--dry-run")
    doc = json.loads(out)
    assert rc == 0 and doc["dry_run"] is True and isinstance(doc["files"], list)


@pytest.mark.slow
def test_train_json(capsys: pytest.CaptureFixture[str], synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    rc, out, _ = _run(capsys, "train", table, "--epochs", "1", "--limit", "128", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["version"] == 0 and doc["world_size"] == 1
    assert len(doc["epochs"]) == 1 and 0.0 <= doc["test_accuracy"] <= 1.0


def test_strip_ansi_and_one_line() -> None:
    raw = "\x1b[31mGeneric DeltaTable error:\x1b[0m Unable to rename\n\n  Caused by:\n   0: \x1b[1mOperation\x1b[0m\n"
    assert "\x1b" not in strip_ansi(raw)
    line = one_line(raw)
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("Generic DeltaTable error: Unable to rename; Caused by:")
    assert one_line("x" * 2000).endswith("…") and len(one_line("x" * 2000)) == 600


@pytest.mark.parametrize("exc", [QueryError("\x1b[31mbad\x1b[0m\nsecond line"),
                                 OSError("\x1b[1;31mGeneric S3 error:\x1b[0m\n  at line 3\nconnection refused")])
def test_errors_print_one_clean_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     synthetic_table: tuple[str, SyntheticSource], exc: Exception) -> None:
    import idxlake.cli.inspect_cmd as inspect_cmd

    def boom(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(inspect_cmd, "run_info", boom)
    table, _ = synthetic_table
    rc, _, err = _run(capsys, "info", table)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "\x1b" not in err and "Traceback" not in err
    assert rc == (2 if isinstance(exc, QueryError) else 1)
    rc, _, err = _run(capsys, "--debug", "info", table)
    assert "Traceback" in err and "\x1b" not in err


@pytest.mark.parametrize("argv", [["ingest", "{file}"], ["info", "{file}"], ["history", "{file}"],
                                  ["sql", "{file}", "SELECT 1"], ["show", "{file}"], ["export", "{file}", "{out}"]])
def test_a_plain_file_as_table_is_one_line_exit_2(argv: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "not-a-table.txt"
    file.write_text("hello\n")
    rc, _, err = _run(capsys, *[a.format(file=file, out=tmp_path / "out") for a in argv])
    assert rc == 2
    assert "is a file, not a Delta table" in _one_error_line(err, argv[0])
    assert file.read_text() == "hello\n"


def test_show_with_no_matching_row_is_a_user_error(capsys: pytest.CaptureFixture[str],
                                                   synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    rc, _, err = _run(capsys, "show", table, "--where", "label = 99")
    assert rc == 2
    assert "no rows match label = 99" in _one_error_line(err, "show")


def test_failed_ingest_into_a_new_table_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       synthetic_source: SyntheticSource) -> None:
    # The test split's images are truncated at the end of the stream: found only after train was written.
    path = synthetic_source.root / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    table = tmp_path / "new" / "table"
    rc, _, err = _run(capsys, "ingest", str(synthetic_source.root), str(table), "--no-progress")
    assert rc == 2 and "t10k-images-idx3-ubyte.gz" in _one_error_line(err, "ingest")
    assert not table.exists(), sorted(str(p) for p in table.rglob("*"))


def test_failed_ingest_keeps_a_folder_the_user_made(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    synthetic_source: SyntheticSource) -> None:
    path = synthetic_source.root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    table = tmp_path / "mine"
    table.mkdir()
    rc, _, _ = _run(capsys, "ingest", str(synthetic_source.root), str(table), "--no-progress")
    assert rc == 2 and table.is_dir() and list(table.iterdir()) == []


def test_vacuum_dry_run_below_the_retention_needs_no_force(capsys: pytest.CaptureFixture[str],
                                                          synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, source = synthetic_table
    ingest(source.root, table, mode="overwrite", row_group_rows=32)  # retires version 0's files
    rc, out, _ = _run(capsys, "vacuum", table, "--retain-hours", "0", "--dry-run", "--json")
    assert rc == 0 and json.loads(out)["dry_run"] is True and len(json.loads(out)["files"]) >= 2
    rc, _, err = _run(capsys, "vacuum", table, "--retain-hours", "0")
    assert rc == 2 and "--force" in _one_error_line(err, "vacuum")


def test_info_and_ingest_agree_on_what_is_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   mnist_dir: Path) -> None:
    table = str(tmp_path / "mnist")
    ingest(None, table)
    rc, out, _ = _run(capsys, "ingest", str(mnist_dir / "t10k-images-idx3-ubyte.gz"),
                      str(mnist_dir / "t10k-labels-idx1-ubyte.gz"), table, "--mode", "append", "--allow-duplicate",
                      "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["splits"]["test"] == {**doc["splits"]["test"], "sources_verified": True,
                                                  "split_verified": False}
    rc, out, _ = _run(capsys, "info", table, "--json")
    splits = json.loads(out)["splits"]
    assert splits["train"]["verified"] is True and splits["test"]["verified"] is False
    rc, out, _ = _run(capsys, "info", table)
    assert "verified official data: train; not verified: test" in out
    assert "its sources matched the published hashes" in out
    rc, out, _ = _run(capsys, "info", table, "--version", "0")
    assert "verified official data: test, train" in out or "verified official data: train, test" in out


@pytest.mark.parametrize(("argv", "match"), [
    (["history", "{table}", "--limit", "-1"], "argument --limit: must be >= 1, got -1"),
    (["optimize", "{table}", "--target-mb", "-1"], "argument --target-mb: must be >= 1, got -1"),
])
def test_negative_counts_are_usage_errors(argv: list[str], match: str, capsys: pytest.CaptureFixture[str],
                                          synthetic_table: tuple[str, SyntheticSource]) -> None:
    table, _ = synthetic_table
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(table=table) for a in argv])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_library_refuses_a_history_limit_or_target_size_below_one(
        synthetic_table: tuple[str, SyntheticSource]) -> None:
    from idxlake.pipeline.inspect.info import table_history
    from idxlake.pipeline.inspect.maintenance import optimize
    from idxlake.schemas import MaintenanceError

    table, _ = synthetic_table
    with pytest.raises(QueryError, match=r"history limit must be an integer >= 1, got -1"):
        table_history(table, limit=-1)  # was an OverflowError from delta-rs
    with pytest.raises(MaintenanceError, match=r"target file size must be >= 1 byte"):
        optimize(table, target_file_bytes=-(1 << 20))  # was accepted: one file per row group
