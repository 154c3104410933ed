"""What an ingest may write over: ``overwrite`` replaces another Delta table only when the result is a
table idxlake reads (a write keeps the table's partition columns and protocol)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from conftest import make_source
from deltalake import DeltaTable, write_deltalake

from idxlake import ingest
from idxlake.cli import main
from idxlake.loaders import DeltaIterableDataset
from idxlake.schemas import SchemaMismatchError, snapshot


def test_overwrite_of_a_table_partitioned_otherwise_is_refused(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "plain")
    write_deltalake(table, pa.table({"a": [1, 2, 3]}))
    src = make_source(tmp_path / "src", rows={"test": 10})
    with pytest.raises(SchemaMismatchError, match=r"has partition columns \[\], which a write keeps .*"
                                                  r"partitioned by \['split'\].*delete that table"):
        ingest(src.root, table, mode="overwrite")
    assert DeltaTable(table).version() == 0 and DeltaTable(table).to_pyarrow_table().num_rows == 3
    assert len(list(Path(table).glob("*.parquet"))) == 1 and not (Path(table) / "split=test").exists()
    assert main(["ingest", str(src.root), table, "--mode", "overwrite", "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_overwrite_of_a_table_with_deletion_vectors_is_refused(tmp_path: Path) -> None:
    table = str(tmp_path / "dv")
    write_deltalake(table, pa.table({"a": [1, 2], "split": ["train", "test"]}), partition_by=["split"],
                    configuration={"delta.enableDeletionVectors": "true"})
    with pytest.raises(SchemaMismatchError, match=r"has reader features \['deletionVectors'\]"):
        ingest(make_source(tmp_path / "src", rows={"test": 10}).root, table, mode="overwrite")
    assert DeltaTable(table).version() == 0


def test_overwrite_of_another_table_partitioned_by_split_gives_a_readable_table(tmp_path: Path) -> None:
    table = str(tmp_path / "other")
    write_deltalake(table, pa.table({"a": [1, 2], "split": ["train", "test"]}), partition_by=["split"])
    ingest(make_source(tmp_path / "src", rows={"train": 20, "test": 10}).root, table, mode="overwrite")
    snap = snapshot(table)
    assert snap.version == 1 and {s: m.rows for s, m in snap.meta.splits.items()} == {"train": 20, "test": 10}
    assert sum(len(b["id"]) for b in DeltaIterableDataset(table, split="train", batch_size=8)) == 20


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_files_added_to_a_named_dataset_must_fit_it(tmp_path: Path, mode: str) -> None:
    """Unrecognised files kept the table's identity (mnist, 10 classes) without its checks: labels 0..59
    went in, and ``info`` still said 10 classes."""
    from idxlake.schemas import SourceError

    table = str(tmp_path / "t")
    ingest(make_source(tmp_path / "ok", rows={"train": 30, "test": 10}).root, table, dataset="mnist")
    assert snapshot(table).meta.dataset == "mnist"
    wide = make_source(tmp_path / "wide", rows={"test": 60}, classes=60, seed=1)
    with pytest.raises(SourceError, match=r"t10k-labels-idx1-ubyte.gz: labels span 0..59, but MNIST has classes "
                                          r"0..9; the table holds mnist: use another table or corrupt labels\?"):
        ingest(wide.root, table, mode=mode, allow_duplicate=True)
    assert snapshot(table).version == 0 and len(list(Path(table).rglob("*.parquet"))) == 2


def test_a_replace_after_another_writer_changed_the_rows_is_no_noop(tmp_path: Path) -> None:
    """The no-op trusted the recorded sources alone: after an UPDATE from another writer, re-ingesting said
    "unchanged" while verify said lineage FAILED, and export refused: a loop with no way out."""
    from idxlake.pipeline.inspect.verify import verify_table

    src = make_source(tmp_path / "src", rows={"train": 30, "test": 10})
    table = str(tmp_path / "t")
    ingest(src.root, table)
    DeltaTable(table).update(predicate="split = 'test' AND id = 0", updates={"label": "7"})
    assert not verify_table(table).ok
    again = ingest(src.root, table)
    assert not again.noop and again.version == 2 and verify_table(table).ok  # the split rewritten
    assert ingest(src.root, table).noop  # and from then on a no-op again
    DeltaTable(table).optimize.compact()  # no row changed: still a no-op
    assert ingest(src.root, table).noop


def test_changed_elsewhere_reads_the_history() -> None:
    from idxlake.pipeline.ingest.duplicates import changed_elsewhere

    ours = {"idxlakeTxn": "x", "operation": "WRITE", "userMetadata": '{"rows": {"test": 10}}'}
    history = [{"operation": "OPTIMIZE"}, ours, {"operation": "UPDATE"},
               {"idxlakeTxn": "y", "operation": "CREATE TABLE", "userMetadata": '{"rows": {"test": 10, "train": 30}}'}]
    assert changed_elsewhere(history, ["test", "train"], txn_key="idxlakeTxn") == ["train"]
    assert changed_elsewhere(history[:2], ["test"], txn_key="idxlakeTxn") == []
    for foreign in ("CREATE OR REPLACE TABLE AS SELECT", "COPY INTO", "CLONE", "RESTORE", "SOMETHING NEW"):
        assert changed_elsewhere([{"operation": foreign}, *history], ["test"], txn_key="idxlakeTxn") == ["test"]
    for harmless in ("VACUUM START", "VACUUM END", "SET TBLPROPERTIES"):
        assert changed_elsewhere([{"operation": harmless}, *history[1:2]], ["test"], txn_key="idxlakeTxn") == []
