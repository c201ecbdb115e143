"""Fusion into Linear: what surrounds a projection becomes its prologue or epilogue (one FusedLinear).

- fuse_norm: an RMSNorm whose every reader is a Linear's input is folded into each of them (the
  norm of one row is K multiply-adds: recomputing it per consumer is cheaper than a launch and a
  round trip through memory);
- fuse_act: a Swiglu read only by a Linear becomes that Linear's input prologue;
- fuse_residual: AddTo(h, Linear(...)) becomes the Linear's epilogue (y = h + W x).
Each rewrite keeps the reference semantics exactly (FusedLinear's reference composes the ops').
"""

from __future__ import annotations

from ..dsl.graph import Graph
from ..dsl.ops import LINEAR_OPS


def _is_plain_linear_input(g: Graph, node: str, port: str) -> bool:
    """True when (node, port) is the input of a Linear (or FusedLinear) with no prologue yet."""
    d = g[node]
    return port == "input" and d["op"] in LINEAR_OPS and d["attrs"].get("prologue", "none") == "none"


def _as_fused(g: Graph, node: str, **attrs: object) -> None:
    """Turn a Linear node into a FusedLinear in place, adding attrs."""
    d = g[node]
    d["op"] = "FusedLinear"
    d["attrs"] = {**d["attrs"], **attrs}


def _outputs(g: Graph) -> set[str]:
    return set(g.outputs.values())


def fuse_norm(graph: Graph) -> Graph:
    """A copy of the graph with every RMSNorm that only feeds Linears folded into them."""
    g = graph.copy()
    for norm in list(g.nodes_of("RMSNorm")):
        users = g.users(norm)
        if not users or norm in _outputs(g) or not all(_is_plain_linear_input(g, u, p) for u, p in users):
            continue
        ins, attrs = g.inputs(norm), g[norm]["attrs"]
        extra = {"eps": attrs["eps"], **({"weightOffset": attrs["weightOffset"]} if attrs.get("weightOffset") else {})}
        for user, _ in users:
            _as_fused(g, user, prologue="rmsnorm", **extra)
            g.set_input(user, "input", ins["input"])
            g.set_input(user, "norm", ins["weight"])
        g.drop_unused([norm])
    return g


def fuse_act(graph: Graph) -> Graph:
    """A copy of the graph with each Swiglu read only by one Linear made that Linear's prologue."""
    g = graph.copy()
    for act in list(g.nodes_of("Swiglu")):
        users = g.users(act)
        if len(users) != 1 or act in _outputs(g) or not _is_plain_linear_input(g, *users[0]):
            continue
        user = users[0][0]
        _as_fused(g, user, prologue="swiglu")
        if g[act].get("group"):  # the MLP's fused group (fuse_swiglu) now ends with this projection
            g[user]["group"] = g[act]["group"]
        g.set_input(user, "input", g.inputs(act)["input"])
        g.drop_unused([act])
    return g


def fuse_residual(graph: Graph) -> Graph:
    """A copy of the graph with each AddTo(h, y), y a Linear read by nothing else, done by that Linear."""
    g = graph.copy()
    for add in [n for n in g.order() if g[n]["op"] == "AddTo"]:
        ins = g.inputs(add)
        y = ins["input1"]
        if (g[add]["attrs"].get("alpha", 1.0) != 1.0 or g[y]["op"] not in LINEAR_OPS or len(g.users(y)) != 1
                or "residual" in g.inputs(y) or y in _outputs(g)):
            continue
        d, yd = g[add], g[y]
        d.update(op="FusedLinear", attrs={"prologue": "none", **yd["attrs"]}, loc=yd["loc"])
        if yd.get("group"):
            d["group"] = yd["group"]
        g.set_inputs(add, {"residual": ins["input0"], **g.inputs(y)})
        g.drop_unused([y])
    return g
