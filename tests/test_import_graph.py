"""The packages of the space language and of what it names depend one way.

``hpo.spaces`` (the language) and ``hpo.catalog`` (the names a space may use) import none of
``hpo.families``, ``hpo.datasets`` and ``hpo.engines``, which implement those names and read
the language's types. Every import counts: at the top of a module, inside a function, or
under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("catalog", "spaces", "engines", "datasets", "families")


def _unit(module: str) -> str | None:
    """The unit of ``PACKAGES`` a dotted module name belongs to."""
    parts = module.split(".")
    if parts[0] == "hpo" and len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every ``hpo...`` module ``path`` imports, absolute names."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("hpo")}


def unit_graph() -> dict[str, set[str]]:
    """Which units import which (an edge per import anywhere in a unit's modules)."""
    graph: dict[str, set[str]] = {u: set() for u in PACKAGES}
    for path in (ROOT / "hpo").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        unit = _unit(module)
        if unit is None:
            continue
        for imported in _imports(path, module):
            target = _unit(imported)
            if target is not None and target != unit:
                graph[unit].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_language_imports_nothing_that_implements_its_names() -> None:
    graph = unit_graph()
    assert graph["catalog"] == set()
    assert graph["spaces"] <= {"catalog"}, graph["spaces"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above can fail: a graph with a cycle is reported.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone_in_a_fresh_interpreter(package: str) -> None:
    # Keras, TensorFlow and Optuna stay out: validating a space must stay cheap.
    code = (
        f"import sys, hpo.{package}; "
        "heavy = [m for m in ('keras', 'tensorflow', 'optuna') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
