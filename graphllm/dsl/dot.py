"""Graphviz drawings of a Graph: DOT text (needs nothing) and SVG (runs Graphviz's `dot`).

Ops are boxes labelled with the op and the node id, weights small and grey, edges labelled with the
type of the value they carry, and nodes of one fused ``group`` drawn inside one cluster.
"""

from __future__ import annotations

import shutil
import subprocess

from ..errors import GraphLLMError
from . import ops as O
from .graph import INPUT_OP, WEIGHT_OP, Graph

INSTALL_HINT = ("install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), `dnf install graphviz` (Fedora), "
                "`brew install graphviz` (macOS) or `conda install graphviz`; or write --format dot and render "
                "it elsewhere")
_STYLES = {
    INPUT_OP: 'shape=oval, style=filled, fillcolor="#e8f0fe"',
    WEIGHT_OP: 'shape=box, style=filled, fillcolor="#f2f2f2", color=gray60, fontcolor=gray40, fontsize=8, '
               'height=0.2, margin="0.04,0.02"',
}
_OP_STYLE = 'shape=box, style="rounded,filled", fillcolor=white'
_SIDE_EFFECT_STYLE = 'shape=box, style="rounded,dashed"'


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_statement(graph: Graph, node: str, dot_id: str) -> str:
    d = graph[node]
    if d["op"] == WEIGHT_OP:
        label, style = d["name"], _STYLES[WEIGHT_OP]
    elif d["op"] == INPUT_OP:
        label, style = node, _STYLES[INPUT_OP]
    else:
        spec = O.get_spec(d["op"])
        label = f"{d['op']}\n{node}"
        style = _SIDE_EFFECT_STYLE if spec is not None and spec.side_effect else _OP_STYLE
    tooltip = f"{node} at {d['loc']}" if d["loc"] is not None else node
    return f"{dot_id} [label={_q(label)}, tooltip={_q(tooltip)}, {style}];"


def to_dot(graph: Graph) -> str:
    """The graph as Graphviz DOT text: one node per op, one edge per value read, groups as clusters.

    Inputs and weights are drawn once per use, next to their reader: edges from $sin or a tied
    embedding across the whole model would make the drawing unreadable and `dot` very slow.
    """
    ids = {n: f"n{i}" for i, n in enumerate(graph.order())}
    nodes: dict[str | None, list[str]] = {}  # fused group (None: none) -> node statements
    edges = []

    def draw(node: str, dot_id: str) -> None:
        nodes.setdefault(graph[node].get("group"), []).append(_node_statement(graph, node, dot_id))

    for node, dot_id in ids.items():
        if graph[node]["op"] not in _STYLES or not graph.users(node):
            draw(node, dot_id)
    for k, (src, dst, port) in enumerate(graph.nx.edges(keys=True)):
        tail = ids[src]
        if graph[src]["op"] in _STYLES:
            tail = f"{tail}_{k}"
            draw(src, tail)
        t = graph[src]["type"]
        grey = ", color=gray70, fontcolor=gray50" if graph[src]["op"] == WEIGHT_OP else ""
        edges.append(f"  {tail} -> {ids[dst]} [label={_q(str(t) if t is not None else '')}, tooltip={_q(port)}{grey}];")
    lines = ["digraph graphllm {", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color=gray30];']
    lines += [f"  {s}" for s in nodes.pop(None, [])]
    for group, statements in nodes.items():
        lines.append(f"  subgraph {_q('cluster_' + group)} {{")
        lines.append(f'    label={_q(group)}; style="rounded,dashed"; color=steelblue; fontcolor=steelblue;')
        lines += [f"    {s}" for s in statements]
        lines.append("  }")
    lines += edges
    for i, (name, node) in enumerate(graph.outputs.items()):
        lines.append(f"  out{i} [label={_q(name)}, shape=doubleoctagon];")
        lines.append(f"  {ids[node]} -> out{i};")
    return "\n".join(lines + ["}"]) + "\n"


def render_svg(dot_text: str) -> bytes:
    """SVG of DOT text, drawn by Graphviz's `dot -Tsvg`; a GraphLLMError says how to install it if missing."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphLLMError(f"SVG output needs Graphviz's `dot` program, which is not on PATH: {INSTALL_HINT}")
    done = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise GraphLLMError(f"Graphviz `dot -Tsvg` failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
