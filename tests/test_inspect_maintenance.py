"""``idxlake optimize`` / ``vacuum``: fewer files, same content, id order kept, safe retention."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SyntheticSource

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.info import table_history
from idxlake.pipeline.inspect.maintenance import _rebatch, optimize, vacuum
from idxlake.pipeline.inspect.sql import query
from idxlake.schemas import MaintenanceError, snapshot

CONTENT_SQL = "SELECT split, id, label, md5(image) AS h FROM t ORDER BY split, id"


@pytest.fixture(scope="module")
def appended_mnist(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Real MNIST ingested, then appended once more: two files per split, ids continuing."""
    table = str(tmp_path_factory.mktemp("appended") / "t")
    ingest(None, table)
    ingest(None, table, mode="append", allow_duplicate=True)
    return table


def _content(table: str, version: int | None = None) -> list[tuple]:
    rows = query(table, CONTENT_SQL, name="t", version=version).table
    return list(zip(*(rows.column(c).to_pylist() for c in ("split", "id", "label", "h")), strict=True))


def test_optimize_real_mnist_keeps_content_with_fewer_files(appended_mnist: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "t")
    shutil.copytree(appended_mnist, table)
    before, files_before = _content(table), len(snapshot(table).files)
    assert main(["optimize", table]) == 0
    out = capsys.readouterr().out
    assert "files -> " in out and "version 1 -> 2" in out
    snap = snapshot(table)
    assert snap.version == 2 and len(snap.files) < files_before and len(snap.files) == 2
    after = _content(table)
    assert after == before and len(after) == 140000
    old = snapshot(table, version=1).meta
    assert snap.meta.revision == old.revision + 1  # every commit changes the metadata (conflict detection)
    assert replace(snap.meta, revision=0) == replace(old, revision=0)
    for data_file in snap.files:  # id order and the ingest layout survive
        parquet = pq.ParquetFile(data_file.uri)
        ids = parquet.read(columns=["id"]).column("id").to_numpy()
        assert (np.diff(ids) == 1).all() and ids[0] == 0
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        assert max(sizes) == 8192 and all(s == 8192 for s in sizes[:-1])
        assert parquet.metadata.row_group(0).column(2).statistics is None  # none on image
    assert _content(table, version=1) == before  # time travel still sees the old files
    history = table_history(table)
    assert history[0]["lineage"]["operation"] == "optimize"
    assert history[0]["lineage"]["files"] == {"test": {"before": 2, "after": 1}, "train": {"before": 2, "after": 1}}
    again = optimize(table)  # idempotent: nothing left to do, no commit
    assert again.compacted == [] and again.version == 2
    assert main(["optimize", table]) == 0
    assert "nothing to compact" in capsys.readouterr().out


def test_optimize_small_target_and_synthetic_rows(tmp_path: Path, synthetic_source: SyntheticSource) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table, row_group_rows=64)
    for _ in range(3):
        ingest(synthetic_source.root, table, row_group_rows=64, mode="append", allow_duplicate=True)
    before = _content(table)
    result = optimize(table, target_file_bytes=1 << 30)
    assert result.files_before == {"test": 4, "train": 4} and result.files_after == {"test": 1, "train": 1}
    assert result.rows_rewritten == 1600 and _content(table) == before
    for data_file in snapshot(table).files:
        md = pq.ParquetFile(data_file.uri).metadata
        assert md.row_group(0).num_rows == 64


def test_rebatch_cuts_exact_sizes() -> None:
    import pyarrow as pa

    schema = pa.schema([("x", pa.int64())])
    batches = [pa.record_batch([pa.array(range(a, b))], schema=schema) for a, b in ((0, 5), (5, 6), (6, 17))]
    out = list(_rebatch(batches, 4, schema))
    assert [b.num_rows for b in out] == [4, 4, 4, 4, 1]
    assert pa.Table.from_batches(out).column("x").to_pylist() == list(range(17))


