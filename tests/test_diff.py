"""``idxlake diff``: row, file, metadata and lineage changes between versions, checked against the sources."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from four_versions import Four, build_four

from idxlake.cli import main
from idxlake.pipeline.inspect.diff import table_diff
from idxlake.schemas import DataCorruptionError, QueryError, TableNotFoundError


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Four:
    return build_four(tmp_path_factory.mktemp("diff"))


def _truth(four: Four, a: int, b: int, *, content: bool) -> dict[tuple[str, int], dict[str, int]]:
    """Per (split, label): added / removed rows, from the sources (multiset difference of the row identities)."""
    def ident(version: int) -> Counter[tuple[object, ...]]:
        return Counter((s, i, y, hashlib.sha256(x).hexdigest() if content else None)
                       for s, i, y, x in four.rows(version))

    old, new = ident(a), ident(b)
    out: dict[tuple[str, int], dict[str, int]] = {}
    for sign, rows in (("removed", old - new), ("added", new - old)):
        for (split, _, label, _), n in rows.items():
            out.setdefault((split, label), {"added": 0, "removed": 0})[sign] += n
    return out


def _got(doc: dict[str, object]) -> dict[tuple[str, int], dict[str, int]]:
    splits = doc["splits"]
    assert isinstance(splits, dict)
    return {(split, e["label"]): {"added": e["added"], "removed": e["removed"]}
            for split, entry in splits.items() for e in entry["labels"] if e["added"] or e["removed"]}


@pytest.mark.parametrize("content", [False, True])
@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 2), (2, 3), (0, 3), (3, 0)])
def test_row_changes_equal_the_truth(four: Four, a: int, b: int, content: bool) -> None:
    doc = table_diff(four.table, a, b, content=content)
    assert _got(doc) == _truth(four, a, b, content=content)
    for split, entry in doc["splits"].items():
        for e in entry["labels"]:
            assert e["from"] == four.labels(a)[(split, e["label"])]
            assert e["to"] == four.labels(b)[(split, e["label"])]
    assert doc["rows"]["from"] == sum(four.labels(a).values()) and doc["rows"]["to"] == sum(four.labels(b).values())


def test_optimize_changes_files_not_rows(four: Four) -> None:
    doc = table_diff(four.table)  # default: previous (2) -> latest (3)
    assert (doc["from"]["version"], doc["to"]["version"]) == (2, 3)
    assert doc["rows"]["added"] == doc["rows"]["removed"] == 0 and doc["rows"]["rewritten"] == 80
    assert len(doc["files"]["added"]) == 1 and len(doc["files"]["removed"]) == 2
    assert {f["split"] for f in doc["files"]["added"] + doc["files"]["removed"]} == {"train"}
    log = {f["path"] for f in doc["files"]["added"]}
    actions = pa.table(DeltaTable(four.table).get_add_actions(flatten=True)).to_pylist()
    assert log == {a["path"] for a in actions if a["path"].startswith("split=train")}
    content = table_diff(four.table, content=True)
    assert content["rows"]["changed"] == 0 and content["rows"]["rewritten"] == 80
    assert [c["version"] for c in doc["commits"]] == [2, 3]
    assert doc["commits"][1]["lineage"]["operation"] == "optimize"


def test_replace_changes_metadata_and_lineage(four: Four) -> None:
    doc = table_diff(four.table, "v1", 2, content=True)
    changed = {m["key"]: (m["from"], m["to"]) for m in doc["metadata"]}
    assert changed["idxlake.splits.test.rows"] == (40, 20)
    assert "idxlake.splits.train.rows" not in changed
    assert "idxlake.splits.test.sources" in changed and "idxlake.splits.test.mean" in changed
    assert doc["rows"]["changed"] == 20  # test ids 0-19 hold other images now
    assert doc["commits"][-1]["lineage"]["mode"] == "replace"
    assert len(doc["files"]["removed"]) == 2 and doc["files"]["kept"] == 2


def test_end_points_by_timestamp_and_errors(four: Four) -> None:
    assert table_diff(four.table, four.iso(0), four.iso(1))["to"]["version"] == 1
    with pytest.raises(TableNotFoundError, match=r"table has versions 0-3 .*; version 7 does not exist"):
        table_diff(four.table, 0, 7)


def test_first_version_has_no_previous(tmp_path: Path, four: Four) -> None:
    from conftest import make_source

    from idxlake import ingest

    source = make_source(tmp_path / "s", rows={"test": 4})
    ingest(source.root, str(tmp_path / "t"))
    with pytest.raises(QueryError, match="version 0 is the first; there is no previous version"):
        table_diff(str(tmp_path / "t"))


def test_cli_text_and_json(four: Four, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", four.table, "1", "2", "--content"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{four.table}: version 1 (") and "-> version 2 (" in out
    assert "rows:     120 -> 100: +20 added, -40 removed, 0 rewritten into new files, 20 changed" in out
    assert "files:    +1 added, -2 removed, 2 kept" in out
    assert "idxlake.splits.test.rows: 40 -> 20" in out and "idxlake ingest --mode replace" in out
    assert main(["diff", four.table, "--json", "--content"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["diff_format"] == 1 and doc["content"] is True and doc["to"]["version"] == 3
    assert main(["diff", four.table, "0", "9"]) == 2
    assert "version 9 does not exist" in capsys.readouterr().err


def test_diff_reads_no_images_without_content(four: Four, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    read: list[list[str]] = []
    original = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, i: int, columns: list[str] | None = None, **kw: object) -> object:
        read.append(list(columns or ["*"]))
        return original(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    table_diff(four.table, 0, 3)
    assert read and all("image" not in c and "*" not in c for c in read)


def test_diff_over_s3(s3_endpoint: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import make_source

    from idxlake import ingest

    source = make_source(tmp_path / "s", rows={"train": 30, "test": 10})
    uri = "s3://lake/diff"
    ingest(source.root, uri, storage_options=s3_endpoint, row_group_rows=16)
    ingest(source.root, uri, storage_options=s3_endpoint, row_group_rows=16, mode="append", allow_duplicate=True)
    doc = table_diff(uri, storage_options=s3_endpoint, content=True)
    assert doc["rows"] == {"from": 40, "to": 80, "added": 40, "removed": 0, "rewritten": 0, "changed": 0}
    opts = [f"--storage-option={k}={v}" for k, v in s3_endpoint.items()]
    assert main(["diff", uri, "0", "1", "--json", *opts]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["added"] == 30
    assert main(["sql", uri, "SELECT count(*) AS n FROM diff VERSION AS OF 0 WHERE label >= 0", "--format", "csv",
                 *opts]) == 0
    assert capsys.readouterr().out.splitlines() == ['"n"', "40"]


def test_diff_content_detects_a_flipped_bit_naming_the_file(tmp_path: Path, synthetic_table,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import make_source
    from test_integrity import _flip_a_bit_in_an_image_page, _train_file

    from idxlake import ingest

    table, _ = synthetic_table
    path, rel = _train_file(table)  # the train file of version 0, removed by the replace below
    ingest(make_source(tmp_path / "other", rows={"train": 64}, seed=3).root, table, row_group_rows=64)
    _flip_a_bit_in_an_image_page(path)
    with pytest.raises(DataCorruptionError, match=rf"{table}@v0: data file {rel} cannot be read: "
                                                  ".*CRC checksum verification failed"):
        table_diff(table, 0, 1, content=True)
    assert main(["diff", table, "0", "1", "--content"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("idxlake diff: error: ") and rel in err and err.count("\n") == 1
