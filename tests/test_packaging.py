"""What a user installs: one top-level name, typed, no clash with PyPI's `pipeline`/`schemas`, clear extras."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel --no-deps .`` builds from this checkout (setuptools from the dev extra)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, cwd=out)
    (path,) = out.glob("idxlake-*.whl")
    return path


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's files, as an installer lays them into site-packages."""
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def test_wheel_holds_only_the_idxlake_namespace(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"idxlake-{PYPROJECT['project']['version']}.dist-info/"
        stray = [n for n in names if not (n.startswith("idxlake/") or n.startswith(dist_info))]
        assert not stray, stray
        top_level = zf.read(f"{dist_info}top_level.txt").decode().split()
    assert top_level == ["idxlake"]
    for expected in ("idxlake/py.typed", "idxlake/pipeline/idx/read.py", "idxlake/pipeline/ingest/job.py",
                     "idxlake/pipeline/inspect/sql.py", "idxlake/pipeline/export.py", "idxlake/cli/__init__.py",
                     "idxlake/loaders/dataset.py", "idxlake/schemas/table.py", "idxlake/__main__.py",
                     "idxlake/pipeline/data/mnist/train-images-idx3-ubyte.gz"):
        assert expected in names, expected


def test_no_file_can_clash_with_the_pypi_pipeline_or_schemas_distributions(unpacked: Path, tmp_path: Path) -> None:
    # PyPI's `pipeline` and `schemas` install top-level packages of those names; ours are idxlake.*, so
    # none of our files share a path with theirs. Lay impostors beside the wheel's files, as
    # `pip install schemas pipeline` would (Python 2 code included), and run the CLI from there.
    names = {p.relative_to(unpacked).parts[0] for p in unpacked.iterdir()}
    assert not names & {"pipeline", "schemas", "loaders"}
    for impostor in ("pipeline", "schemas", "loaders"):
        (unpacked / impostor).mkdir()
        (unpacked / impostor / "__init__.py").write_text('print "python 2 impostor"\n')
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    code = ("import idxlake.cli, idxlake.schemas, idxlake.pipeline, idxlake.loaders, sys; "
            "print(idxlake.schemas.__file__); sys.exit(idxlake.cli.main(['--version']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(unpacked / "idxlake" / "schemas"))
    assert out.stdout.splitlines()[-1] == f"idxlake {PYPROJECT['project']['version']}"


def test_the_packages_type_check_clean(unpacked: Path) -> None:
    # mypy at the strictness set in pyproject.toml ([tool.mypy]), over the tree an install lays down.
    out = subprocess.run([sys.executable, "-m", "mypy", "-p", "idxlake", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(unpacked.parent / ".mypy_cache")],
                         capture_output=True, text=True, cwd=unpacked)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_version_is_one_number() -> None:
    import idxlake

    assert idxlake.__version__ == PYPROJECT["project"]["version"]


def test_extras_split_the_heavy_dependencies() -> None:
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "torch" not in core and "duckdb" not in core
    assert extras["torch"] == ["torch>=2.4,<3"]
    assert any(d.startswith("duckdb") for d in extras["duckdb"])
    assert any(d.startswith("idxlake[") and "torch" in d and "duckdb" in d for d in extras["dev"])


def test_a_missing_extra_names_it(tmp_path: Path) -> None:
    # A `torch` that cannot be imported stands in for an install without idxlake[torch].
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('No module named torch (simulated)')\n")
    (tmp_path / "duckdb").mkdir()
    (tmp_path / "duckdb" / "__init__.py").write_text("raise ImportError('No module named duckdb (simulated)')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for code, extra in (("import idxlake; idxlake.DeltaIterableDataset", "idxlake[torch]"),
                        ("from idxlake.loaders import DeltaIterableDataset", "idxlake[torch]"),
                        ("from idxlake.schemas.extras import require; require('duckdb', purpose='the DuckDB engine')",
                         "idxlake[duckdb]")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 1
        assert "MissingExtraError: " in out.stderr and f"pip install '{extra}'" in out.stderr, out.stderr
