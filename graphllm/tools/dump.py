"""Render a graph as text IR, Graphviz DOT, SVG or JSON (what `graphllm dump` writes)."""

from __future__ import annotations

import json
from pathlib import Path

from ..dsl.dot import render_svg, to_dot
from ..dsl.graph import Graph
from ..dsl.serialize import graph_to_json
from ..dsl.textir import print_graph
from ..errors import GraphLLMError

FORMATS = ("text", "dot", "svg", "json")


def render(graph: Graph, fmt: str) -> str | bytes:
    """The graph in one of FORMATS (SVG as bytes; it needs Graphviz's `dot`)."""
    if fmt == "svg":
        return render_svg(to_dot(graph))
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "json":
        return json.dumps(graph_to_json(graph), indent=1) + "\n"
    return print_graph(graph)


def write_new(path: Path, data: str | bytes, force: bool) -> None:
    """Write a file, refusing to replace an existing one unless ``force``."""
    try:
        with open(path, "wb" if force else "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    except FileExistsError:
        raise GraphLLMError(f"{path} exists; pass --force to overwrite it") from None
