"""The shape of fslib: short modules, short functions, and imports that go only downward (pyproject: importlinter)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fslib.core import fsio

PACKAGE = Path(fsio.REPO_ROOT, "fslib")
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _name(path: Path) -> str:
    return str(path.relative_to(fsio.REPO_ROOT))


def test_modules_are_short():
    long = {_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: split them"


def test_functions_are_short():
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # from `def` to the last line of the body
                if n > MAX_FUNCTION_LINES:
                    long[f"{_name(path)}:{node.lineno} {node.name}"] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: split them"


def _lint_imports() -> str | None:
    """The venv's ``lint-imports`` (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("lint-imports")
    return str(beside) if beside.exists() else shutil.which("lint-imports")


@pytest.mark.slow  # a subprocess; `make test-fast` runs lint-imports itself
def test_import_layers_are_kept():
    exe = _lint_imports()
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]'")
    result = subprocess.run([exe], cwd=fsio.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
