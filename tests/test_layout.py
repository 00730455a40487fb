"""The packages' boundaries, as their opening docstrings state them: which of the
project's packages each one may import (at module level or inside a function). The
development package (``devtools``) stands on ``shared`` alone; the soak, the benchmarks
and the scripts may use the service's packages and ``devtools``, never ``tests``. And no
module imports a conftest module: those hold fixtures, which pytest hands out."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE_PACKAGES = {"shared", "ingest_api", "worker", "operator_cli", "local_stripe"}
PROJECT_PACKAGES = SERVICE_PACKAGES | {"devtools", "soak", "bench", "tests"}
MAY_IMPORT = {
    "shared": {"shared"},
    "ingest_api": {"ingest_api", "shared"},
    "worker": {"worker", "shared"},
    "operator_cli": {"operator_cli", "ingest_api", "worker", "shared"},
    "local_stripe": {"local_stripe"},
    "devtools": {"devtools", "shared"},
    "soak": SERVICE_PACKAGES | {"devtools", "soak"},
    "bench": SERVICE_PACKAGES | {"devtools", "bench"},
    "scripts": SERVICE_PACKAGES | {"devtools"},
}


def import_nodes(folder: str):
    """Every import statement of the folder's modules (at module level or inside a function)."""
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield path, node


def imported_packages(package: str) -> set[str]:
    found = set()
    for _path, node in import_nodes(package):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT_PACKAGES


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_what_it_stands_on(package):
    assert imported_packages(package) <= MAY_IMPORT[package]


def test_the_readmes_layout_table_names_every_folder_and_only_those():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.-]+)/` \|", table, re.M))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {path.split("/")[0] for path in tracked if "/" in path and not path.startswith(".")}
    assert listed == folders


def test_no_module_imports_a_conftest_module():
    importing = []
    for folder in ("tests", "devtools", "soak", "bench", "scripts"):
        for path, node in import_nodes(folder):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                modules = [node.module or ""] + [f"{node.module or ''}.{alias.name}" for alias in node.names]
            if any(module.split(".")[-1] == "conftest" for module in modules):
                importing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importing == []
