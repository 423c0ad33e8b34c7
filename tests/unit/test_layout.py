"""Rules of the layout that a change could break without any other test noticing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_bootstrap_never_imports_pulumi():
    sources = sorted((ROOT / "bootstrap").rglob("*.py"))
    assert len(sources) > 15
    for path in sources:
        offending = {m for m in imported_modules(path) if m.split(".")[0] == "pulumi"
                     or m.startswith("pulumi_") or m.split(".")[0] == "components"}
        assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


def test_design_card_layout_exists():
    for name in ("Pulumi.yaml", "__main__.py", "stacks", "components", "bootstrap", "tests",
                 "pyproject.toml", "README.md", ".ci/run", "bench", "examples/inventory.yaml"):
        assert (ROOT / name).exists(), name
