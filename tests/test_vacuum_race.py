"""vacuum versus writers: a writer paused just before its commit keeps its files; stale temp logs go.

The race of issue 8: ``vacuum --full --retain-hours 0 --force`` ran while an ingest (or optimize)
had written its Parquet files but not committed them yet. Here the writer really is paused at
that point (the commit call blocks on an event) while vacuum runs in the main thread.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import make_source
from deltalake import DeltaTable

from idxlake import ingest, optimize
from idxlake.cli import main
from idxlake.pipeline.inspect.maintenance import MIN_UNTRACKED_AGE_HOURS, vacuum
from idxlake.schemas import DataCorruptionError, snapshot


def _parquet(table: str) -> set[str]:
    return {str(p.relative_to(table)) for p in Path(table).rglob("*.parquet")}


def _age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


class PausedCommit:
    """Patch ``DeltaTable.create_write_transaction`` so the writer stops right before committing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, during=None) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        real = DeltaTable.create_write_transaction
        self.during = during

        def paused(dt: DeltaTable, *args: object, **kwargs: object) -> None:
            self.reached.set()
            assert self.go.wait(30)
            real(dt, *args, **kwargs)

        monkeypatch.setattr(DeltaTable, "create_write_transaction", paused)

    def run(self, writer) -> object:
        out: dict[str, object] = {}

        def target() -> None:
            try:
                out["result"] = writer()
            except BaseException as exc:  # handed to the test thread
                out["error"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        assert self.reached.wait(30), "the writer never reached its commit"
        self.during()
        self.go.set()
        thread.join(60)
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        return out["result"]


@pytest.mark.parametrize("writer", ["ingest", "optimize"])
def test_vacuum_full_force_during_a_paused_writer_keeps_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    src = make_source(tmp_path / "src", rows={"train": 120, "test": 40})
    table = str(tmp_path / "t")
    ingest(src.root, table, row_group_rows=32)
    ingest(src.root, table, row_group_rows=32, mode="append", allow_duplicate=True)  # optimize has work
    new = make_source(tmp_path / "new", rows={"test": 50}, seed=4)
    deleted: list[list[str]] = []
    pause = PausedCommit(monkeypatch)

    def during() -> None:  # the operator's vacuum, while the writer's files are written but not committed
        pending = _parquet(table) - {f.path for f in snapshot(table).files}
        assert pending, "the writer should have written its files by now"
        assert main(["vacuum", table, "--full", "--retain-hours", "0", "--force"]) == 0
        deleted.append(vacuum(table, retain_hours=0, force=True, full=True).files)
        assert pending <= _parquet(table), "vacuum deleted files a writer is about to commit"

    pause.during = during
    if writer == "ingest":
        result = pause.run(lambda: ingest(new.root, table, row_group_rows=32))
    else:
        result = pause.run(lambda: optimize(table))
    monkeypatch.undo()
    snap = snapshot(table)
    assert result.version == snap.version
    assert snap.dataset().to_table().num_rows == sum(f.num_records for f in snap.files)  # every file reads
    assert snap.meta.splits["test"].rows == (50 if writer == "ingest" else 80)
    assert deleted == [[]]


def test_a_commit_whose_files_vanished_fails_loudly_naming_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src", rows={"train": 60, "test": 20})
    table = str(tmp_path / "t")
    ingest(src.root, table)
    new = make_source(tmp_path / "new", rows={"test": 30}, seed=2)
    gone: list[str] = []

    def old_style_vacuum() -> None:  # what vacuum did before the floor: delete every untracked file
        for rel in _parquet(table) - {f.path for f in snapshot(table).files}:
            os.remove(Path(table) / rel)
            gone.append(Path(rel).name)

    pause = PausedCommit(monkeypatch, during=old_style_vacuum)
    with pytest.raises(DataCorruptionError, match=r"version 1 was committed but 1 of its data files are gone: "
                                                  r"split=test/part-.*cannot be read") as info:
        pause.run(lambda: ingest(new.root, table))
    assert len(gone) == 1 and gone[0] in str(info.value)


def test_untracked_files_older_than_the_floor_are_deleted_younger_ones_kept(synthetic_table) -> None:
    table, _ = synthetic_table
    root = Path(table)
    old, young = root / "split=train" / "part-old.parquet", root / "split=train" / "part-young.parquet"
    old.write_bytes(b"orphan of a failed write")
    young.write_bytes(b"maybe a writer's file")
    _age(old, MIN_UNTRACKED_AGE_HOURS + 1)
    _age(young, MIN_UNTRACKED_AGE_HOURS - 1)
    assert vacuum(table, retain_hours=0, force=True, full=True, dry_run=True).files == ["split=train/part-old.parquet"]
    assert old.exists()
    assert vacuum(table, retain_hours=0, force=True, full=True).files == ["split=train/part-old.parquet"]
    assert not old.exists() and young.exists()
    assert snapshot(table).dataset().to_table().num_rows == 400


def test_stale_temp_log_files_of_killed_commits_are_removed(synthetic_table,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Reproduced with delta-rs 1.6: SIGKILL during write_deltalake left `_delta_log/<N>.json#1`
    # (object_store stages every local PUT as `<name>#<n>` and renames it into place).
    table, _ = synthetic_table
    log = Path(table) / "_delta_log"
    stale, fresh = log / "00000000000000000001.json#1", log / "00000000000000000002.json#1"
    stale.write_text('{"commitInfo": {}}')
    fresh.write_text('{"commitInfo": {}}')
    _age(stale, MIN_UNTRACKED_AGE_HOURS + 1)
    assert main(["vacuum", table, "--full", "--retain-hours", "0", "--force", "--dry-run"]) == 0
    assert "_delta_log/00000000000000000001.json#1" in capsys.readouterr().out and stale.exists()
    assert vacuum(table, retain_hours=0, force=True, full=True).files == ["_delta_log/00000000000000000001.json#1"]
    assert not stale.exists() and fresh.exists()
    assert vacuum(table, retain_hours=0, force=True).files == []  # without --full: log temp files untouched
    assert snapshot(table).version == 0


def test_optimize_losing_a_race_to_vacuum_is_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from idxlake.pipeline.ingest import delta_commit

    src = make_source(tmp_path / "src", rows={"train": 60, "test": 20})
    table = str(tmp_path / "t")
    ingest(src.root, table, row_group_rows=16)
    ingest(src.root, table, row_group_rows=16, mode="append", allow_duplicate=True)
    live = {f.path for f in snapshot(table).files}

    class VacuumedOnClose(pq.ParquetWriter):  # an old-style vacuum deletes the file the moment it is complete
        def close(self) -> None:
            super().close()
            for rel in _parquet(table) - live:
                os.remove(Path(table) / rel)

    monkeypatch.setattr(delta_commit.pq, "ParquetWriter", VacuumedOnClose)
    assert main(["optimize", table]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TypeError" not in err
    assert "idxlake optimize: error: " in err and "vanished right after it was written" in err
    assert snapshot(table).version == 1


def test_optimize_reading_a_file_a_concurrent_write_and_vacuum_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from idxlake.pipeline.inspect import maintenance

    src = make_source(tmp_path / "src", rows={"train": 60, "test": 20})
    table = str(tmp_path / "t")
    ingest(src.root, table, row_group_rows=16)
    ingest(src.root, table, row_group_rows=16, mode="append", allow_duplicate=True)
    real = maintenance._read_in_order

    def meanwhile(snap, files, schema):  # another writer replaces the split, a vacuum deletes its old files
        ingest(make_source(tmp_path / "new", rows={"test": 10}, seed=8).root, table)
        vacuum(table, retain_hours=0, force=True)
        return real(snap, files, schema)

    monkeypatch.setattr(maintenance, "_read_in_order", meanwhile)
    assert main(["optimize", table]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vanished while optimize read it (the table moved on to version" in err
    monkeypatch.undo()
    Path(table, next(f.path for f in snapshot(table).files if f.split == "train")).unlink()
    assert main(["optimize", table]) == 1  # the same symptom without a race: the table is damaged
    assert "is missing; nothing was committed. Run `idxlake verify" in capsys.readouterr().err
