"""The shape of the house, read from the source: segsvc's modules import one another without a
circle, and the arrows point one way (api -> engine -> storage): the engine and storage
never import grpc, protobuf or the api layer, storage never imports the engine, and the
change-feed relay (a client) imports none of the server's modules.

Imports are read with ast (every import statement, also those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide a cycle or a wrong-way arrow."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The generated code is checked by its generator, not held to our layering.
GENERATED = "segsvc.v1"
# What each layer may never import (a module name or any module under it).
FORBIDDEN = {
    "segsvc.engine": ("grpc", "google.protobuf", "segsvc.api", "segsvc.v1", "segsvc.cli"),
    "segsvc.storage": (
        "grpc",
        "google.protobuf",
        "segsvc.api",
        "segsvc.v1",
        "segsvc.cli",
        "segsvc.engine",
    ),
    # The relay is a client of segsvc like any other: it runs where the server does not.
    "segsvc.relay": ("segsvc.api", "segsvc.engine", "segsvc.storage", "segsvc.cli"),
}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name an import in `path` names: `from a.b import c` gives a.b and a.b.c
    (c may be a module), relative imports resolved against `module`."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = {
            name for name in imported_names(path, module) if name in modules and name != module
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports
    itself (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def wrong_way(root: Path, package: str) -> list[str]:
    """`module imports name` for every import a layer may not make."""
    found = []
    for module, path in module_files(root, package).items():
        layer = next((layer for layer in FORBIDDEN if f"{module}.".startswith(f"{layer}.")), None)
        if layer is None:
            continue
        for name in imported_names(path, module):
            if any(name == bad or name.startswith(f"{bad}.") for bad in FORBIDDEN[layer]):
                found.append(f"{module} imports {name}")
    return sorted(set(found))


def _without_generated(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def ours(name: str) -> bool:
        return not (name == GENERATED or name.startswith(f"{GENERATED}."))

    return {m: {n for n in names if ours(n)} for m, names in graph.items() if ours(m)}


def test_segsvc_modules_import_each_other_without_a_cycle() -> None:
    graph = _without_generated(import_graph(ROOT, "segsvc"))
    assert "segsvc.engine.workspace" in graph  # the walk found the package
    assert "segsvc.engine.core" in graph["segsvc.engine.workspace"]
    assert cycles(graph) == []


def test_engine_and_storage_import_no_grpc_protobuf_api_or_engine_the_wrong_way() -> None:
    assert wrong_way(ROOT, "segsvc") == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_cycle_through_a_lazy_relative_import_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "segsvc/__init__.py": "",
            "segsvc/engine/__init__.py": "",
            "segsvc/engine/a.py": "from segsvc.engine import b\n",
            "segsvc/engine/b.py": "import segsvc.engine.c\n",
            "segsvc/engine/c.py": "def f():\n    from . import a\n",
            "segsvc/engine/d.py": "from segsvc.engine.a import thing\n",
        },
    )
    graph = import_graph(root, "segsvc")
    assert cycles(graph) == [["segsvc.engine.a", "segsvc.engine.b", "segsvc.engine.c"]]
    del graph["segsvc.engine.c"]
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("segsvc/engine/x.py", "import grpc\n", "segsvc.engine.x imports grpc"),
        (
            "segsvc/engine/x.py",
            "from google.protobuf import struct_pb2\n",
            "segsvc.engine.x imports google.protobuf",
        ),
        (
            "segsvc/engine/x.py",
            "from segsvc.v1 import people_pb2\n",
            "segsvc.engine.x imports segsvc.v1",
        ),
        ("segsvc/engine/x.py", "from ..api import errors\n", "segsvc.engine.x imports segsvc.api"),
        (
            "segsvc/storage/x.py",
            "from segsvc.engine import ops\n",
            "segsvc.storage.x imports segsvc.engine",
        ),
    ],
)
def test_a_wrong_way_import_is_found(tmp_path: Path, module: str, line: str, expected: str) -> None:
    root = _package(tmp_path, {"segsvc/__init__.py": "", module: f"def f():\n    {line}"})
    assert expected in wrong_way(root, "segsvc")
    (root / module).write_text("import numpy\nfrom segsvc.config import Config\n")
    assert wrong_way(root, "segsvc") == []
