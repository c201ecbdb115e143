"""The package's imports follow DESIGN.md's layer order and form no cycle (read from the source, not run).

Every import counts: those inside functions (a lazy import is still a dependency) and those under
``if TYPE_CHECKING:`` (an annotation that names a later layer is a dependency on it too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).parents[2] / "graphllm"

# Upstream first: a module may import its own layer and the layers before it, never a later one.
LAYERS: list[tuple[str, ...]] = [
    ("graphllm", "graphllm.errors", "graphllm.host"),
    ("graphllm.dsl",),
    ("graphllm.models",),
    ("graphllm.passes",),
    ("graphllm.io",),
    ("graphllm.pipeline", "graphllm.plan", "graphllm.layouts"),
    ("graphllm.codegen",),
    ("graphllm.runtime",),
    ("graphllm.tools", "graphllm.server"),
    ("graphllm.commands",),
    ("graphllm.cli", "graphllm.chat", "graphllm.webui", "graphllm.server.__main__"),  # entry points
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix."""
    best, layer = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer >= 0, f"{module} is in no layer: add it to LAYERS (and to DESIGN.md)"
    return layer


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The graphllm modules a file imports (relative imports resolved, `from pkg import submodule` too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules)
    found.discard(name)
    return found


def import_graph() -> nx.DiGraph:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, path in files.items():
        g.add_edges_from((name, dep) for dep in imports_of(path, set(files)))
    return g


def test_the_reader_sees_relative_and_lazy_imports():
    g = import_graph()
    assert ("graphllm.runtime.llm", "graphllm.runtime.starts") in g.edges  # `from .starts import ...` in a method
    assert ("graphllm.pipeline", "graphllm.passes.manager") in g.edges


def test_the_cli_names_every_subcommand_module():
    """cli.py imports the subcommand it runs by name (importlib: unseen by the reader above), so each name must be a
    module of graphllm/commands (and the commands layer sits below the entry points)."""
    from graphllm.cli import SUBCOMMANDS

    commands = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "common"}
    assert set(SUBCOMMANDS) == commands


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


def test_imports_follow_the_layer_order():
    g = import_graph()
    against = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
               for a, b in g.edges if layer_of(b) > layer_of(a)]
    assert not against, "imports against the layer order:\n" + "\n".join(sorted(against))


@pytest.mark.parametrize("module", ["graphllm.runtime.executor", "graphllm.runtime.tvm"])
def test_the_runtime_load_path_imports_no_kernel_module(module: str):
    g = import_graph()
    if module not in g:
        pytest.skip(f"{module} does not exist")
    reached = nx.descendants(g, module)
    assert not {m for m in reached if m.startswith("graphllm.codegen")}, sorted(reached)
