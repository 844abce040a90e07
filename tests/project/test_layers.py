"""The packages' layers point one way: no import cycle in flash_engine/ or flash_blender/.

Imports are read from the source (every ``import``, module level or inside a function, since
a lazy import is still a dependency), relative ones resolved against the package.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO  # noqa: E402


def module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(path: Path, name: str, package: str, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == package or target.startswith(package + "."):
                # the deepest module named (``from pkg import mod`` names pkg.mod)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
    return found


def graph(package: str, package_dir: Path) -> dict[str, set[str]]:
    paths = {module_name(p, package_dir, package): p for p in package_dir.rglob("*.py")}
    modules = set(paths)
    edges = {name: imports_of(path, name, package, modules) for name, path in paths.items()}
    # importing pkg.sub runs pkg/__init__ first, but that is not an edge of the layering
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("package,folder", [("flash_engine", "flash_engine"), ("flash_blender", "flash_blender")])
def test_no_import_cycle(package, folder):
    cycle = find_cycle(graph(package, REPO / folder))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


STDLIB_ONLY = ("protocol", "client", "requests", "errors", "presets", "layout", "setup", "model_actions")


def test_the_modules_blender_imports_stay_standard_library_only():
    import sys

    for name in STDLIB_ONLY:
        path = REPO / "flash_engine" / f"{name}.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in sys.stdlib_module_names or root == "flash_engine", f"{name}.py imports {root}"
    edges = graph("flash_engine", REPO / "flash_engine")
    allowed = {f"flash_engine.{name}" for name in STDLIB_ONLY} | {"flash_engine"}
    for name in STDLIB_ONLY:  # and what they import from the engine is on the list too
        assert edges.get(f"flash_engine.{name}", set()) <= allowed, (name, edges.get(f"flash_engine.{name}"))
