"""Every file the four packages write appears whole or not at all: each write_text, write_bytes,
savefig, torch.save and copyfile goes to a temporary path from `atomic_path` (or OutDir.staged),
which is renamed over the final name once complete. A write to a final path fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenizer_kit", "schemas", "converters", "trainer")
STAGING = {"atomic_path", "staged"}  # context managers that yield a temporary path beside the final one
WRITES = {"write_text": None, "write_bytes": None, "savefig": 0, "save": 1, "copyfile": 1}  # attr: path arg


def _name(node: ast.AST) -> str | None:
    """The variable a path expression is made from: `tmp`, `Path(tmp)`, `str(tmp)`."""
    while isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Name):
        node = node.args[0]
    return node.id if isinstance(node, ast.Name) else None


def non_atomic_writes(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            staged = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
                      for item in node.items if isinstance(item.optional_vars, ast.Name)
                      and isinstance(item.context_expr, ast.Call)
                      and getattr(item.context_expr.func, "attr", getattr(item.context_expr.func, "id", "")) in STAGING}
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in WRITES):
                    continue
                arg = WRITES[node.func.attr]
                if node.func.attr == "write_text" and len(node.args) == 2:
                    continue  # OutDir.write_text(name, text): staged inside
                if arg is not None and len(node.args) <= arg:
                    continue  # not a path-taking call (dict.save() and the like)
                target = node.func.value if arg is None else node.args[arg]
                if _name(target) not in staged:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.func.attr} to {ast.unparse(target)}")
    return found


def test_every_write_goes_through_a_temporary_path():
    assert non_atomic_writes() == []


def test_a_write_to_the_final_path_is_found(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "trainer" / "bad.py").write_text(
        "def f(path, fig, cfg, out):\n"
        "    path.write_text('x')\n"
        "    fig.savefig(path, dpi=1)\n"
        "    with atomic_path(path) as tmp:\n"
        "        fig.savefig(tmp)\n"
        "        Path(tmp).write_bytes(b'')\n"
        "    out.write_text('config.json', cfg)\n")
    assert non_atomic_writes(tmp_path) == ["trainer/bad.py:2 write_text to path", "trainer/bad.py:3 savefig to path"]
