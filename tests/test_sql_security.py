"""``idxlake sql`` is read-only because the ENGINES refuse, not because of our text pass.

Every escape attempt runs through the CLI twice per engine: with the friendly text pass, and
with the text pass replaced by a no-op (monkeypatched), so only the engine's settings stand
between the payload and the disk. Each run must exit 2 with one line, create no file in any
watched place (the cwd, the temporary directory, the table directory and the directory beside
it), and leave the table's log and data files byte-identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import idxlake.pipeline.inspect.render as render_module
import idxlake.pipeline.inspect.sql as sql_module
from idxlake import ingest
from idxlake.cli import main
from idxlake.pipeline.inspect.engines import open_datafusion
from idxlake.schemas import IdxlakeError, QueryError, open_table

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["datafusion", "duckdb"]
MARK = f"pwn{uuid.uuid4().hex[:8]}"
"""Part of every file name a payload tries to create (searched for afterwards)."""

FORGED = ('{"remove":{"path":"split=train/x.parquet","deletionTimestamp":1,"dataChange":true}}')

PAYLOADS: list[str] = [
    # the two payloads of the issue: nested comments hide a COPY from a non-nesting lexer
    "/* /* */ SELECT '*/ COPY (SELECT 42 AS x) TO '{mark}_1.csv'",
    "EXPLAIN (ANALYZE /* /* */ ' */) COPY (SELECT 42 AS x) TO '{mark}_2.csv'",
    # more comment tricks
    "/* /* /* */ */ SELECT '*/ */ COPY (SELECT 1) TO '{cwd}/{mark}_3.csv'",
    "SELECT '--' AS x; COPY (SELECT 1) TO '{mark}_4.csv'",
    "SELECT 1 /* */ */ COPY (SELECT 1) TO '{mark}_5.csv'",
    # string and escape tricks
    "SELECT E'\\''; COPY (SELECT 1) TO '{mark}_6.csv'",
    "SELECT 'a''; COPY (SELECT 1) TO ''{mark}_7.csv'''; COPY (SELECT 2) TO '{mark}_7b.csv'",
    "SELECT $$ $$; COPY (SELECT 1) TO '{mark}_8.csv'; SELECT $$ $$",
    "SELECT \"x\"\" ; COPY (SELECT 1) TO '{mark}_9.csv' --\" FROM t",
    # COPY and its EXPLAIN forms; the forged log entry of the issue
    "COPY (SELECT 42 AS x) TO '{mark}_10.csv'",
    "COPY mnist TO '{tmp}/{mark}_11.parquet' STORED AS PARQUET",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/{mark}_12.csv'",
    "EXPLAIN COPY (SELECT 1) TO '{mark}_13.csv'",
    "COPY (SELECT '" + FORGED + "' AS x) TO '{log}/00000000000000000002.json' STORED AS JSON",
    # DDL, including tables over other directories
    "CREATE EXTERNAL TABLE {mark} STORED AS PARQUET LOCATION '{outside}/'",
    "CREATE EXTERNAL TABLE {mark} (x INT) STORED AS CSV LOCATION '{tmp}/{mark}_16/'",
    "CREATE TABLE {mark} AS SELECT 1 AS x",
    "CREATE VIEW {mark} AS SELECT * FROM mnist",
    "DROP TABLE mnist",
    "EXPLAIN ANALYZE CREATE TABLE {mark} AS SELECT 1 AS x",
    # DML, also wrapped in CTEs and EXPLAIN ANALYZE
    "INSERT INTO mnist VALUES ('train', 1, 1, X'00')",
    "WITH a AS (SELECT * FROM mnist) INSERT INTO mnist SELECT * FROM a",
    "WITH a AS (SELECT 1) DELETE FROM mnist",
    "UPDATE mnist SET label = 0",
    "EXPLAIN ANALYZE INSERT INTO mnist SELECT * FROM mnist",
    "EXPLAIN ANALYZE DELETE FROM mnist",
    # session state
    "SET datafusion.execution.batch_size = 1",
    "EXPLAIN ANALYZE SET threads = 1",
    "SET enable_external_access = true",
    "PREPARE p AS SELECT 1",
    "SELECT 1; COPY (SELECT 1) TO '{mark}_30.csv'",
    # DuckDB's file, extension and config doors
    "ATTACH '{tmp}/{mark}_31.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "PRAGMA memory_limit = '100GB'",
    "EXPORT DATABASE '{tmp}/{mark}_36'",
    "CREATE SECRET {mark} (TYPE s3, KEY_ID 'a', SECRET 'b')",
    # reads outside the registered tables
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('{tmp}/*')",
    "SELECT getenv('HOME')",
    "SELECT * FROM read_parquet('{table}/**/*.parquet')",
    "SELECT * FROM '{log}/00000000000000000000.json'",
    # time travel: the rewrite must not smuggle anything past the engine
    "SELECT * FROM mnist VERSION AS OF 0; COPY (SELECT 1) TO '{mark}_43.csv'",
    "SELECT * FROM mnist VERSION AS OF 0 /* /* */ ' */ COPY (SELECT 1) TO '{mark}_44.csv'",
    "EXPLAIN ANALYZE COPY (SELECT * FROM mnist VERSION AS OF 0) TO '{mark}_45.csv'",
    "WITH a AS (SELECT * FROM mnist@v0) INSERT INTO mnist SELECT * FROM a",
    "SELECT * FROM mnist@v1; COPY (SELECT 1) TO '{mark}_47.csv'",
    "SELECT * FROM mnist VERSION AS OF 0 WHERE split = E'\\'' ; COPY (SELECT 1) TO '{mark}_48.csv' --'",
    "SELECT * FROM mnist VERSION AS OF 1 AS v, (SELECT 1) AS x; DROP TABLE mnist",
]


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-version table at base/mnist, and empty cwd, tmp and outside directories beside it."""
    base = tmp_path_factory.mktemp("attack")
    source = make_source(base / "src", rows={"train": 40, "test": 20})
    table = base / "mnist"
    ingest(source.root, str(table), row_group_rows=16)
    ingest(source.root, str(table), mode="append", row_group_rows=16, allow_duplicate=True)
    dirs = {"base": base, "table": table, "log": table / "_delta_log"}
    for name in ("cwd", "tmp", "outside"):
        dirs[name] = base / name
        dirs[name].mkdir()
    (dirs["outside"] / "x.parquet").write_bytes((table / "_delta_log" / "00000000000000000000.json").read_bytes())
    return dirs


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def watched(place: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Run in place['cwd'] with TMPDIR = place['tmp']; afterwards nothing may have changed."""
    monkeypatch.chdir(place["cwd"])
    monkeypatch.setenv("TMPDIR", str(place["tmp"]))
    monkeypatch.setattr(tempfile, "tempdir", str(place["tmp"]))
    before = _tree(place["base"])
    system_tmp = Path("/tmp")
    yield place
    assert _tree(place["base"]) == before  # no file created, log and data files byte-identical
    assert not [p for p in system_tmp.iterdir() if MARK in p.name]
    assert not list(Path.home().glob(f"*{MARK}*"))


def _payload(template: str, place: dict[str, Path]) -> str:
    for key, value in {"mark": MARK, **{k: str(v) for k, v in place.items()}}.items():
        template = template.replace("{" + key + "}", value)
    return template


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("guarded", [True, False], ids=["text-pass", "engine-only"])
@pytest.mark.parametrize("template", PAYLOADS)
def test_escape_attempt_is_refused(template: str, guarded: bool, engine: str, watched: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if not guarded:  # the text pass does nothing: the engine alone must refuse
        monkeypatch.setattr(sql_module, "check_read_only", lambda sql, **kw: sql.strip().rstrip(";").strip())
    code = main(["sql", str(watched["table"]), _payload(template, watched), "--engine", engine, "--name", "mnist"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("idxlake sql: error: ") and err.count("\n") == 1 and "Traceback" not in err
    if not guarded:
        assert err.startswith(f"idxlake sql: error: {engine}"), err  # the engine's refusal, not ours


def test_corpus_is_large_and_covers_the_issue() -> None:
    assert len(PAYLOADS) >= 30
    text = " ".join(PAYLOADS)
    for needle in ("/* /* */", "EXPLAIN ANALYZE COPY", "EXPLAIN ANALYZE SET", "WITH a AS (SELECT 1) DELETE",
                   "CREATE EXTERNAL TABLE", "ATTACH", "INSTALL", "LOAD", "PRAGMA", "COPY", "EXPORT", "read_text",
                   "glob(", "getenv", "VERSION AS OF"):
        assert needle in text


@pytest.mark.parametrize(("sql", "message"), [
    ("COPY (SELECT 1) TO 'x.csv'", "DML not supported: COPY"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'", "DML not supported: COPY"),
    ("CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/tmp/'", "DDL not supported: CreateExternalTable"),
    ("CREATE TABLE c AS SELECT 1", "DDL not supported"),
    ("SET datafusion.execution.batch_size = 1", "Statement not supported: SetVariable"),
    ("PREPARE p AS SELECT 1", "Statement not supported"),
])
def test_datafusion_session_itself_refuses(place: dict[str, Path], sql: str, message: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No text pass at all: the session of engines.open_datafusion refuses by its SQLOptions."""
    monkeypatch.chdir(place["cwd"])
    session = open_datafusion({"mnist": open_table(str(place["table"]))}, sql_module.Limits())
    with pytest.raises(Exception, match=message):
        list(session.run(sql).batches)
    assert not list(place["cwd"].iterdir())


def test_reads_still_work_on_both_engines(place: dict[str, Path]) -> None:
    for engine in ENGINES:
        rows = sql_module.query(str(place["table"]), "SELECT split, count(*) AS n FROM mnist GROUP BY split "
                                "ORDER BY split", engine=engine, name="mnist").table.to_pylist()  # type: ignore[arg-type]
        assert rows == [{"split": "test", "n": 40}, {"split": "train", "n": 80}]


def _embedded_datafusion_majors() -> set[int]:
    import deltalake._internal as native

    path = native.__file__
    assert path is not None
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return {int(m.group(1)) for m in re.finditer(rb"datafusion-(\d+)\.\d+\.\d+", data)}  # type: ignore[call-overload]


def test_datafusion_major_matches_deltalake(place: dict[str, Path]) -> None:
    """deltalake refuses a DataFusion of another major at registration; the pin must follow deltalake."""
    import importlib.metadata

    embedded = _embedded_datafusion_majors()
    installed = int(importlib.metadata.version("datafusion").split(".")[0])
    assert embedded == {installed}, f"deltalake embeds DataFusion {embedded}, datafusion {installed} is installed"
    pins = re.findall(r'^\s*"(datafusion[^"]*)",', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert pins == [f"datafusion>={installed},<{installed + 1}"]
    session = open_datafusion({"mnist": open_table(str(place["table"]))}, sql_module.Limits())
    assert [b.num_rows for b in session.run("SELECT count(*) FROM mnist").batches] == [1]


@pytest.mark.parametrize("engine", ENGINES)
def test_memory_limit_stops_a_self_cross_join(mnist_table: str, engine: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT a.id, b.id FROM mnist a CROSS JOIN mnist b ORDER BY a.image || b.image"
    assert main(["sql", mnist_table, sql, "--engine", engine, "--memory-mb", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake sql: error: query needs more than 64 MiB (--memory-mb 64)") and err.count("\n") == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_result_counts_against_the_memory_limit(mnist_table: str, engine: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT a.image, b.id FROM mnist a CROSS JOIN mnist b"
    assert main(["sql", mnist_table, sql, "--engine", engine, "--memory-mb", "128", "--format", "csv"]) == 2
    assert "the result alone is larger" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ENGINES)
def test_timeout_cancels_a_self_cross_join(mnist_table: str, engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    sql = "SELECT count(*) FROM mnist a CROSS JOIN mnist b WHERE a.id + b.id < 0"
    start = time.monotonic()
    assert main(["sql", mnist_table, sql, "--engine", engine, "--timeout", "0.5"]) == 2
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert err == ("idxlake sql: error: query cancelled after 0.5 s (--timeout 0.5); narrow it (WHERE, LIMIT, "
                   "fewer joins) or raise --timeout\n")
    assert elapsed < 6  # DataFusion polls for the alarm about once a second


def test_limits_are_validated_and_defaults_documented() -> None:
    from idxlake.cli import inspect_cmd
    from idxlake.pipeline.inspect import engines

    assert (inspect_cmd.DEFAULT_TIMEOUT_S, inspect_cmd.DEFAULT_MEMORY_MB) == (
        engines.DEFAULT_TIMEOUT_S, engines.DEFAULT_MEMORY_MB) == (60, 1024)
    readme = (ROOT / "README.md").read_text()
    assert "--timeout SECONDS" in readme and "default 60" in readme and "1024 MiB" in readme
    with pytest.raises(QueryError, match="--memory-mb must be an integer from 16"):
        engines.Limits(memory_mb=1)
    with pytest.raises(QueryError, match="--timeout must be between 0 and 86400"):
        engines.Limits(timeout_s=0)


def test_library_timeout_off_the_main_thread(mnist_table: str) -> None:
    """Outside the main thread DuckDB is still interrupted by its timer."""
    import threading
    import time

    errors: list[BaseException] = []

    def work() -> None:
        try:
            sql_module.query(mnist_table, "SELECT count(*) FROM mnist a CROSS JOIN mnist b WHERE a.id + b.id < 0",
                             engine="duckdb", timeout=0.5)
        except BaseException as exc:
            errors.append(exc)

    start = time.monotonic()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - start < 10
    assert len(errors) == 1 and isinstance(errors[0], QueryError) and "cancelled after 0.5 s" in str(errors[0])



@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("guarded", [True, False], ids=["text-pass", "engine-only"])
@pytest.mark.parametrize("where", [
    "1 = 1) UNION ALL SELECT * FROM mnist; COPY (SELECT 1) TO '{mark}_w1.csv' --",
    "id IN (SELECT 1 /* /* */ ' */ ) ; COPY (SELECT 42) TO '{mark}_w2.csv'",
    "label = 1) ; ATTACH '{tmp}/{mark}_w3.db' AS x; SELECT (1",
    "id >= 0 AND id IN (SELECT id FROM mnist VERSION AS OF 0)) ; CREATE TABLE {mark} AS SELECT (1",
])
def test_show_where_goes_through_the_same_engine_path(where: str, guarded: bool, engine: str,
                                                      watched: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    if not guarded:
        monkeypatch.setattr(sql_module, "check_read_only", lambda sql, **kw: sql.strip().rstrip(";").strip())
        monkeypatch.setattr(render_module, "check_predicate", lambda where: where)
    argv = ["show", str(watched["table"]), "--where", _payload(where, watched), "--engine", engine, "--name", "mnist"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("idxlake show: error: ") and err.count("\n") == 1
    if not guarded:
        assert err.startswith(f"idxlake show: error: {engine}"), err


@pytest.mark.parametrize("engine", ENGINES)
def test_show_where_time_travel_subquery(place: dict[str, Path], engine: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    where = "id IN (SELECT id FROM mnist VERSION AS OF 0 WHERE split = 'test') AND id >= 18"
    assert main(["show", str(place["table"]), "--split", "test", "--where", where, "--engine", engine]) == 0
    out = capsys.readouterr().out
    assert "test:18" in out and "test:19" in out and "test:20" not in out  # version 0 has test ids 0-19


_PIECES = ["SELECT", "*", "1", "FROM", "mnist", "VERSION", "AS", "OF", "0", "@v1", "TIMESTAMP", "'2001-01-01'",
           "COPY", "(", ")", "TO", "'{mark}_f.csv'", "CREATE", "EXTERNAL", "TABLE", "x", "STORED", "CSV", "LOCATION",
           "'{tmp}/'", "EXPLAIN", "ANALYZE", "INSERT", "INTO", "VALUES", "SET", "=", ";", "/*", "*/", "--", "\n", "'",
           "E'\\\\'", "$$", "\"", "WITH", "a", "DELETE", "ATTACH", "PRAGMA", "INSTALL", "LOAD", "EXPORT", "DATABASE",
           "read_text('/etc/hostname')", "glob('{tmp}/*')", ",", "UNION", "ALL"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=14), engine=st.sampled_from(ENGINES))
def test_fuzzed_statements_never_write_or_crash(words: list[str], engine: str, watched: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Token soups, with the text pass off: the engine runs or refuses them, nothing is written, no crash."""
    monkeypatch.setattr(sql_module, "check_read_only", lambda sql, **kw: sql.strip().rstrip(";").strip())
    before = _tree(watched["base"])
    sql = _payload(" ".join(words), watched)
    with contextlib.suppress(IdxlakeError):  # a refusal or an engine error; anything else fails the test
        sql_module.query(str(watched["table"]), sql, engine=engine, name="mnist", timeout=10)  # type: ignore[arg-type]
    assert _tree(watched["base"]) == before
