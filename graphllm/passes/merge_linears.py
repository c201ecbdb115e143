"""merge_linears: Linears that read the same value become one Linear over their stacked weights + Splits.

Found by dataflow (every reader of a value), not by op order: q/k/v projections of one normed
input become one GEMV over [Nq + Nk + Nv, K] rows (one pass over x, one launch instead of three);
each old projection becomes a Split of the merged result, which later passes (fuse_qkv) absorb.
The stacked weight is a derived Weight node whose attrs ``concat`` list the checkpoint tensors.
"""

from __future__ import annotations

import json

from ..dsl.graph import WEIGHT_OP, Graph
from ..dsl.ops import LINEAR_OPS
from ..dsl.types import TensorType


def concat_weight(g: Graph, weights: list[str]) -> str:
    """The derived Weight node stacking the rows of `weights` (Weight nodes of one dtype), made once."""
    names = [p for w in weights for p in (g[w]["attrs"].get("concat") or [g[w]["name"]])]
    types = [g[w]["type"] for w in weights]
    node = f"@{'+'.join(names)}"
    if node not in g:
        t = types[0]
        g.add(node, WEIGHT_OP, {"name": "+".join(names), "concat": names}, name="+".join(names),
              type=TensorType((sum(int(x.shape[0]) for x in types), *t.shape[1:]), t.dtype))
    return node


def _key(g: Graph, node: str) -> str | None:
    """What must agree for two readers of one value to merge (None: this one never merges)."""
    d = g[node]
    ins = g.inputs(node)
    if d["op"] not in LINEAR_OPS or "residual" in ins or node in g.outputs.values():
        return None
    w = g[ins["weight"]]["type"]
    return json.dumps([d["op"], sorted(d["attrs"].items()), ins.get("norm"), "bias" in ins, w.dtype, w.shape[1:]],
                      default=str)


def merge_linears(graph: Graph) -> Graph:
    """A copy of the graph in which the mergeable Linears of every value are merged (see the module doc)."""
    g = graph.copy()
    order = g.order()
    rank = {n: i for i, n in enumerate(order)}
    before: dict[str, list[str]] = {}
    for value in order:
        groups: dict[str, list[str]] = {}
        for user, port in g.users(value):
            key = _key(g, user) if port == "input" else None
            if key is not None and user not in groups.get(key, []):
                groups.setdefault(key, []).append(user)
        for members in groups.values():
            if len(members) > 1:
                _merge(g, value, sorted(members, key=rank.__getitem__), before)
    g.reorder(order, before)
    return g


def _merge(g: Graph, value: str, members: list[str], before: dict[str, list[str]]) -> None:
    """Replace `members` (Linears reading `value`) by one merged Linear and a Split per member, placed
    (in ``before``) ahead of the first member."""
    first = g[members[0]]
    ins = [g.inputs(m) for m in members]
    weight = concat_weight(g, [i["weight"] for i in ins])
    extra = {"bias": concat_weight(g, [i["bias"] for i in ins])} if "bias" in ins[0] else {}
    if "norm" in ins[0]:
        extra["norm"] = ins[0]["norm"]
    widths = [int(g[m]["type"].shape[-1]) for m in members]
    out_t = first["type"]
    merged = members[0] + "".join("+" + m.lstrip("%") for m in members[1:])
    group = f"merge:{merged}"
    g.add(merged, first["op"], dict(first["attrs"]), name="+".join(g[m]["name"] for m in members), loc=first["loc"],
          type=out_t.with_shape(out_t.shape[:-1] + (sum(widths),)), inputs={"input": value, "weight": weight, **extra})
    g[merged]["group"] = group
    start = 0
    for m, width in zip(members, widths):
        g[m].update(op="Split", attrs={"axis": -1, "start": start, "end": start + width}, group=group)
        g.set_inputs(m, {"input": merged})
        start += width
    g.drop_unused({i[p] for i in ins for p in ("weight", "bias") if p in i})
    before.setdefault(members[0], []).extend(n for n in (weight, extra.get("bias"), merged) if n)
