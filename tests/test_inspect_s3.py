"""Inspect commands over S3 (moto on 127.0.0.1): every command takes --storage-option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SyntheticSource

from idxlake import ingest
from idxlake.cli import main


def test_inspect_commands_over_s3(s3_endpoint: dict[str, str], synthetic_source: SyntheticSource, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    uri = "s3://lake/inspect"
    ingest(synthetic_source.root, uri, storage_options=s3_endpoint, row_group_rows=64)
    ingest(synthetic_source.root, uri, storage_options=s3_endpoint, row_group_rows=64, mode="append",
           allow_duplicate=True)
    opts = [f"--storage-option={k}={v}" for k, v in s3_endpoint.items()]
    count = "SELECT split, count(*) AS n FROM inspect GROUP BY split ORDER BY split"
    for engine in ("datafusion", "duckdb"):
        assert main(["sql", uri, count, "--engine", engine, "--format", "json", "--version", "0", *opts]) == 0
        assert json.loads(capsys.readouterr().out) == [{"split": "test", "n": 100}, {"split": "train", "n": 300}]
    assert main(["info", uri, "--json", *opts]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 800 and info["files"]["count"] == 4 and info["files"]["row_groups"] == 14
    assert main(["history", uri, *opts]) == 0
    assert "idxlake ingest --mode append" in capsys.readouterr().out
    png = tmp_path / "grid.png"
    assert main(["show", uri, "--png", str(png), "--limit", "4", *opts]) == 0 and png.stat().st_size > 0
    assert main(["optimize", uri, *opts]) == 0
    assert "4 files -> 2" in capsys.readouterr().out
    assert main(["sql", uri, "SELECT count(*) AS n FROM inspect", "--format", "csv", *opts]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "800"]
    assert main(["vacuum", uri, "--dry-run", *opts]) == 0
    assert "would delete 0 files" in capsys.readouterr().out
    assert main(["ddl", uri, "--name", "lake.inspect", *opts]) == 0
    assert "LOCATION 's3://lake/inspect'" in capsys.readouterr().out
