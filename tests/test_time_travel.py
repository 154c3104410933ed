"""Time travel: ``VERSION AS OF`` / ``TIMESTAMP AS OF`` / ``t@v3`` in SQL, ``--as-of``, ``as_of=``, range messages.

The table has four versions: 0 ingest (train 40, test 20), 1 append of the same files
(train 80, test 40), 2 replace of the test split by other data (test 20), 3 optimize.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import make_source
from deltalake import DeltaTable
from four_versions import ROWS, Four, build_four

from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.maintenance import vacuum
from idxlake.pipeline.inspect.sql import query
from idxlake.pipeline.inspect.timetravel import find_clauses, rewrite_time_travel
from idxlake.schemas import (
    LoaderConfigError,
    MissingDataFileError,
    QueryError,
    TableNotFoundError,
    TimeTravelError,
    parse_timestamp,
    snapshot,
    version_range,
)

ENGINES = ["datafusion", "duckdb"]
COUNT = "SELECT split, count(*) AS n FROM mnist{clause} GROUP BY split ORDER BY split"


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Four:
    return build_four(tmp_path_factory.mktemp("four"))


def _counts(four: Four, clause: str, engine: str, **kw: object) -> dict[str, int]:
    rows = query(four.table, COUNT.format(clause=clause), engine=engine, **kw).table.to_pylist()  # type: ignore[arg-type]
    return {r["split"]: r["n"] for r in rows}


@pytest.mark.parametrize("engine", ENGINES)
def test_version_as_of_counts(four: Four, engine: str) -> None:
    for v in range(4):
        assert _counts(four, f" VERSION AS OF {v}", engine) == ROWS[v]
        assert _counts(four, f"@v{v}", engine) == ROWS[v]
    assert _counts(four, "", engine) == ROWS[3]
    assert _counts(four, "", engine, version=1) == ROWS[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_timestamp_as_of_counts(four: Four, engine: str) -> None:
    for v in range(4):
        assert _counts(four, f" TIMESTAMP AS OF '{four.iso(v)}'", engine) == ROWS[v]
        compact = datetime.fromtimestamp(four.stamps[v] / 1000, tz=timezone.utc).strftime("%Y%m%d%H%M%S%f")[:17]
        assert _counts(four, f"@{compact}", engine) == ROWS[v]
        assert _counts(four, "", engine, as_of=four.iso(v)) == ROWS[v]
    just_before_2 = datetime.fromtimestamp((four.stamps[2] - 1) / 1000, tz=timezone.utc)
    assert _counts(four, "", engine, as_of=just_before_2) == ROWS[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_two_versions_in_one_query(four: Four, engine: str) -> None:
    sql = ("SELECT split, label, count(*) AS n FROM mnist VERSION AS OF 0 GROUP BY split, label EXCEPT "
           "SELECT split, label, count(*) AS n FROM mnist GROUP BY split, label ORDER BY split, label")
    result = query(four.table, sql, engine=engine)
    got = {(r["split"], r["label"], r["n"]) for r in result.table.to_pylist()}
    old, new = four.labels(0), four.labels(3)
    assert got == {(s, lab, n) for (s, lab), n in old.items() if new.get((s, lab)) != n}
    assert got  # the versions differ
    assert result.versions == {"mnist": 3, "mnist__v0": 0}
    joined = query(four.table, "SELECT count(*) AS n FROM mnist VERSION AS OF 1 AS a JOIN mnist@v3 b "
                   "ON a.split = b.split AND a.id = b.id", engine=engine).table.to_pylist()
    assert joined == [{"n": 80 + 20}]  # train ids 0-79 on both sides; test ids 0-19 of version 3


@pytest.mark.parametrize("engine", ENGINES)
def test_unaliased_clause_keeps_the_table_name(four: Four, engine: str) -> None:
    rows = query(four.table, "SELECT mnist.id FROM mnist VERSION AS OF 0 WHERE mnist.split = 'test' "
                 "ORDER BY mnist.id DESC LIMIT 1", engine=engine).table.to_pylist()
    assert rows == [{"id": 19}]


def test_out_of_range_messages_name_the_range(four: Four) -> None:
    span = (f"{four.table}: table has versions 0-3 ({four.iso(0)} .. {four.iso(3)})")
    with pytest.raises(TableNotFoundError) as info:
        query(four.table, "SELECT count(*) FROM mnist VERSION AS OF 5")
    assert str(info.value) == f"{span}; version 5 does not exist"
    with pytest.raises(TableNotFoundError, match=r"; version 7 does not exist$"):
        query(four.table, "SELECT 1", version=7)
    with pytest.raises(TableNotFoundError) as info:
        query(four.table, "SELECT count(*) FROM mnist TIMESTAMP AS OF '2001-02-03 04:05:06'")
    assert str(info.value) == f"{span}; no version existed at 2001-02-03T04:05:06Z"
    future = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    with pytest.raises(TableNotFoundError, match=rf"^{span.replace('(', '.').replace(')', '.')}; "
                                                 rf"{future.strftime('%Y-%m-%dT%H:%M:%S')}Z is in the future$"):
        snapshot(four.table, as_of=future)
    with pytest.raises(TimeTravelError, match="is not a timestamp"):
        snapshot(four.table, as_of="yesterday")
    with pytest.raises(TimeTravelError, match="give a version or a timestamp"):
        snapshot(four.table, version=1, as_of=four.iso(1))


def test_cli_as_of_and_range_message(four: Four, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    iso = four.iso(1)
    assert main(["sql", four.table, COUNT.format(clause=""), "--as-of", iso, "--format", "csv", "--name",
                 "mnist"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"split","n"', '"test",40', '"train",80']
    assert main(["info", four.table, "--as-of", iso, "--json"]) == 0
    assert '"version": 1,' in capsys.readouterr().out
    assert main(["show", four.table, "--as-of", iso, "--split", "test", "--where", "id >= 38"]) == 0
    shown = capsys.readouterr().out
    assert "test:38" in shown and "test:39" in shown  # version 1 has test ids up to 39
    out = tmp_path / "export"
    assert main(["export", four.table, str(out), "--as-of", four.iso(0), "--split", "test", "--raw"]) == 0
    capsys.readouterr()
    images = (out / "t10k-images-idx3-ubyte").read_bytes()
    assert images[16:] == four.first.arrays["test"][0].tobytes()
    assert main(["sql", four.table, "SELECT 1", "--version", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"idxlake sql: error: {four.table}: table has versions 0-3 (") and err.endswith(
        "; version 9 does not exist\n")
    assert main(["info", four.table, "--version", "1", "--as-of", iso]) == 2
    assert "give --version or --as-of, not both" in capsys.readouterr().err


def test_loader_as_of(four: Four) -> None:
    from idxlake import DeltaIterableDataset

    ds = DeltaIterableDataset(four.table, split="test", as_of=four.iso(1), shuffle=False, batch_size=64,
                              columns=["id"])
    ids = np.concatenate([b["id"].numpy() for b in ds])
    assert sorted(ids.tolist()) == list(range(40))
    with pytest.raises(TableNotFoundError, match=r"table has versions 0-3 .*; no version existed at 2001-01-01"):
        DeltaIterableDataset(four.table, as_of="2001-01-01")
    with pytest.raises(LoaderConfigError, match="as_of="):
        DeltaIterableDataset(four.table, version=1, as_of=four.iso(1))


def test_map_style_datasets_as_of(four: Four) -> None:
    from idxlake import DeltaImageDataset

    # Version 1 appended the test files again (40 rows); version 2 replaced test with 20 other rows.
    old = DeltaImageDataset(four.table, split="test", as_of=four.iso(1), image_type="numpy")
    assert old.version == 1 and len(old) == 40
    np.testing.assert_array_equal(old.data[:20].numpy(), four.first.arrays["test"][0])
    new = DeltaImageDataset(four.table, split="test", as_of=four.iso(2), image_type="numpy")
    assert new.version == 2 and len(new) == 20
    np.testing.assert_array_equal(new.data.numpy(), four.second.arrays["test"][0])
    with pytest.raises(TableNotFoundError, match=r"table has versions 0-3 .*; no version existed at 2001-01-01"):
        DeltaImageDataset(four.table, as_of="2001-01-01")
    with pytest.raises(LoaderConfigError, match="as_of="):
        DeltaImageDataset(four.table, version=1, as_of=four.iso(1))


def test_vacuumed_version_says_so_and_when(four: Four, tmp_path: Path) -> None:
    table = str(tmp_path / "mnist")
    shutil.copytree(four.table, table)
    vacuum(table, retain_hours=0, force=True)
    history = {int(c["version"]): c for c in DeltaTable(table).history()}
    vac = min(v for v, c in history.items() if str(c["operation"]).startswith("VACUUM"))
    ms = int(history[vac]["timestamp"])
    when = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    note = f"version 0 was vacuumed at {when.strftime('%Y-%m-%dT%H:%M:%S')}.{ms % 1000:03d}Z (VACUUM, version {vac})"
    for engine in ENGINES:
        with pytest.raises(MissingDataFileError) as info:
            query(table, "SELECT count(*) FROM mnist VERSION AS OF 0 WHERE id >= 0", engine=engine)  # type: ignore[arg-type]
        assert note in str(info.value)
    with pytest.raises(MissingDataFileError, match=re.escape(f"({note})")):
        snapshot(table, version=0).dataset()
    assert query(table, COUNT.format(clause=""), name="mnist").table.num_rows == 2  # the latest still reads


def test_clause_rewrite_and_friendly_errors() -> None:
    sql = "SELECT * FROM t VERSION AS OF 2 x JOIN t@v0 ON x.id = t.id WHERE 'VERSION AS OF 9' <> t.split"
    clauses = find_clauses(sql, "t")
    assert [(c.kind, c.value, c.aliased) for c in clauses] == [("version", 2, True), ("version", 0, False)]
    out, tables = rewrite_time_travel(sql, "t", lambda c: int(c.value))
    assert out == "SELECT * FROM t__v2 x JOIN t__v0 AS t ON x.id = t.id WHERE 'VERSION AS OF 9' <> t.split"
    assert tables == {"t__v2": 2, "t__v0": 0}
    with pytest.raises(QueryError, match=r"applies to the table registered as 't', not to 'other'"):
        find_clauses("SELECT * FROM other VERSION AS OF 1", "t")
    with pytest.raises(QueryError, match="VERSION AS OF needs a version number"):
        find_clauses("SELECT * FROM t VERSION AS OF x", "t")
    with pytest.raises(QueryError, match="TIMESTAMP AS OF needs a quoted timestamp"):
        find_clauses("SELECT * FROM t TIMESTAMP AS OF now()", "t")
    assert find_clauses("SELECT a@b, 'x' FROM t", "t") == []


def test_parse_timestamp_forms() -> None:
    utc = datetime(2026, 11, 24, 2, 41, tzinfo=timezone.utc)
    assert parse_timestamp("2026-11-24 02:41:00") == utc == parse_timestamp("2026-11-24T02:41:00Z")
    assert parse_timestamp("2026-11-24T03:41:00+01:00") == utc == parse_timestamp("20261124024100000")
    assert parse_timestamp(datetime(2026, 11, 24, 2, 41)) == utc
    assert parse_timestamp("2026-11-24") == utc.replace(hour=0, minute=0)


def test_version_range_of_a_one_version_table(four: Four, tmp_path: Path) -> None:
    source = make_source(tmp_path / "s", rows={"test": 5})
    ingest(source.root, str(tmp_path / "t"))
    described = version_range(str(tmp_path / "t")).describe()
    assert described.startswith("table has version 0 only (") and described.endswith("Z)")
    assert version_range(four.table).latest == 3


def _recipe() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "schemas" / "README.md").read_text()
    block = text.split("SQL inspection (Databricks SQL", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    return [line.split("--")[0].strip().rstrip(";") for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("engine", ENGINES)
def test_spark_recipe_runs_on_the_embedded_engines(four: Four, engine: str) -> None:
    """schemas/README's Databricks SQL, with the table name (and the timestamp literal) adapted to this table."""
    statements = _recipe()
    assert len(statements) == 8
    counts = []
    for sql in statements:
        if sql.startswith(("DESCRIBE TABLE EXTENDED", "DESCRIBE HISTORY")):  # documented as Spark-only
            with pytest.raises(QueryError):
                query(four.table, sql.replace("main.ml.mnist", "mnist"), engine=engine)  # type: ignore[arg-type]
            continue
        sql = re.sub(r"TIMESTAMP AS OF '[^']*'", f"TIMESTAMP AS OF '{four.iso(1)}'",
                     sql.replace("main.ml.mnist", "mnist"))
        result = query(four.table, sql, engine=engine).table  # type: ignore[arg-type]
        if sql.startswith("SELECT count(*)"):
            counts.append(result.column(0)[0].as_py())
        elif "EXCEPT" in sql:
            new = Counter(label for _, label in four.labels(3).elements())
            old = Counter(label for _, label in four.labels(0).elements())
            assert sorted(tuple(r.values()) for r in result.to_pylist()) == sorted(
                (label, n) for label, n in old.items() if new[label] != n)
        else:
            assert result.num_rows > 0
    assert counts == [60, 120, 60]


