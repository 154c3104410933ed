"""The house: one namespace, sorted public APIs, one-way dependencies, no torch where it is not needed."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOLDERS: dict[str, str] = {"idxlake": "idxlake", "pipeline": "idxlake.pipeline",
                           "loaders": "idxlake.loaders", "schemas": "idxlake.schemas"}
"""Repository folder -> the package it is installed as (pyproject ``package-dir``)."""

ALLOWED: dict[str, frozenset[str]] = {
    "idxlake.schemas": frozenset({"idxlake.schemas"}),
    "idxlake.pipeline": frozenset({"idxlake.schemas", "idxlake.pipeline"}),
    "idxlake.loaders": frozenset({"idxlake.schemas", "idxlake.loaders"}),
    "idxlake": frozenset({"idxlake", "idxlake.schemas", "idxlake.pipeline", "idxlake.loaders"}),
}
"""Layer -> the layers its modules may import. Only the facade and the CLI tie pipeline and loaders together."""

TORCH_FREE = ("idxlake.schemas", "idxlake.pipeline")
LEGACY_TOP_LEVEL = frozenset({"pipeline", "loaders", "schemas"})


def _layer(module: str) -> str | None:
    """The layer of an idxlake module name, or None for a module that is not ours."""
    if module != "idxlake" and not module.startswith("idxlake."):
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("schemas", "pipeline", "loaders"):
        return f"idxlake.{parts[1]}"
    return "idxlake"


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module an AST imports (also inside functions), with its line; relative ones as '.'."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((node.lineno, "."))
            elif node.module:
                out.append((node.lineno, node.module))
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "idxlake"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def violations(source: str, module: str) -> list[str]:
    """Rule breaks of one module's source text, installed as ``module``; empty when it keeps the rules."""
    layer = _layer(module)
    assert layer is not None
    problems = []
    for line, name in _imported(ast.parse(source)):
        top = name.split(".")[0]
        if name == ".":
            problems.append(f"{module}:{line}: relative import (import absolutely: from idxlake.... import ...)")
        elif top in LEGACY_TOP_LEVEL:
            problems.append(f"{module}:{line}: imports top-level {name!r}; it is installed as idxlake.{name}")
        elif top == "torch" and layer in TORCH_FREE:
            problems.append(f"{module}:{line}: {layer} must not import torch")
        elif (target := _layer(name)) is not None and target not in ALLOWED[layer]:
            if layer != "idxlake" and name == "idxlake":
                target = "idxlake (the facade)"
            problems.append(f"{module}:{line}: {layer} must not import {target} ({name})")
    return problems


def _modules() -> list[tuple[Path, str]]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((path, ".".join([package, *parts])))
    return out


def test_every_module_keeps_the_dependency_rules() -> None:
    problems = [p for path, module in _modules() for p in violations(path.read_text(), module)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("idxlake.pipeline.inspect.fake", "from idxlake.loaders import World\n", "must not import idxlake.loaders"),
    ("idxlake.pipeline.ingest.fake", "def f():\n    import idxlake.loaders.plan\n", "must not import idxlake.loaders"),
    ("idxlake.loaders.fake", "from idxlake.pipeline.idx import read_idx\n", "must not import idxlake.pipeline"),
    ("idxlake.loaders.fake", "from idxlake import cli\n", "must not import idxlake"),
    ("idxlake.schemas.fake", "from idxlake.pipeline.ingest import ingest\n", "must not import idxlake.pipeline"),
    ("idxlake.schemas.fake", "import torch\n", "must not import torch"),
    ("idxlake.pipeline.fake", "from torch.utils.data import DataLoader\n", "must not import torch"),
    ("idxlake.pipeline.fake", "import importlib\nimportlib.import_module('idxlake.loaders.dataset')\n",
     "must not import idxlake.loaders"),
    ("idxlake.pipeline.fake", "from schemas import TableMeta\n", "imports top-level 'schemas'"),
    ("idxlake.loaders.fake", "from . import plan\n", "relative import"),
])
def test_the_checker_catches_a_forbidden_import(module: str, source: str, expected: str) -> None:
    problems = violations(source, module)
    assert problems and expected in problems[0], problems


@pytest.mark.parametrize(("module", "source"), [
    ("idxlake.cli.fake", "from idxlake.loaders.train import train\nfrom idxlake.pipeline.ingest import ingest\n"),
    ("idxlake.pipeline.fake", "from idxlake.schemas import TableMeta\nimport pyarrow\n"),
    ("idxlake.loaders.fake", "import torch\nfrom idxlake.schemas import snapshot\n"),
])
def test_the_checker_accepts_allowed_imports(module: str, source: str) -> None:
    assert violations(source, module) == []


PUBLIC = ("idxlake", "idxlake.schemas", "idxlake.pipeline", "idxlake.pipeline.idx", "idxlake.pipeline.ingest",
          "idxlake.pipeline.inspect", "idxlake.loaders")


@pytest.mark.parametrize("package", PUBLIC)
def test_public_api_is_declared_and_sorted(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.__all__ names missing {name}"


def _fresh(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent)
    return out.stdout.strip()


def test_import_idxlake_never_imports_torch_deltalake_or_duckdb() -> None:
    code = ("import sys, idxlake; idxlake.ingest; idxlake.query; idxlake.info; idxlake.World; "
            "print(sorted(m for m in ('torch', 'duckdb') if m in sys.modules))")
    assert _fresh(code) == "[]"


@pytest.mark.parametrize("argv", [
    ["sql", "{table}", "SELECT count(*) FROM mnist"],
    ["info", "{table}"],
    ["history", "{table}"],
    ["show", "{table}", "--limit", "2"],
    ["--version"],
])
def test_inspect_cli_paths_never_import_torch(argv: list[str], mnist_table: str) -> None:
    code = ("import sys\nfrom idxlake.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\nprint('torch' in sys.modules, rc)")
    out = _fresh(code, *[a.format(table=mnist_table) for a in argv]).splitlines()[-1]
    assert out == "False 0", out


def test_modules_stay_small() -> None:
    for path, module in _modules():
        lines = len(path.read_text().splitlines())
        assert lines <= 330, f"{module} has {lines} lines; split it by concept"


def test_subpackages_are_not_shadowed_by_functions() -> None:
    import types

    import idxlake.pipeline

    for name in ("idx", "ingest", "inspect", "export"):
        importlib.import_module(f"idxlake.pipeline.{name}")
        assert isinstance(getattr(idxlake.pipeline, name), types.ModuleType), name
