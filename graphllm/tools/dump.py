"""Render a graph as text IR, Graphviz DOT, SVG or JSON (what `graphllm dump` writes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..dsl.dot import render_svg, to_dot
from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph
from ..dsl.serialize import graph_to_json
from ..errors import GraphLLMError

FORMATS = ("text", "dot", "svg", "json")
_LAYER = re.compile(r"(?:^|\.)(?:layers|blk|h)\.(\d+)\.")  # a weight of layer N: model.layers.N., blk.N., h.N.


def node_layers(graph: Graph) -> dict[str, int | None]:
    """Each node's layer: that of the layered weights it reads, else the last of its computed inputs' (None: none)."""
    layers: dict[str, int | None] = {}
    for node in graph.order():
        d = graph[node]
        if d["op"] in (INPUT_OP, WEIGHT_OP):
            match = _LAYER.search(d["name"] or node) if d["op"] == WEIGHT_OP else None
            layers[node] = int(match.group(1)) if match else None
            continue
        inputs = graph.inputs(node).values()
        own = [layers[i] for i in inputs if graph[i]["op"] == WEIGHT_OP]
        read = [layers[i] for i in inputs if graph[i]["op"] != INPUT_OP]
        found = [n for n in (own if own else read) if n is not None]
        layers[node] = None if own and not found else max(found, default=None)
    return layers


def slice_layers(graph: Graph, layers: range) -> Graph:
    """The nodes of ``layers`` plus the values they read (those computed outside drawn without their inputs)."""
    owner = node_layers(graph)
    chosen = {n for n, layer in owner.items() if layer in layers and graph[n]["op"] not in (INPUT_OP, WEIGHT_OP)}
    if not chosen:
        count = max((n for n in owner.values() if n is not None), default=-1) + 1
        asked = f"{layers.start}-{layers.stop - 1}" if len(layers) > 1 else str(layers.start)
        raise GraphLLMError(f"--layers {asked}: the model has layers 0-{count - 1}")
    sliced = graph.copy()
    border = {src for n in chosen for src in graph.inputs(n).values()} - chosen
    for node in border:
        sliced.set_inputs(node, {})
    sliced.nx.remove_nodes_from([n for n in graph.order() if n not in chosen | border])
    sliced.outputs = {name: n for name, n in graph.outputs.items() if n in chosen}
    return sliced


def render(graph: Graph, fmt: str) -> str | bytes:
    """The graph in one of FORMATS (SVG as bytes; it needs Graphviz's `dot`)."""
    if fmt == "svg":
        return render_svg(to_dot(graph))
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "json":
        return json.dumps(graph_to_json(graph), indent=1) + "\n"
    from ..dsl.textir import print_graph  # lark is loaded by dumps, not by every command's start

    return print_graph(graph)


def write_new(path: Path, data: str | bytes, force: bool) -> None:
    """Write a file, refusing to replace an existing one unless ``force``."""
    try:
        with open(path, "wb" if force else "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    except FileExistsError:
        raise GraphLLMError(f"{path} exists; pass --force to overwrite it") from None
