"""``idxlake sql``: read-only guard, binary columns, both engines on the real MNIST, CLI behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MNIST_TEST_COUNTS, MNIST_TRAIN_COUNTS

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.identifiers import check_identifier, table_identifier
from idxlake.pipeline.inspect.sql import display_table, query
from idxlake.pipeline.inspect.sqltext import check_read_only, rewrite_binary_lengths, tokenize
from idxlake.schemas import QueryError, TableNotFoundError

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["datafusion", "duckdb"]
LABELS_SQL = "SELECT split, label, count(*) AS n FROM mnist GROUP BY split, label ORDER BY split, label"


@pytest.mark.parametrize("sql", [
    "SELECT 1", "select * from t;", "  WITH a AS (SELECT 1) SELECT * FROM a", "VALUES (1), (2)",
    "EXPLAIN SELECT * FROM t", "EXPLAIN ANALYZE SELECT 1", "DESCRIBE t", "SHOW COLUMNS FROM t", "(SELECT 1)",
    "SELECT 'delete; drop' AS x -- update\n", "SELECT \"update\" FROM t", "/* insert */ SELECT 1",
    "FROM t", "SELECT * FROM t ORDER BY id DESC",
])
def test_guard_accepts_reads(sql: str) -> None:
    expected = sql.split("--")[0] if sql.endswith("\n") else sql  # a trailing comment is dropped
    assert check_read_only(sql) == expected.strip().rstrip(";").strip()


@pytest.mark.parametrize(("sql", "kind"), [
    ("INSERT INTO t VALUES (1)", "INSERT"), ("delete from t", "DELETE"), ("UPDATE t SET label = 1", "UPDATE"),
    ("DROP TABLE t", "DROP"), ("CREATE TABLE x AS SELECT 1", "CREATE"), ("COPY (SELECT 1) TO '/tmp/x'", "COPY"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"), ("SET threads = 1", "SET"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"), ("ATTACH 'x.db'", "ATTACH"),
    ("SELECT 1 AS set", "SET"), ("PRAGMA version", "PRAGMA"), ("(DELETE FROM t)", "DELETE"),
])
def test_guard_refuses_writes(sql: str, kind: str) -> None:
    with pytest.raises(QueryError, match=rf"^{kind} statements are refused: the table is read-only"):
        check_read_only(sql)


def test_guard_refuses_several_statements_empty_text_and_unknown_statements() -> None:
    with pytest.raises(QueryError, match="2 SQL statements given"):
        check_read_only("SELECT 1; SELECT 2")
    with pytest.raises(QueryError, match="empty SQL statement"):
        check_read_only(" ; -- nothing")
    with pytest.raises(QueryError, match="'selec' does not start a read-only statement"):
        check_read_only("selec 1")


def test_lexer_keeps_strings_comments_and_depth() -> None:
    tokens = tokenize("SELECT 'it''s -- no' /* c */, (a) -- tail")
    assert [t.kind for t in tokens] == ["word", "string", "punct", "punct", "word", "punct"]
    assert tokens[1].text == "'it''s -- no'"
    assert [t.depth for t in tokens] == [0, 0, 0, 0, 1, 0]


def test_rewrite_binary_lengths() -> None:
    sql = ("SELECT length(image) AS n, 2 * octet_length(t.\"image\"), bit_length(image) b, length(split), "
           "'length(image)'")
    out = rewrite_binary_lengths(sql, {"image"}, engine="datafusion")
    assert out == ("SELECT (byte_length(image)) AS n, 2 * (byte_length(t.\"image\")), "
                   "(byte_length(image) * 8) b, length(split), 'length(image)'")
    assert rewrite_binary_lengths("SELECT length(image) FROM t", {"image"}, engine="duckdb") == (
        'SELECT (octet_length(image)) AS "length(image)" FROM t')


@pytest.mark.parametrize(("sql", "aliased"), [
    ("SELECT split, length(image) FROM t", True), ("SELECT DISTINCT length(image)", True),
    ("SELECT x FROM (SELECT length(image) FROM t)", True), ("SELECT min(length(image)) FROM t", False),
    ("SELECT length(image) + 1 FROM t", False), ("SELECT f(a, length(image)) FROM t", False),
    ("SELECT a FROM t GROUP BY a, length(image)", False), ("SELECT a FROM t WHERE length(image) > 3", False),
])
def test_rewrite_aliases_bare_select_items(sql: str, aliased: bool) -> None:
    assert ('AS "length(image)"' in rewrite_binary_lengths(sql, {"image"}, engine="duckdb")) is aliased


@pytest.mark.parametrize(("uri", "name"), [
    ("/data/mnist", "mnist"), ("/data/My-Table/", "my_table"), ("s3://bucket/2024", "t_2024"),
    ("/x/select", "t_select"), ("/x/--", "t"),
])
def test_table_identifier(uri: str, name: str) -> None:
    assert table_identifier(uri) == name


def test_check_identifier() -> None:
    assert check_identifier("Digits") == "digits"
    with pytest.raises(QueryError, match=r"not a plain SQL identifier.*try 'my_table'"):
        check_identifier("my-table")


@pytest.mark.parametrize("engine", ENGINES)
def test_label_counts_equal_published_counts(mnist_table: str, engine: str) -> None:
    result = query(mnist_table, LABELS_SQL.replace("mnist", "digits"), engine=engine, name="digits")
    rows = result.table.to_pylist()
    for split, expected in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
        assert [r["n"] for r in rows if r["split"] == split] == expected
        assert [r["label"] for r in rows if r["split"] == split] == list(range(10))
    assert not result.truncated and result.name == "digits"


@pytest.mark.parametrize("engine", ENGINES)
def test_common_questions(mnist_table: str, engine: str) -> None:
    name = table_identifier(mnist_table)
    sizes = query(mnist_table, f"SELECT split, min(length(image)) AS lo, max(octet_length({name}.image)) AS hi, "
                               f"sum(bit_length(image)) AS bits FROM {name} GROUP BY split ORDER BY split",
                  engine=engine).table.to_pylist()
    assert [(r["split"], r["lo"], r["hi"], int(r["bits"])) for r in sizes] == [
        ("test", 784, 784, 10000 * 784 * 8), ("train", 784, 784, 60000 * 784 * 8)]
    rows = query(mnist_table, f"SELECT * FROM {name} WHERE split = 'train' AND id BETWEEN 100 AND 104 ORDER BY id",
                 engine=engine).table
    shown = display_table(rows)
    assert shown.column("id").to_pylist() == [100, 101, 102, 103, 104]
    assert shown.column("image").to_pylist() == ["<784 bytes>"] * 5
    assert str(shown.schema.field("image").type) == "string"


@pytest.mark.parametrize("engine", ENGINES)
def test_show_and_describe(mnist_table: str, engine: str) -> None:
    tables = query(mnist_table, "SHOW TABLES", engine=engine).table.to_pylist()
    assert any(r.get("table_name", r.get("name")) == "mnist" for r in tables)
    described = query(mnist_table, "DESCRIBE mnist", engine=engine).table.column("column_name").to_pylist()
    assert described == ["split", "id", "label", "image"]


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_refuse_writes_and_report_errors_in_one_line(mnist_table: str, engine: str) -> None:
    with pytest.raises(QueryError, match="DELETE statements are refused"):
        query(mnist_table, "DELETE FROM mnist", engine=engine)
    with pytest.raises(QueryError, match=rf"^{engine}: .*nosuch") as info:
        query(mnist_table, "SELECT nosuch FROM mnist", engine=engine)
    assert "\n" not in str(info.value)
    with pytest.raises(QueryError, match="hint: the table is registered as 'mnist'"):
        query(mnist_table, "SELECT * FROM elsewhere", engine=engine)
    with pytest.raises(QueryError, match="hint: binary columns"):
        query(mnist_table, "SELECT substr(image, 1, 2) FROM mnist", engine=engine)


def test_duckdb_has_no_file_access(mnist_table: str, tmp_path: Path) -> None:
    target = tmp_path / "leak.csv"
    with pytest.raises(QueryError, match=r"duckdb: .*disabled"):
        query(mnist_table, f"SELECT * FROM read_csv('{target}')", engine="duckdb")


def test_max_rows_truncates(mnist_table: str) -> None:
    result = query(mnist_table, "SELECT id FROM mnist", max_rows=10)
    assert result.table.num_rows == 10 and result.truncated
    exact = query(mnist_table, "SELECT id FROM mnist WHERE split = 'test' AND id < 10", max_rows=10)
    assert exact.table.num_rows == 10 and not exact.truncated


def test_time_travel_returns_older_content(tmp_path: Path) -> None:
    table = str(tmp_path / "mnist")
    ingest(None, table)
    ingest(None, table, mode="append", allow_duplicate=True)
    count = "SELECT split, count(*) AS n, max(id) AS top FROM mnist GROUP BY split ORDER BY split"
    for engine in ENGINES:
        old = query(table, count, engine=engine, version=0).table.to_pylist()
        new = query(table, count, engine=engine).table.to_pylist()
        assert [(r["n"], r["top"]) for r in old] == [(10000, 9999), (60000, 59999)]
        assert [(r["n"], r["top"]) for r in new] == [(20000, 19999), (120000, 119999)]
    assert main(["sql", table, count, "--version", "0", "--format", "json"]) == 0


def test_missing_table_and_version(tmp_path: Path, mnist_table: str) -> None:
    with pytest.raises(TableNotFoundError, match="no Delta table here"):
        query(str(tmp_path / "none"), "SELECT 1")
    with pytest.raises(TableNotFoundError, match=r"table has version 0 only \(\S+Z\); version 99 does not exist"):
        query(mnist_table, "SELECT 1", version=99)


def test_cli_formats(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT split, id, label, image FROM mnist WHERE id < 2 ORDER BY split, id"
    assert main(["sql", mnist_table, sql]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["split", "id", "label", "image"]
    assert out[2].split() == ["test", "0", "7", "<784", "bytes>"]
    assert out[-1] == "(4 rows)"
    assert main(["sql", mnist_table, sql, "--format", "csv", "--engine", "duckdb"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ['"split","id","label","image"', '"test",0,7,"<784 bytes>"']
    assert main(["sql", mnist_table, sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"split": "test", "id": 0, "label": 7, "image": "<784 bytes>"} and len(rows) == 4


def test_cli_limit_note(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", mnist_table, "SELECT id FROM mnist", "--limit", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "(3 rows)"
    assert "showing the first 3 rows; --limit 0 prints all" in captured.err
    assert main(["sql", mnist_table, "SELECT id FROM mnist WHERE split = 'test'", "--limit", "0",
                 "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10001


@pytest.mark.parametrize(("argv", "message"), [
    (["DELETE FROM mnist"], "idxlake sql: error: DELETE statements are refused: the table is read-only"),
    (["SELEC 1"], "idxlake sql: error: 'SELEC' does not start a read-only statement"),
    (["SELECT * FROM mnist WHERE", "--engine", "duckdb"], "idxlake sql: error: duckdb: Parser Error"),
    (["SELECT nosuch FROM mnist"], "idxlake sql: error: datafusion: Schema error: No field named nosuch"),
])
def test_cli_errors_exit_2_with_one_line(mnist_table: str, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], message: str) -> None:
    assert main(["sql", mnist_table, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_table_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", str(tmp_path / "nope"), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake sql: error: ") and "no Delta table here" in err and err.count("\n") == 1


@pytest.mark.slow
def test_sql_subprocess_does_not_import_torch(mnist_table: str) -> None:
    code = ("import sys; from idxlake.cli import main; rc = main(sys.argv[1:]); "
            "print('torch loaded:', 'torch' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "sql", mnist_table, LABELS_SQL, "--format", "csv"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "torch loaded: False"
    assert lines[1] == '"test",0,980' and len(lines) == 22


def test_engine_errors_lose_their_ansi_colours_in_the_library_too(synthetic_table, monkeypatch) -> None:
    from idxlake.pipeline.inspect import sql as sql_module

    def failing(*args: object, **kwargs: object) -> None:
        raise Exception("\x1b[31mError\x1b[0m: planning failed\n  ↳ caused by: bad")

    monkeypatch.setitem(sql_module.ENGINES, "datafusion", failing)
    table, _ = synthetic_table
    with pytest.raises(QueryError) as info:
        sql_module.query(table, "SELECT 1")
    assert str(info.value) == "datafusion: Error: planning failed caused by: bad"
