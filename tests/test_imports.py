"""The house rules for imports, read from the source with ``ast`` (nothing is imported).

No import circle between files of the five packages, counting imports inside functions too
(a circle hidden in a function still says two files are one idea), and every import points
the way DESIGN.md says: kernels imports only torch (and the standard library, triton for
its GPU kernels, executorch for its runtime kernels); students not distill, teachers or
cluster; teachers and cluster not distill.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("distill", "students", "teachers", "kernels", "cluster")
FORBIDDEN = {
    "students": {"distill", "teachers", "cluster"},
    "teachers": {"distill"},
    "cluster": {"distill"},
}
KERNELS_THIRD_PARTY = {"torch", "triton", "executorch"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (any depth in the file), resolved to a file of ours when it is one:
    ``from a import b`` is ``a.b`` when that is a module, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _files()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file, or a file importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_finds_the_imports():
    graph = _graph()
    assert "students.qlayers" in graph["students.quantize"]  # the walk must see real edges
    assert "students.schemes.registry" in graph["students.schemes.ttq"]  # relative imports resolved


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_a_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_one_way():
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for name, imported in _graph().items():
        package = name.split(".")[0]
        for target in imported:
            top = target.split(".")[0]
            if top in FORBIDDEN.get(package, ()):
                wrong.append(f"{name} -> {target}")
            if package == "kernels" and top not in stdlib | KERNELS_THIRD_PARTY | {"kernels", "__future__"}:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


# Inside distill imports point down, so a job reads top to bottom in the folders (README, Layout):
# cli -> commands -> driver -> train -> spec -> data, losses, errors. A new module goes in the
# part that matches what it imports; a new part gets a line here.
DISTILL_LAYERS = [
    {"distill", "distill.errors", "distill.data", "distill.losses"},
    {"distill.spec"},
    {"distill.train"},
    {"distill.driver"},
    {"distill.commands"},
    {"distill.cli", "distill.__main__"},
]


def _distill_layer(module: str) -> int | None:
    part = ".".join(module.split(".")[:2])  # distill.train.worker -> distill.train
    return next((i for i, layer in enumerate(DISTILL_LAYERS) if part in layer), None)


def test_every_distill_module_has_a_layer():
    assert sorted(m for m in _graph() if m.split(".")[0] == "distill" and _distill_layer(m) is None) == []


def test_distill_imports_point_down():
    up = []
    for name, imported in _graph().items():
        if name.split(".")[0] != "distill" or _distill_layer(name) is None:
            continue
        for target in imported:
            if target.split(".")[0] == "distill" and (_distill_layer(target) or 0) > _distill_layer(name):
                up.append(f"{name} -> {target}")
    assert sorted(up) == []