def test_vacuum_safe_defaults(tmp_path: Path, synthetic_source: SyntheticSource,
                              capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    ingest(synthetic_source.root, table, mode="append", allow_duplicate=True)
    optimize(table)
    assert vacuum(table).files == []  # the compacted files are younger than 168 h
    with pytest.raises(MaintenanceError, match=r"below the table's minimum.*--force"):
        vacuum(table, retain_hours=0)
    assert main(["vacuum", table, "--retain-hours", "1"]) == 2
    assert "Pass --force" in capsys.readouterr().err
    with pytest.raises(MaintenanceError, match=">= 0"):
        vacuum(table, retain_hours=-1)
    assert main(["vacuum", table, "--retain-hours", "0", "--force", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("would delete 4 files (retention 0 h)") and all(".parquet" in line for line in out[1:])
    assert len(snapshot(table, version=1).dataset().files) == 4  # dry run deleted nothing
    assert main(["vacuum", table, "--retain-hours", "0", "--force"]) == 0
    assert "deleted 4 files" in capsys.readouterr().out
    assert main(["sql", table, "SELECT count(*) AS n FROM t"]) == 0  # latest version intact
    assert capsys.readouterr().out.splitlines()[2].strip() == "800"
    assert main(["sql", table, "SELECT count(*) FROM t", "--version", "1", "--engine", "duckdb"]) == 2
    assert "missing" in capsys.readouterr().err  # vacuum ended time travel to older versions


def _age_removed_files(table: str, days: float) -> list[Path]:
    """Make every file the log removed look removed (and last written) ``days`` ago."""
    import json
    import os
    import time

    then = time.time() - days * 86400
    removed = []
    for commit in sorted(Path(table, "_delta_log").glob("*.json")):
        lines = []
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "remove" in action:
                action["remove"]["deletionTimestamp"] = int(then * 1000)
                removed.append(Path(table, action["remove"]["path"]))
            lines.append(json.dumps(action))
        commit.write_text("\n".join(lines) + "\n")
    for path in removed:
        os.utime(path, (then, then))
    return removed


@pytest.mark.parametrize("full", [False, True])
def test_vacuum_keeps_what_the_tables_own_retention_keeps(tmp_path: Path, synthetic_source: SyntheticSource,
                                                          full: bool) -> None:
    """A table that keeps removed files 30 days: files removed 10 days ago stay, also with ``full`` (which
    used Delta's default 168 h and deleted them); 40 days ago they go."""
    from deltalake import DeltaTable

    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    ingest(synthetic_source.root, table, mode="append", allow_duplicate=True)
    optimize(table)
    DeltaTable(table).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 30 days"})
    removed = _age_removed_files(table, days=10)
    assert len(removed) == 4
    assert vacuum(table, full=full, dry_run=True).files == [] and vacuum(table, full=full).files == []
    assert all(p.exists() for p in removed) and len(_content(table, version=1)) == 800  # time travel intact
    with pytest.raises(MaintenanceError, match=r"below the table's minimum \(720 h"):
        vacuum(table, retain_hours=200, full=full)
    _age_removed_files(table, days=40)
    assert len(vacuum(table, full=full).files) == 4 and not any(p.exists() for p in removed)


@pytest.mark.parametrize("value,hours", [(None, 168), ("interval 30 days", 720), ("INTERVAL 1 WEEK", 168),
                                         ("interval 90 minutes", 1.5), ("interval 36 hour", 36), ("7 days", 168),
                                         ("interval 1 day 12 hours", 36), ("interval 0.5 days", 12)])
def test_retention_hours_reads_the_table_property(value: str | None, hours: float) -> None:
    from idxlake.pipeline.inspect.retention import retention_hours

    config = {} if value is None else {"delta.deletedFileRetentionDuration": value}
    assert retention_hours(config, where="t") == hours


def test_a_retention_that_is_no_interval_is_an_error(tmp_path: Path, synthetic_source: SyntheticSource) -> None:
    from deltalake import DeltaTable

    from idxlake.pipeline.inspect.retention import retention_hours

    with pytest.raises(MaintenanceError, match=r"t: table property delta.deletedFileRetentionDuration = '30 dayz' "
                                               r"is not an interval such as 'interval 30 days'"):
        retention_hours({"delta.deletedFileRetentionDuration": "30 dayz"}, where="t")
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    DeltaTable(table).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 2 fortnights"})
    with pytest.raises(MaintenanceError, match=r"is not an interval.*pass --retain-hours with --full"):
        vacuum(table, full=True)
    assert vacuum(table, full=True, retain_hours=200).files == []  # the way out the message names
    assert vacuum(table, dry_run=True).files == []  # without --full idxlake need not read it
