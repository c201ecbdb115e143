"""dce: drop nodes whose values reach neither the output nor a side-effect op (Print, Exit)."""

from __future__ import annotations

import networkx as nx

from ..dsl import ops as O
from ..dsl.graph import Graph


def dce(graph: Graph) -> Graph:
    """A copy of the graph without dead nodes."""
    g = graph.copy()
    roots = set(g.outputs.values())
    roots |= {n for n, d in g.nx.nodes(data=True) if (s := O.get_spec(d["op"])) is not None and s.side_effect}
    live = set(roots)
    for r in roots:
        live |= nx.ancestors(g.nx, r)
    g.nx.remove_nodes_from([n for n in list(g.nx.nodes) if n not in live])
    return g
