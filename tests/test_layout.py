"""The packages' boundaries, as their opening docstrings state them: which of the
project's packages each one may import (at module level or inside a function)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"shared", "ingest_api", "worker", "operator_cli", "local_stripe"}
MAY_IMPORT = {
    "shared": {"shared"},
    "ingest_api": {"ingest_api", "shared"},
    "worker": {"worker", "shared"},
    "operator_cli": {"operator_cli", "ingest_api", "worker", "shared"},
    "local_stripe": {"local_stripe"},
}


def imported_packages(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
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
