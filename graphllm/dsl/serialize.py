"""Graph <-> JSON: the machine-readable form stored in build plans and hashed into cache keys."""

from __future__ import annotations

from typing import Any

from .graph import Graph, SourceLoc
from .types import TensorType


def graph_to_json(graph: Graph, with_locs: bool = True) -> dict[str, Any]:
    """Nodes in execution order with op, attrs, type, name, inputs (and source locations)."""
    nodes = []
    for n in graph.order():
        d = graph[n]
        item = {"id": n, "op": d["op"], "attrs": d["attrs"], "name": d["name"],
                "type": str(d["type"]) if d["type"] is not None else None, "inputs": graph.inputs(n)}
        if with_locs and d["loc"] is not None:
            item["loc"] = [d["loc"].file, d["loc"].line]
        if d.get("group") is not None:
            item["group"] = d["group"]
        nodes.append(item)
    return {"config": graph.config, "outputs": graph.outputs, "nodes": nodes}


def graph_from_json(data: dict[str, Any]) -> Graph:
    """Inverse of graph_to_json."""
    g = Graph(data["config"])
    for item in data["nodes"]:
        loc = SourceLoc(*item["loc"]) if item.get("loc") else None
        t = TensorType.parse(item["type"]) if item["type"] else None
        g.add(item["id"], item["op"], item["attrs"], name=item["name"], loc=loc, type=t, inputs=item["inputs"])
        if item.get("group") is not None:
            g[item["id"]]["group"] = item["group"]
    g.outputs = dict(data["outputs"])
    return g
