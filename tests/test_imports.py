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


# --- benchmarks and scripts share tests/support, and nothing else of the tests ---------------------

RUNNERS = ("benchmarks", "scripts")


def hidden_test_modules(root: Path) -> set[str]:
    """Top-level names a test module could be imported by through a sys.path trick: conftest, every
    test_*.py and every helper under tests/ outside tests/support."""
    return {p.stem for p in (root / "tests").rglob("*.py") if "support" not in p.relative_to(root / "tests").parts}


def runner_breaches(root: Path = ROOT) -> list[str]:
    """Imports of test modules (anything under tests/ but tests.support) and sys.path edits in
    benchmarks/ and scripts/."""
    hidden = hidden_test_modules(root) - {"__init__"}
    found = []
    for folder in RUNNERS:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for name in names:
                    parts = name.split(".")
                    if (parts[0] == "tests" and parts[1:2] != ["support"]) or parts[0] in hidden:
                        found.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
                if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                        and node.value.id == "sys"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} edits sys.path")
    return found


def test_benchmarks_and_scripts_import_no_test_module():
    assert runner_breaches() == []


def test_a_test_module_import_is_found(tmp_path):
    for folder in ("tests/converters", "tests/support", *RUNNERS):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("conftest.py", "converters/test_rl.py", "converters/rl_fixtures.py", "support/shards.py"):
        (tmp_path / "tests" / name).write_text("")
    (tmp_path / "benchmarks" / "bench_a.py").write_text(
        "from tests.conftest import make_bucket\nfrom tests.support.shards import pong_frames\n"
        "def f():\n    import test_rl\n    from rl_fixtures import rollouts\n")
    (tmp_path / "scripts" / "demo.py").write_text(
        "import sys\nimport tests.converters.test_rl\nsys.path.insert(0, 'tests')\nfrom . import demo_data\n")
    assert runner_breaches(tmp_path) == [
        "benchmarks/bench_a.py:1 imports tests.conftest", "benchmarks/bench_a.py:4 imports test_rl",
        "benchmarks/bench_a.py:5 imports rl_fixtures", "scripts/demo.py:2 imports tests.converters.test_rl",
        "scripts/demo.py:3 edits sys.path"]
