"""fold_constants: a node computed from weights only is computed once at load, not at every step.

The node becomes a derived Weight whose attrs ``fold`` say how to make it (op, attrs, and per port
a checkpoint weight name or a nested fold); the weight loader evaluates it with the op's own numpy
reference, so the folded value is exactly what the graph would have computed. Folding repeats down
chains (a folded value is a weight for its consumers). Ops with side effects or a KV cache are never folded.
A norm's ``weightOffset`` (Gemma scales by 1 + w) is folded the same way: w + offset becomes a weight.
"""

from __future__ import annotations

from ..dsl import ops as O
from ..dsl.graph import INPUT_OP, WEIGHT_OP, Graph


OFFSET_PORTS = {"RMSNorm": "weight", "FusedLinear": "norm"}  # ops whose scale weight carries a weightOffset


def _fold_weight_offsets(g: Graph) -> None:
    """RMSNorm(x, w, weightOffset=c) -> RMSNorm(x, w') with w' = Add(w, v=c) folded (Gemma's 1 + w)."""
    for node in g.order():
        d = g[node]
        port = OFFSET_PORTS.get(d["op"])
        src = g.inputs(node).get(port) if port else None
        if not d["attrs"].get("weightOffset") or src is None or g[src]["op"] != WEIGHT_OP:
            continue
        offset = d["attrs"].pop("weightOffset")
        recipe = {"op": "Add", "attrs": {"v": offset}, "inputs": {"input": g[src]["attrs"].get("fold") or g[src]["name"]}}
        name = f"Add(input={g[src]['name']}, v={offset!r})"
        folded = f"@{name}"
        if folded not in g:
            g.add(folded, WEIGHT_OP, {"name": name, "fold": recipe}, name=name, type=g[src]["type"])
        g.set_input(node, port, folded)
        g.drop_unused([src])


def fold_constants(graph: Graph) -> Graph:
    """A copy of the graph in which every weight-only computation is a derived Weight node."""
    g = graph.copy()
    _fold_weight_offsets(g)
    order = g.order()
    before: dict[str, list[str]] = {}
    for node in order:
        d = g[node]
        spec = O.get_spec(d["op"])
        ins = g.inputs(node)
        if (d["op"] in (INPUT_OP, WEIGHT_OP) or spec is None or spec.side_effect or spec.kv_shape is not None
                or not ins or any(g[src]["op"] != WEIGHT_OP for src in ins.values())):
            continue
        names = {port: g[src]["name"] for port, src in ins.items()}
        recipes = {port: g[src]["attrs"].get("fold") or g[src]["name"] for port, src in ins.items()}
        name = f"{d['op']}({', '.join(f'{p}={w}' for p, w in names.items())})"
        folded = f"@{name}"
        if folded not in g:
            g.add(folded, WEIGHT_OP, {"name": name, "fold": {"op": d["op"], "attrs": dict(d["attrs"]), "inputs": recipes}},
                  name=name, type=d["type"])
        g.replace_uses(node, folded)
        g.drop_unused([node])
        before[node] = [folded]
    g.reorder(order, before)
    return g
