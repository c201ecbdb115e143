"""fuse_rope: RoPE on q and k moves into FusedAttention (rotaryDim + positionIds/sin/cos inputs).

The attention kernel rotates each query row as it loads it and the KV-cache write rotates each key
as it stores it, so the two LlamaRotatePosition2D launches (and their output buffers) disappear.
Applies when both rotations share their tables and positions and feed only this attention.
"""

from __future__ import annotations

from ..dsl.graph import Graph
from ..dsl.ops import ROPE_PORTS

ROPE = "LlamaRotatePosition2D"


def _sole_rope(g: Graph, node: str, attn: str, port: str) -> bool:
    """True when `node` is a RoPE read only by (attn, port)."""
    return g[node]["op"] == ROPE and g.users(node) == [(attn, port)] and node not in g.outputs.values()


def fuse_rope(graph: Graph) -> Graph:
    """A copy of the graph with q/k RoPE fused into each FusedAttention that allows it."""
    g = graph.copy()
    for attn in list(g.nodes_of("FusedAttention")):
        ins = g.inputs(attn)
        q, k = ins["q"], ins["curk"]
        if g[attn]["attrs"].get("rotaryDim") or not (_sole_rope(g, q, attn, "q") and _sole_rope(g, k, attn, "curk")):
            continue
        qi, ki = g.inputs(q), g.inputs(k)
        if any(qi[p] != ki[p] for p in ROPE_PORTS) or g[q]["attrs"] != g[k]["attrs"]:
            continue
        g[attn]["attrs"]["rotaryDim"] = g[q]["attrs"]["rotaryDim"]
        g.set_input(attn, "q", qi["input"])
        g.set_input(attn, "curk", ki["input"])
        for p in ROPE_PORTS:
            g.set_input(attn, p, qi[p])
        g.drop_unused([q, k])
    return g
