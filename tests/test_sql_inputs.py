"""What reaches the SQL engines is bounded before it does (length, operators), statements mean on each
engine what they say, older versions are checked for their files, and a damaged page header is a damaged
file, not a user error."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SyntheticSource

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.maintenance import optimize, vacuum
from idxlake.pipeline.inspect.sql import query
from idxlake.pipeline.inspect.sqltext import MAX_OPERATORS, MAX_SQL_CHARS, check_read_only
from idxlake.schemas import DataCorruptionError, MissingDataFileError, QueryError

ENGINES = ["datafusion", "duckdb"]


def test_the_text_is_bounded_before_any_parser() -> None:
    with pytest.raises(QueryError, match=rf"SQL text is {MAX_SQL_CHARS + 1} characters, more than {MAX_SQL_CHARS}"):
        check_read_only("SELECT 1" + " " * (MAX_SQL_CHARS - 7))
    assert check_read_only("SELECT 1" + " " * (MAX_SQL_CHARS - 8)) == "SELECT 1"
    chain = "+".join(["1"] * (MAX_OPERATORS + 2))
    with pytest.raises(QueryError, match=rf"has {MAX_OPERATORS + 1} operators, more than {MAX_OPERATORS}"):
        check_read_only(f"SELECT {chain} AS s")
    assert check_read_only("SELECT " + "+".join(["1"] * (MAX_OPERATORS + 1))).startswith("SELECT 1+1")
    ids = ", ".join(str(i) for i in range(5000))  # long IN lists are no chain: they pass
    assert check_read_only(f"SELECT * FROM t WHERE id IN ({ids})").endswith("4999)")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_chain_that_crashed_datafusion_is_one_line_exit_2(mnist_table: str, engine: str) -> None:
    """10000 terms killed the process with SIGSEGV (DataFusion's planner recursion)."""
    chain = "+".join(["1"] * 10000)
    run = subprocess.run([sys.executable, "-m", "idxlake", "sql", mnist_table, f"SELECT {chain} AS s",
                          "--engine", engine], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-300:]
    assert "operators, more than 1000" in run.stderr


def test_from_first_statements_are_duckdb_only(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """DataFusion read ``FROM t LIMIT 3`` as a select of no columns and printed "(0 rows)", exit 0."""
    assert main(["sql", mnist_table, "FROM mnist LIMIT 3", "--engine", "datafusion"]) == 2
    assert "FROM-first statements are DuckDB syntax" in capsys.readouterr().err
    assert main(["sql", mnist_table, "FROM mnist SELECT count(*) AS n", "--engine", "duckdb"]) == 0
    assert "70000" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_vacuumed_version_says_so_even_where_statistics_answer(tmp_path: Path, synthetic_source: SyntheticSource,
                                                                 engine: str) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    ingest(synthetic_source.root, table, mode="append", allow_duplicate=True)
    optimize(table)
    vacuum(table, retain_hours=0, force=True)
    for sql, kw in [("SELECT count(*) AS n FROM t VERSION AS OF 1", {}),
                    ("SELECT count(*) AS n FROM t", {"version": 1}),
                    ("SELECT split, count(*) AS n FROM t VERSION AS OF 0 GROUP BY split", {})]:
        with pytest.raises(MissingDataFileError, match=r"of version [01] is missing \(version [01] was vacuumed"):
            query(table, sql, name="t", engine=engine, **kw)
    assert query(table, "SELECT count(*) AS n FROM t", name="t", engine=engine).table.column("n")[0].as_py() == 800


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("delta", [0, 1, 2, 3])
def test_a_damaged_page_header_is_a_damaged_file(tmp_path: Path, synthetic_source: SyntheticSource, engine: str,
                                                 delta: int) -> None:
    table = str(tmp_path / "t")
    ingest(synthetic_source.root, table)
    path = sorted(glob.glob(f"{table}/split=test/*.parquet"))[0]
    offset = pq.ParquetFile(path).metadata.row_group(0).column(2).data_page_offset + delta  # the image column
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with pytest.raises(DataCorruptionError, match=r"@v0: data file split=test/part-\S+ cannot be read"):
        query(table, "SELECT count(DISTINCT md5(image)) AS n FROM t WHERE split = 'test'", name="t", engine=engine)
    shutil.rmtree(table)
