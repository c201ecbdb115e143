"""dce: drop nodes whose values reach neither the output nor a side-effect op (Print, Exit)."""

from __future__ import annotations

from ..dsl.graph import Graph


def dce(graph: Graph) -> Graph:
    """A copy of the graph without dead nodes."""
    g = graph.copy()
    g.drop_unused(g.order())
    return g
