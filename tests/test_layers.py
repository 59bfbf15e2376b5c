"""The package's shape: every import (at module level or inside a function) goes down the declared layers or stays in
its own layer, and no chain of imports comes back to where it started. The CLI and the package's root (both import
lazily, on demand, whatever they run) stand on top and are only read as importers."""

from __future__ import annotations

import ast
from pathlib import Path

import thawing

SRC = Path(thawing.__file__).parent
# Bottom to top: a module imports its own layer and those below it, never one above.
LAYERS = ["thawing._version thawing.errors thawing.distributed", "thawing.data", "thawing.task_types", "thawing.config",
          "thawing.model", "thawing.store", "thawing.training", "thawing.reporting", "thawing.study",
          "thawing.progress thawing.api", "thawing.deploy", "thawing.cli thawing.__main__ thawing"]
TOP = {"thawing", "thawing.cli", "thawing.__main__"}


def modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The thawing modules `name` imports anywhere in its file (`from a import b` counts as a.b where b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            subs = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            found |= subs or {base}
    return {m for m in found if m in known and m != name}


def layer(name: str) -> int:
    """The highest layer whose package (or module) holds `name`."""
    return max(i for i, names in enumerate(LAYERS) for prefix in names.split()
               if name == prefix or name.startswith(prefix + ".") and prefix != "thawing")


def graph(root: Path = SRC) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() if a not in TOP
                  for b in targets if layer(b) > layer(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle among the modules below the top, each found once (depth-first search)."""
    below = {a: {b for b in targets if b not in TOP} for a, targets in edges.items() if a not in TOP}
    found, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(below.get(node, ())):
            if nxt in trail:
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    for start in sorted(below):
        if start not in done:
            visit(start, [start])
    return found


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in modules())


def test_imports_go_down_the_layers():
    assert upward(graph()) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The same checks on a copy of the package with one import added where it does not belong."""
    import shutil

    copy = tmp_path / "thawing"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    errors = copy / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    from thawing.training import loop  # noqa\n")
    edges = graph(copy)
    assert "thawing.errors -> thawing.training.loop" in upward(edges)
    assert any(c[0] == "thawing.errors" or "thawing.errors" in c for c in cycles(edges))


def test_the_top_level_stays_small():
    assert len(list(SRC.glob("*.py"))) <= 8


def test_the_architecture_map_names_every_module_once():
    """docs/architecture.md's module table: one row per module (a row may name siblings: `a.py`, `b.py`)."""
    import re

    text = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    named: list[str] = []
    for row in re.findall(r"^\| (`[^|]*`) \|", table, flags=re.M):
        cells = re.findall(r"`([^`]+)`", row)
        folder = cells[0].rpartition("/")[0]
        named += [c if "/" in c or not folder else f"{folder}/{c}" for c in cells]
    on_disk = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                     if p.name != "__init__.py" or p.parent.name in ("task_types",) or p.parent == SRC)
    on_disk = [p for p in on_disk if p != "__main__.py"]
    assert sorted(named) == on_disk
