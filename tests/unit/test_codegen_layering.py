"""Codegen's module structure: no import cycle, no kernel reaching into another's private helpers, layouts without TVM."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import graphllm

ROOT = Path(graphllm.__file__).parent
CODEGEN = ROOT / "codegen"


def module_name(path: Path) -> str:
    """The dotted name of a module file under the graphllm package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every import in a module, at any depth (lazy ones too): (absolute module, imported names)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            found.append((".".join([*base, *([node.module] if node.module else [])]), tuple(a.name for a in node.names)))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the codegen modules it imports (a `from package import module` counts as that module)."""
    modules = {module_name(p): p for p in CODEGEN.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, names in imports(path):
            submodules = {f"{module}.{n}" for n in names} & modules.keys()
            targets |= submodules or ({module} & modules.keys())
        graph[name] = targets - {name}
    return graph


def test_codegen_has_no_import_cycle() -> None:
    """The import graph of graphllm/codegen (lazy imports included) is acyclic."""
    graph = import_graph()
    assert "graphllm.codegen.kernels.cpu.linear" in graph["graphllm.codegen.kernels.cpu.fused_linear"]
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        """Depth-first search; a module met again on the current path is a cycle."""
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node not in done:
            for nxt in sorted(graph[node]):
                visit(nxt, [*path, node])
            done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_kernels_import_no_private_helpers() -> None:
    """No kernel module imports a private name (leading underscore) from another codegen module."""
    private = [(module_name(p), module, name) for p in (CODEGEN / "kernels").rglob("*.py")
               for module, names in imports(p) if module.startswith("graphllm.") for name in names
               if name.startswith("_") and name != "__future__"]
    assert not private


def test_layouts_import_no_tvm() -> None:
    """The runtime loads and packs weights through graphllm.layouts without TVM (or codegen) imported."""
    code = ("import sys, graphllm.layouts; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tvm', 'tvm_ffi') or 'codegen' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
