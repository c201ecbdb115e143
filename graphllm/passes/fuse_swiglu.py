"""fuse_swiglu: MulTo(Silu(Linear(x, Wg)), Linear(x, Wu)) -> Swiglu(Linear(x, [Wg; Wu])).

The gate and up projections become one Linear over the row-concatenated weight (a derived weight
node: attrs ``concat`` lists the checkpoint tensors), and SiLU-times-up becomes one Swiglu kernel:
four kernel launches per MLP become two, and the two GEMVs become one larger one.
"""

from __future__ import annotations

from ..dsl.graph import Graph
from .merge_linears import concat_weight


def _only_user(g: Graph, node: str) -> tuple[str, str] | None:
    users = g.users(node)
    return users[0] if len(users) == 1 else None


def _match(g: Graph, mul: str) -> tuple[str, str, str] | None:
    """(silu, gate linear, up linear) when `mul` is MulTo(Silu(gate), up) over one shared input."""
    ins = g.inputs(mul)
    silu, up = ins.get("input0"), ins.get("input1")
    if silu is None or g[silu]["op"] != "Silu" or g[up]["op"] != "Linear":
        return None
    gate = g.inputs(silu)["input"]
    if g[gate]["op"] != "Linear" or _only_user(g, gate) != (silu, "input") or _only_user(g, silu) != (mul, "input0"):
        return None
    if _only_user(g, up) != (mul, "input1"):
        return None
    gi, ui = g.inputs(gate), g.inputs(up)
    if gi["input"] != ui["input"] or "bias" in gi or "bias" in ui:
        return None
    wg, wu = g[gi["weight"]]["type"], g[ui["weight"]]["type"]
    if wg != wu or g[gi["weight"]]["attrs"].get("concat") or g[ui["weight"]]["attrs"].get("concat"):
        return None
    return silu, gate, up


def fuse_swiglu(graph: Graph) -> Graph:
    """A copy of the graph with every gate/up SiLU MLP fused (see the module doc)."""
    g = graph.copy()
    order = g.order()
    before: dict[str, list[str]] = {}
    for mul in [n for n in order if g[n]["op"] == "MulTo"]:
        m = _match(g, mul)
        if m is None:
            continue
        silu, gate, up = m
        x = g.inputs(gate)["input"]
        wg, wu = g.inputs(gate)["weight"], g.inputs(up)["weight"]
        weight = concat_weight(g, [wg, wu])
        merged = f"{gate}+up"
        out_t = g[gate]["type"]
        g.add(merged, "Linear", {}, name=g[gate]["name"], loc=g[gate]["loc"],
              type=out_t.with_shape(out_t.shape[:-1] + (2 * out_t.shape[-1],)),
              inputs={"input": x, "weight": weight})
        g[mul].update(op="Swiglu", attrs={})
        g.set_inputs(mul, {"input": merged})
        g.drop_unused([silu, up])  # then gate, and the weights nothing else reads
        g[merged]["group"] = g[mul]["group"] = f"swiglu:{g[mul]['name']}{mul.partition('#')[2]}"
        before[mul] = [weight, merged]
    g.reorder(order, before)
    return g
