"""The environment is read in one module, ``shared/config.py``: no other module of the
packages (or ``celeryconfig.py``) reads it when imported, and only the exceptions named
below read it at all."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ingest_api", "worker", "shared", "operator_cli", "local_stripe")
CONFIGURATION_MODULE = "shared/config.py"
# Modules that touch the environment inside a function, and why.
READ_IN_A_FUNCTION = {
    # Hands Flower its basic auth and options the only way Flower takes them, the
    # environment, and keeps the service's metrics directory out of Flower's process.
    "worker/flower.py",
    # The development Stripe server's own command line (its option defaults), a package
    # that imports nothing of the service.
    "local_stripe/__main__.py",
}


def modules() -> list[Path]:
    found = [ROOT / "celeryconfig.py"]
    for package in PACKAGES:
        found += sorted((ROOT / package).rglob("*.py"))
    return found


def _is_environment(node: ast.AST) -> bool:
    """``os.environ``, ``os.environb``, ``os.getenv``, ``os.getenvb``."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in ("environ", "environb", "getenv", "getenvb")
    )


def environment_reads(tree: ast.AST, *, at_import: bool) -> list[int]:
    """Lines that read the environment: when the module is imported (``at_import``: not
    inside a function body, but decorators and default values count), or anywhere.
    Setting a variable (``os.environ[name] = value``) is not a read."""
    lines = []

    def visit(node: ast.AST, written: set[int]) -> None:
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and _is_environment(node.value):
            written = written | {id(node.value)}
        if (_is_environment(node) and id(node) not in written) or (
            isinstance(node, ast.ImportFrom) and node.module == "os"
            and {alias.name for alias in node.names} & {"environ", "environb", "getenv", "getenvb"}
        ):
            lines.append(node.lineno)
        for field, value in ast.iter_fields(node):
            if at_import and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and field == "body":
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, written)

    visit(tree, set())
    return lines


def test_only_the_configuration_module_reads_the_environment_at_import():
    offenders = {}
    for path in modules():
        name = path.relative_to(ROOT).as_posix()
        if name != CONFIGURATION_MODULE:
            lines = environment_reads(ast.parse(path.read_text(), name), at_import=True)
            if lines:
                offenders[name] = lines
    assert offenders == {}


def test_the_configuration_module_reads_the_environment_only_when_called():
    # At import it only names ``os.environ`` as the default of its readers' ``environ``.
    tree = ast.parse((ROOT / CONFIGURATION_MODULE).read_text())
    defaults = {
        default.lineno
        for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
        for default in node.args.defaults if _is_environment(default)
    }
    assert set(environment_reads(tree, at_import=True)) <= defaults


def test_no_other_module_reads_the_environment_but_the_named_exceptions():
    readers = {
        path.relative_to(ROOT).as_posix()
        for path in modules()
        if environment_reads(ast.parse(path.read_text()), at_import=False)
    }
    assert readers - {CONFIGURATION_MODULE} == READ_IN_A_FUNCTION


def test_the_check_finds_a_read_at_import_and_not_a_write():
    source = 'import os\nA = os.environ.get("A")\nos.environ["B"] = "b"\ndef f():\n    return os.getenv("C")\n'
    assert environment_reads(ast.parse(source), at_import=True) == [2]
    assert environment_reads(ast.parse(source), at_import=False) == [2, 5]
