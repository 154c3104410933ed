"""What ``idxlake sql`` prints for results that are no plain table of scalars, and how it stops: columns
sharing a name, nanosecond times, nested values in CSV, Ctrl-C on either engine, repeated errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from idxlake.cli import main

ENGINES = ["datafusion", "duckdb"]


def test_columns_sharing_a_name_are_all_printed(mnist_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A self-join selecting ``a.id, b.id``: the text table crashed (IndexError), JSON kept one silently."""
    sql = "SELECT a.id, b.id FROM mnist a JOIN mnist b ON a.id = b.id + 1 AND a.split = b.split " \
          "WHERE a.split = 'test' AND a.id < 3 ORDER BY 1"
    assert main(["sql", mnist_table, sql]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "id"] and [line.split() for line in lines[2:4]] == [["1", "0"], ["2", "1"]]
    assert main(["sql", mnist_table, "SELECT 1 AS x, 2 AS x", "--engine", "duckdb", "--json"]) == 2
    err = capsys.readouterr().err
    assert "columns 'x' appear more than once; JSON rows need distinct names" in err and err.count("\n") == 1
    assert main(["sql", mnist_table, "SELECT 1 AS x, 2 AS x", "--engine", "duckdb", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"x","x"', "1,2"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_nanosecond_times_and_nested_values_print(mnist_table: str, fmt: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """DataFusion's now() is a nanosecond timestamp (Python's datetime has none: exit 1); CSV has no lists."""
    sql = "SELECT arrow_cast(1700000000123456789, 'Timestamp(Nanosecond, None)') AS ts, [1, 2] AS l"
    assert main(["sql", mnist_table, sql, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "2023-11-14" in out and "22:13:20.123456789" in out.replace("T", " ")
    if fmt == "json":
        assert json.loads(out)[0]["l"] == [1, 2]
    if fmt == "csv":
        assert out.splitlines()[1].endswith('"[1, 2]"')


def _idxlake(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "idxlake", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_stops_a_running_statement_on_either_engine(mnist_table: str, engine: str) -> None:
    """DuckDB held the main thread until its statement ended: Ctrl-C waited ~15 s, then exited 2.

    DataFusion checks for signals only between polls of its stream; this nested-loop join over
    ``md5`` (minutes on either engine) does not yield for minutes, and Ctrl-C waited for the
    --timeout. Now both run in a worker thread the main thread supervises.
    """
    heavy = "SELECT count(*) FROM mnist a CROSS JOIN mnist b WHERE md5(CAST(a.id * 70001 + b.id AS VARCHAR)) = 'x'"
    run = _idxlake("sql", mnist_table, heavy, "--engine", engine, "--timeout", "120")
    time.sleep(3)
    sent = time.monotonic()
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err == "idxlake sql: interrupted\n", (run.returncode, err[-400:])
    assert time.monotonic() - sent < 5


@pytest.mark.slow
def test_errors_after_a_duckdb_statement_never_abort_the_process(mnist_table: str) -> None:
    """The DuckDB connection was never closed: about 1 run in 2 ended in SIGABRT (exit 134) after an error."""
    for _ in range(5):
        run = _idxlake("sql", mnist_table, "SELECT 1 AS x, 2 AS x", "--engine", "duckdb", "--json")
        _, err = run.communicate(timeout=60)
        assert run.returncode == 2 and err.count("\n") == 1 and "terminate called" not in err, (run.returncode, err)
