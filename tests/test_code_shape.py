"""The packages' functions read as their steps: none is longer than ``MAX_FUNCTION_LINES``,
unless all it does is return literal data (a table, a document)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "ingest_api", "worker", "operator_cli", "local_stripe")
MAX_FUNCTION_LINES = 60
_LITERALS = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant)


def _is_literal_data(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = [node for node in function.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, _LITERALS)


def long_functions(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES and not _is_literal_data(node):
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_the_packages_is_longer_than_sixty_lines():
    assert long_functions() == []


def test_the_check_sees_a_long_function_and_lets_literal_data_be(tmp_path):
    (tmp_path / "shared").mkdir()
    statements = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    table = "\n".join(f"        {i}: {i}," for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "shared" / "steps.py").write_text(
        f"def long():\n{statements}\n\n\ndef table():\n    \"\"\"Literal.\"\"\"\n    return {{\n{table}\n    }}\n"
    )
    assert long_functions(tmp_path) == [f"shared/steps.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"]
