"""Local table paths delta-rs encodes: a table in a folder with spaces or non-ASCII letters is read back
by every stage (delta-rs lists its files percent-encoded, ``my%20tables/...``); the paths delta-rs does
not read back as written (``%XX``, ``#``, ``?``) are refused before anything is written."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
from conftest import make_source

from idxlake import export, ingest
from idxlake.cli import main
from idxlake.loaders import DeltaIterableDataset
from idxlake.pipeline.inspect.verify import verify_table
from idxlake.schemas import CommitUncertainError, StorageConfigError, TableNotFoundError, snapshot


@pytest.mark.parametrize("folder", ["my tables/mnist", "données x/t", "a%b", "semi;colon,comma", "file:sp ace"])
def test_a_table_in_a_folder_delta_rs_encodes_reads_back(tmp_path: Path, folder: str) -> None:
    src = make_source(tmp_path / "src", rows={"train": 40, "test": 10}, seed=2)
    table = (tmp_path / folder.removeprefix("file:")).as_uri() if folder.startswith("file:") else str(tmp_path / folder)
    ingest(src.root, table)
    snap = snapshot(table)
    assert all(Path(f.uri).is_file() for f in snap.files) and len(snap.files) == 2
    ids = sorted(i for b in DeltaIterableDataset(table, split="train", batch_size=16) for i in b["id"].tolist())
    assert ids == list(range(40))
    out = export(table, tmp_path / "out", compress=False)
    assert [s.rows for s in out] == [10, 40] and all(s.verified for s in out)  # sha256 vs the lineage
    assert verify_table(table).ok
    assert main(["sql", table, "SELECT count(*) AS n FROM t", "--name", "t", "--format", "json"]) == 0


@pytest.mark.parametrize("folder", ["a%20b", "x%41", "c#/t", "what?"])
def test_a_path_delta_rs_would_not_read_back_is_refused_before_writing(tmp_path: Path, folder: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src", rows={"test": 10})
    table = tmp_path / folder
    with pytest.raises(StorageConfigError, match=r"in a local table path as URL syntax .*without '%XX', '#' or '\?'"):
        ingest(src.root, str(table))
    assert not table.exists() and not any(p.suffix == ".parquet" for p in tmp_path.rglob("*"))
    assert main(["info", str(table)]) == 2
    assert "URL syntax" in capsys.readouterr().err


def test_files_are_kept_when_the_commit_may_have_landed(synthetic_table, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The log cannot be read after the commit call failed (CommitUncertainError): whatever the check of
    ``landed()`` says (here: no table, as a listing that fails half way), the files stay."""
    from deltalake import DeltaTable

    table, _ = synthetic_table
    real = DeltaTable.create_write_transaction

    def landed_then_failed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, *args, **kwargs)
        raise OSError("connection reset by peer")

    landing, commit = import_module("idxlake.pipeline.ingest.landing"), import_module(
        "idxlake.pipeline.ingest.delta_commit")
    monkeypatch.setattr(DeltaTable, "create_write_transaction", landed_then_failed)
    monkeypatch.setattr(landing, "open_table", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    monkeypatch.setattr(landing.time, "sleep", lambda s: None)
    monkeypatch.setattr(commit, "open_table", lambda *a, **k: (_ for _ in ()).throw(TableNotFoundError("gone")))
    with pytest.raises(CommitUncertainError, match="look for transaction"):
        ingest(make_source(tmp_path / "new", rows={"test": 30}, seed=5).root, table)
    monkeypatch.undo()
    snap = snapshot(table)
    assert snap.version == 1 and snap.dataset(["test"]).to_table().num_rows == 30  # its files are there
    assert np.all([Path(f.uri).is_file() for f in snap.files])