def test_readme_time_travel_commands_run_as_written(four: Four, capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Time travel:", 1)[1].split("\n### ", 1)[0]
    lines = section.splitlines()
    ran = 0
    for k, line in enumerate(lines):
        if not line.startswith("$ idxlake "):
            continue
        argv = [four.table if a == "versions/mnist" else a for a in shlex.split(line[2:])][1:]
        expected = lines[k + 1]
        code = main(argv)
        captured = capsys.readouterr()
        if expected.startswith("idxlake ") and ": error: " in expected:
            def normal(text: str) -> str:  # commit times differ from the README's table
                return re.sub(r"\(\S+Z \.\. \S+Z\)", "(T .. T)", text.replace("versions/mnist", four.table))

            assert code == 2 and normal(captured.err.strip()) == normal(expected), captured.err
        else:
            assert code == 0 and captured.out.splitlines()[0].split() == expected.split()
        ran += 1
    assert ran == 3


def test_the_times_a_message_names_select_the_versions_it_names(four: Four) -> None:
    """The range in messages was printed in whole seconds while commits compare in milliseconds: the
    printed lower bound came out as "no version existed at" that very time."""
    import re

    vr = version_range(four.table)
    first, last = re.findall(r"\d{4}-\d\d-\d\dT[\d:.]+Z", vr.describe())
    assert vr.at(first) == vr.first and vr.at(last) == vr.latest
    with pytest.raises(TimeTravelError, match="not both"):
        vr.resolve(version=1, as_of=first)
    assert issubclass(TimeTravelError, ValueError) and not issubclass(TimeTravelError, FileNotFoundError)
