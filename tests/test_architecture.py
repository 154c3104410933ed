"""Package boundaries: sorted public APIs, one-way dependencies, no torch outside the loaders."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "pipeline", "loaders")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_public_api_is_declared_and_sorted(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"


@pytest.mark.parametrize(("package", "forbidden"), [
    ("schemas", {"pipeline", "loaders", "torch"}),
    ("pipeline", {"loaders", "torch"}),
    ("loaders", {"pipeline"}),
])
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    for path in (ROOT / package).rglob("*.py"):
        if package == "pipeline" and path.parent.name == "cli":
            continue  # only the CLI ties the packages together (lazily)
        assert not (_imports(path) & forbidden), f"{path.relative_to(ROOT)} imports {_imports(path) & forbidden}"


def test_pipeline_and_schemas_import_without_torch() -> None:
    code = "import sys, schemas, pipeline, pipeline.cli; pipeline.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_modules_stay_small() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 330, f"{path.relative_to(ROOT)} has {lines} lines; split it by stage"
