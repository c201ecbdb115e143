"""fuse_elementwise: a chain of elementwise ops, each read only by the next, becomes one kernel.

E.g. Gemma 2's final logit soft-capping Mul -> Tanh -> Mul, or a GELU MLP's Gelu -> MulTo: one
FusedElementwise node whose ``chain`` lists the steps (each computed by the op's own reference and
lowered by the op's own TE stage), so the intermediates never reach memory. A chain has at most
one other operand (the input1 of its AddTo/MulTo steps).
"""

from __future__ import annotations

from ..dsl.graph import Graph
from ..dsl.ops import BINARY_ELEMENTWISE, UNARY_ELEMENTWISE


def _running_port(op: str) -> str:
    """The port through which a chain step receives the running value."""
    return "input0" if op in BINARY_ELEMENTWISE else "input"


def _next(g: Graph, node: str, extra: str | None) -> str | None:
    """The step after `node`: its only reader, elementwise, reading it as the running value (same extra)."""
    users = g.users(node)
    if len(users) != 1 or node in g.outputs.values():
        return None
    user, port = users[0]
    op = g[user]["op"]
    if op not in UNARY_ELEMENTWISE + BINARY_ELEMENTWISE or port != _running_port(op):
        return None
    if op in BINARY_ELEMENTWISE and extra is not None and g.inputs(user)["input1"] != extra:
        return None
    return user


def fuse_elementwise(graph: Graph) -> Graph:
    """A copy of the graph with each chain of two or more elementwise ops made one FusedElementwise."""
    g = graph.copy()
    done: set[str] = set()
    for start in g.order():
        if start in done or start not in g or g[start]["op"] not in UNARY_ELEMENTWISE + BINARY_ELEMENTWISE:
            continue
        chain = [start]
        extra = g.inputs(start).get("input1") if g[start]["op"] in BINARY_ELEMENTWISE else None
        while (step := _next(g, chain[-1], extra)) is not None:  # a chain value has one reader: no operand
            if g[step]["op"] in BINARY_ELEMENTWISE:                # of a later step can come from inside it
                extra = g.inputs(step)["input1"]
            chain.append(step)
        done.update(chain)
        if len(chain) < 2:
            continue
        last, first = chain[-1], g[start]
        source = g.inputs(start)[_running_port(first["op"])]
        steps = [{"op": g[n]["op"], "attrs": dict(g[n]["attrs"])} for n in chain]
        g[last].update(op="FusedElementwise", attrs={"chain": steps})
        g.set_inputs(last, {"input": source, **({"input1": extra} if extra is not None else {})})
        g.drop_unused(chain[:-1])
    return g
