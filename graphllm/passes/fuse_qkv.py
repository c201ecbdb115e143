"""fuse_qkv: attention over Split + ExpandHead views of one packed projection reads the projection itself.

FusedAttention(q, curk, curv) whose three inputs are ExpandHead(Split(X)) of consecutive column
ranges [q | k | v] of one X becomes QKVAttention(X): the kernels index the heads inside X, so the
three split copies disappear (what merge_linears leaves, and Phi-3's own packed qkv_proj).
"""

from __future__ import annotations

from ..dsl.graph import Graph
from ..dsl.ops import get_spec

QKV_ATTRS = {"layer", *(p.name for p in get_spec("QKVAttention").attr_params)}  # FusedAttention attrs that carry over


def _view_of_split(g: Graph, node: str, reader: tuple[str, str]) -> tuple[str, int, int, int] | None:
    """(X, start, end, headDim) when `node` is ExpandHead(Split(X, last axis)) read only by `reader`."""
    if g[node]["op"] != "ExpandHead" or g.users(node) != [reader]:
        return None
    split = g.inputs(node)["input"]
    a = g[split]["attrs"]
    if g[split]["op"] != "Split" or g.users(split) != [(node, "input")] or split in g.outputs.values():
        return None
    x = g.inputs(split)["input"]
    if a["axis"] not in (-1, g[x]["type"].rank - 1) or g[x]["type"].rank != 2:
        return None
    return x, a["start"], a["end"], g[node]["attrs"]["headDim"]


def fuse_qkv(graph: Graph) -> Graph:
    """A copy of the graph with each FusedAttention over one packed q|k|v projection made a QKVAttention."""
    g = graph.copy()
    for attn in list(g.nodes_of("FusedAttention")):
        ins = g.inputs(attn)
        views = [_view_of_split(g, ins[p], (attn, p)) for p in ("q", "curk", "curv")]
        if None in views:
            continue
        (xq, q0, q1, d), (xk, k0, k1, dk), (xv, v0, v1, dv) = views
        width = g[xq]["type"].shape[1]
        if not (xq == xk == xv and d == dk == dv and q0 == 0 and q1 == k0 and k1 == v0 and v1 == width
                and k1 - k0 == v1 - v0):
            continue
        d_attn = g[attn]
        d_attn["op"] = "QKVAttention"
        kept = {k: v for k, v in d_attn["attrs"].items() if k in QKV_ATTRS}
        d_attn["attrs"] = {**kept, "numHeads": q1 // d, "numKVHeads": (k1 - k0) // d}
        for p in ("q", "curk", "curv"):
            g.set_input(attn, p, None)
        g.set_input(attn, "qkv", xq)
        if g[xq].get("group"):  # drawn in one cluster with its projection (merge_linears' group)
            d_attn["group"] = g[xq]["group"]
        g.drop_unused(ins[p] for p in ("q", "curk", "curv"))  # the ExpandHeads, then their Splits
    return g
