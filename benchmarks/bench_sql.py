"""``idxlake sql`` end-to-end wall time on the real MNIST table, both engines, vs interpreter startup.

Usage::

    python benchmarks/bench_sql.py [--reps 7] [--table PATH]

Each measurement is a fresh process (what a user at a shell waits for), median of ``--reps``:

* baseline: ``python -c "import pyarrow"`` (interpreter start plus the one library every command needs).
* ``idxlake sql TABLE "SELECT split, label, count(*) ... GROUP BY ..."`` through ``python -m idxlake``,
  with ``--engine datafusion`` (default) and ``--engine duckdb``; the 20 result rows go to a pipe.
* the same query in-process (``idxlake.pipeline.inspect.sql.query``, after a warm-up), to split startup from query time.
* in-process, for the engine change: the same query through deltalake's own ``QueryBuilder`` (the
  earlier path, which is not read-only), and a two-version ``VERSION AS OF 0 ... EXCEPT`` query.

The script also checks that the CLI run never imports torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERY = "SELECT split, label, count(*) AS n FROM mnist GROUP BY split, label ORDER BY split, label"


def wall(cmd: list[str], reps: int) -> float:
    """Median wall time of running ``cmd`` ``reps`` times (after one unmeasured warm-up run)."""
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_ms(fn: object, reps: int) -> float:
    """Median milliseconds of calling ``fn()`` ``reps`` times after one warm-up call."""
    assert callable(fn)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--table", default=None, help="existing MNIST table (default: ingest into a temp dir)")
    args = parser.parse_args()

    from idxlake import ingest
    from idxlake.pipeline.inspect.sql import query

    with tempfile.TemporaryDirectory() as tmp:
        table = args.table or str(Path(tmp) / "mnist")
        if args.table is None:
            ingest(None, table)
        check = subprocess.run(
            [sys.executable, "-c", "import sys; from idxlake.cli import main; rc = main(sys.argv[1:]); "
             "print('torch' in sys.modules)", "sql", table, QUERY], capture_output=True, text=True, cwd=ROOT)
        assert check.returncode == 0 and check.stdout.splitlines()[-1] == "False", check.stdout + check.stderr
        base = wall([sys.executable, "-c", "import pyarrow"], args.reps)
        print(f"python -c 'import pyarrow'          {base * 1000:7.1f} ms  (baseline)")
        for engine in ("datafusion", "duckdb"):
            t = wall([sys.executable, "-m", "idxlake", "sql", table, QUERY, "--engine", engine], args.reps)
            query(table, QUERY, engine=engine)  # warm-up
            inner = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                result = query(table, QUERY, engine=engine)
                inner.append(time.perf_counter() - t0)
            assert result.table.num_rows == 20
            print(f"idxlake sql --engine {engine:<10}     {t * 1000:7.1f} ms  end to end "
                  f"({t / base:.1f}x baseline); in-process query {statistics.median(inner) * 1000:.1f} ms")
        from deltalake import DeltaTable, QueryBuilder

        def builder() -> None:
            dt = DeltaTable(table)
            QueryBuilder().register("mnist", dt).execute(QUERY).read_all()

        old = median_ms(builder, args.reps)
        new = median_ms(lambda: query(table, QUERY), args.reps)
        travel = median_ms(lambda: query(table, QUERY.replace(" GROUP", " VERSION AS OF 0 GROUP", 1).replace(
            " ORDER BY split, label", "") + " EXCEPT " + QUERY), args.reps)
        print(f"in-process, deltalake QueryBuilder (old path)  {old:6.1f} ms  (baseline)")
        print(f"in-process, read-only datafusion session      {new:6.1f} ms  ({new / old:.2f}x)")
        print(f"in-process, VERSION AS OF 0 ... EXCEPT latest {travel:6.1f} ms  ({travel / old:.2f}x)")
        print("torch imported by `idxlake sql`: no")


if __name__ == "__main__":
    main()
