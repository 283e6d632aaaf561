"""Imports flow one way: tokenizer_kit <- schemas <- (converters | trainer); a breach fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "tokenizer_kit": {"tokenizer_kit"},
    "schemas": {"tokenizer_kit", "schemas"},
    "converters": {"tokenizer_kit", "schemas", "converters"},
    "trainer": {"tokenizer_kit", "schemas", "trainer"},
}


def imported_packages(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a module, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return out


def breaches(root: Path = ROOT) -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, top in imported_packages(path, package):
                if top in ALLOWED and top not in allowed:
                    found.append(f"{path.relative_to(root)}:{line} imports {top}")
    return found


def test_no_package_imports_against_the_flow():
    assert breaches() == []


def test_a_breach_is_found(tmp_path):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "schemas" / "bad.py").write_text("def f():\n    from trainer.data import build_loader\n")
    (tmp_path / "trainer" / "bad.py").write_text("import converters.errors\n")
    (tmp_path / "converters" / "ok.py").write_text("from . import base\nfrom schemas.reader import ShardDir\n")
    assert breaches(tmp_path) == ["schemas/bad.py:2 imports trainer", "trainer/bad.py:1 imports converters"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_package_is_walked(package):
    assert list((ROOT / package).rglob("*.py"))
