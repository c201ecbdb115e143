"""cse: merge nodes that compute the same op with the same attrs on the same inputs."""

from __future__ import annotations

import json

from ..dsl import ops as O
from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph


def cse(graph: Graph) -> Graph:
    """A copy of the graph in which each distinct computation appears once (side-effect ops kept)."""
    g = graph.copy()
    seen: dict[str, str] = {}
    for node in g.order():
        d = g[node]
        spec = O.get_spec(d["op"])
        if d["op"] in (INPUT_OP, WEIGHT_OP) or spec is None or spec.side_effect:
            continue
        key = json.dumps([d["op"], sorted(d["attrs"].items()), sorted(g.inputs(node).items())], default=str)
        if key not in seen:
            seen[key] = node
            continue
        g.replace_uses(node, seen[key])
        g.drop_unused([node])
    return g
