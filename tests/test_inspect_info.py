"""``idxlake info`` / ``history`` / ``ddl`` on the real MNIST table and small synthetic ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import MNIST_TEST_COUNTS, MNIST_TRAIN_COUNTS, SyntheticSource
from deltalake import write_deltalake

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.ddl import check_table_name, spark_ddl, spark_string, table_location
from idxlake.pipeline.inspect.info import INFO_FORMAT, iso_time, table_history, table_info
from idxlake.schemas import QueryError, SchemaMismatchError, TableNotFoundError

MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
INFO_KEYS = ["info_format", "table", "name", "description", "version", "timestamp", "created", "protocol",
             "configuration", "partition_columns", "columns", "format_version", "dataset", "image", "label_dtype",
             "class_names", "rows", "splits", "files", "normalization", "last_commit", "last_ingest", "warnings"]


def test_info_json_fields(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", mnist_table, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info) == INFO_KEYS
    assert info["info_format"] == INFO_FORMAT and info["table"] == mnist_table and info["version"] == 0
    assert info["timestamp"].endswith("Z") and info["protocol"]["min_reader_version"] == 1
    assert info["partition_columns"] == ["split"]
    assert [(c["name"], c["type"], c["nullable"]) for c in info["columns"]] == [
        ("split", "string", False), ("id", "int64", False), ("label", "int16", False), ("image", "binary", False)]
    assert info["dataset"] == "mnist" and info["class_names"] == [str(i) for i in range(10)]
    assert info["image"] == {"shape": [28, 28], "dtype": "uint8", "record_bytes": 784, "transposed": False,
                             "scale": 255.0}
    assert info["rows"] == 70000 and info["warnings"] == []
    for split, counts in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
        s = info["splits"][split]
        assert s["rows"] == sum(counts)
        assert [lab["rows"] for lab in s["labels"]] == counts
        assert [lab["label"] for lab in s["labels"]] == list(range(10))
        assert s["verified"] is True and s["files"] >= 1 and s["bytes"] > 0
        assert s["row_groups"] == math.ceil(sum(counts) / 8192)
        assert {f["role"] for f in s["sources"]} == {"images", "labels"}
    assert info["splits"]["train"]["mean"] == pytest.approx(0.1307, abs=1e-4)
    assert info["splits"]["train"]["std"] == pytest.approx(0.3081, abs=1e-4)
    assert info["normalization"] == {"mean": info["splits"]["train"]["mean"], "std": info["splits"]["train"]["std"]}
    files = info["files"]
    assert files["count"] == sum(s["files"] for s in info["splits"].values())
    assert files["row_groups"] == 10 and files["max_row_group_rows"] == 8192 and files["codecs"]
    assert info["last_commit"]["version"] == 0 and info["last_ingest"]["version"] == 0
    sources = {f["name"]: f["sha256"] for fs in info["last_ingest"]["lineage"]["sources"].values() for f in fs}
    for name, sha in MNIST_SHA256.items():
        assert sources[name] == sha


def test_info_text(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", mnist_table]) == 0
    out = capsys.readouterr().out
    assert "dataset:    mnist (verified official data: test, train)" in out
    assert "rows:       70,000" in out
    assert MNIST_SHA256["train-images-idx3-ubyte.gz"] in out
    label_rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0  0", "9  9"))]
    assert label_rows == [["0", "0", "980", "5923"], ["9", "9", "1009", "5949"]]


def test_info_and_history_follow_versions(tmp_path: Path, synthetic_source: SyntheticSource,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table, row_group_rows=64)
    ingest(synthetic_source.root, table, row_group_rows=64, mode="append", allow_duplicate=True)
    old, new = table_info(table, version=0), table_info(table)
    assert (old["version"], old["rows"], new["version"], new["rows"]) == (0, 400, 1, 800)
    assert old["last_commit"]["version"] == 0 and old["timestamp"] <= new["timestamp"]
    assert new["splits"]["train"]["row_groups"] == 10 and new["files"]["max_row_group_rows"] == 64
    assert new["last_ingest"]["lineage"]["mode"] == "append" and new["splits"]["train"]["verified"] is False
    history = table_history(table)
    assert [h["version"] for h in history] == [1, 0]
    assert [h["lineage"]["mode"] for h in history] == ["append", "replace"]
    assert table_history(table, limit=1)[0]["version"] == 1
    assert main(["history", table]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["version", "timestamp", "operation", "lineage"]
    assert out[2].split()[0] == "1" and "idxlake ingest --mode append" in out[2]
    assert main(["history", table, "--json", "--limit", "1"]) == 0
    assert [h["version"] for h in json.loads(capsys.readouterr().out)] == [1]


def test_info_errors(tmp_path: Path, mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TableNotFoundError):
        table_info(str(tmp_path / "none"))
    assert main(["info", mnist_table, "--version", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake info: error: ") and "version 7 does not exist" in err and err.count("\n") == 1
    other = str(tmp_path / "other")
    write_deltalake(other, pa.table({"x": [1, 2]}))
    with pytest.raises(SchemaMismatchError, match="not an idxlake table"):
        table_info(other)


def test_iso_time() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(None) is None


def test_ddl(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ddl", mnist_table, "--name", "main.ml.mnist_digits"]) == 0
    out = capsys.readouterr().out
    location = Path(mnist_table).resolve().as_uri()
    assert f"CREATE TABLE IF NOT EXISTS main.ml.mnist_digits\nUSING DELTA\nLOCATION '{location}'\n" in out
    assert "COMMENT 'mnist: 28x28 uint8 image bytes (C order, little-endian), 10 classes';" in out
    assert "--   label  SMALLINT NOT NULL  class label" in out
    assert "--   split  STRING NOT NULL" in out and "[PARTITIONED BY]" in out
    statement = [line for line in out.splitlines() if not line.startswith("--") and line]
    assert statement[0].startswith("CREATE TABLE") and statement[-1].endswith(";") and len(statement) == 4
    assert "CREATE TABLE IF NOT EXISTS mnist\n" in spark_ddl(mnist_table)


def test_ddl_helpers() -> None:
    assert spark_string("it's a \\ path") == "'it\\'s a \\\\ path'"
    assert table_location("s3://bucket/t/") == "s3://bucket/t"
    assert table_location("/tmp/x") == "file:///tmp/x"
    assert check_table_name("`my-cat`.schema.t") == "`my-cat`.schema.t"
    for bad in ("a.b.c.d", "my-table", "a..b", ""):
        with pytest.raises(QueryError, match="CATALOG"):
            check_table_name(bad)


def test_ddl_comment_lines_cannot_start_a_statement(tmp_path: Path, synthetic_source: SyntheticSource) -> None:
    """Column names and comments come from the log (anyone's): a newline in them is written as an escape."""
    table = tmp_path / "t"
    ingest(synthetic_source.root, str(table))
    commit = table / "_delta_log" / "00000000000000000000.json"
    actions = [json.loads(line) for line in commit.read_text().splitlines()]
    for action in actions:
        if "metaData" in action:
            schema = json.loads(action["metaData"]["schemaString"])
            field = next(f for f in schema["fields"] if f["name"] == "id")
            field["metadata"]["comment"] = "row id\nDROP TABLE main.prod.customers;\n-- "
            action["metaData"]["schemaString"] = json.dumps(schema)
    commit.write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    text = spark_ddl(str(table), name="main.ml.mnist")
    statements = [line for line in text.splitlines() if line and not line.startswith("--")]
    assert statements[0] == "CREATE TABLE IF NOT EXISTS main.ml.mnist" and len(statements) == 4
    assert "row id\\nDROP TABLE main.prod.customers;\\n-- " in text


@pytest.mark.parametrize(("doc", "match"), [
    ("[]", "expected a JSON object"), ("null", "expected a JSON object"),
    ('{"splits": []}', "expected a JSON object with a 'splits' object"),
    ("DTYPE", r"dtype 'complex64' / label_dtype 'uint8': expected IDX dtypes"),
    ("SHAPE", r"shape \[-28, 28\]: expected positive dimensions"),
])
def test_metadata_that_is_not_the_contract_is_a_schema_mismatch(doc: str, match: str) -> None:
    """A tampered ``idxlake`` metadata raised AttributeError or KeyError deep in a reader, or went through
    (``shape [-28, 28]``: ``record_nbytes = -784``)."""
    import idxlake.schemas.table as table_module
    from idxlake.schemas import meta_from_schema

    good = table_module.TableMeta(dataset="mnist", shape=(28, 28), dtype="uint8", label_dtype="uint8")
    text = json.dumps(good.to_json())
    if doc == "DTYPE":
        doc = text.replace('"dtype": "uint8"', '"dtype": "complex64"')
    elif doc == "SHAPE":
        doc = text.replace('"shape": [28, 28]', '"shape": [-28, 28]')
    schema = table_module.arrow_schema(good)
    image = schema.field("image")
    schema = schema.set(schema.get_field_index("image"),
                        image.with_metadata({**image.metadata, b"idxlake": doc.encode()}))
    with pytest.raises(SchemaMismatchError, match=match):
        meta_from_schema(schema, where="t")
