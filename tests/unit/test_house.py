"""The house rules the tree keeps (README "How a build flows")."""

from __future__ import annotations

import ast
from pathlib import Path

import buildsys

ROOT = Path(buildsys.__file__).parent
MAX_LINES = 400
REASON = "Longer than 400 lines on purpose:"


def _modules():
    return [p for p in sorted(ROOT.rglob("*.py")) if "migrations" not in p.parts]


def test_no_module_over_400_lines_without_a_reason_at_its_top():
    long = []
    for path in _modules():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and REASON not in doc:
            long.append(f"{path.relative_to(ROOT.parent)}: {lines} lines")
    assert long == [], "say why at the top, or split:\n" + "\n".join(long)


def test_every_package_says_what_it_holds():
    silent = [str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("__init__.py")
              if "migrations" not in p.parts and not ast.get_docstring(ast.parse(p.read_text()))]
    assert silent == []


def test_the_cli_has_no_exit_code_literals():
    """Exit codes come from the error classes (buildsys.errors), not from sys.exit(N) in commands."""
    found = []
    for path in (ROOT / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
