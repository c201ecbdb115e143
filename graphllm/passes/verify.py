"""verify: infer every value's shape and dtype, checking each op's rule; errors name file:line."""

from __future__ import annotations

from ..dsl import ops as O
from ..dsl.graph import INPUT_OP, TIED_HEAD, WEIGHT_OP, Graph
from ..dsl.inputs import OUTPUT, input_types
from ..dsl.types import SEQS
from ..errors import GraphBuildError


def describe_inputs(graph: Graph, node: str) -> str:
    """'input = data['x'] f32[T,64], weight = weight['w'] f32[64,64]' for error messages."""
    parts = []
    for port, src in graph.inputs(node).items():
        d = graph[src]
        kind = "weight" if d["op"] == WEIGHT_OP else "data"
        parts.append(f"{port} = {kind}[{d['name']!r}] {d['type']}")
    return ", ".join(parts)


def _tied_hint(g: Graph) -> str:
    """For a shape error: the Linear weights that were absent and read the embedding table (a likely cause)."""
    tied = [f"{g[n]['loc']}: tensor {g[n]['tied']!r}" for n in g.order()
            if g[n].get("tied") and not g[n]["tied"].endswith(TIED_HEAD)]
    if not tied:
        return ""
    return (f"; note: {'; '.join(tied)} {'is' if len(tied) == 1 else 'are'} missing from the checkpoint, so its "
            f"Linear read the embedding table instead (fastllm's rule for absent weights): a misspelled name?")


def verify(graph: Graph) -> Graph:
    """Return a copy of the graph with every node's ``type`` set; raise GraphBuildError on a bad op."""
    g = graph.copy()
    reserved = input_types(g.config)
    for node in g.order():
        d = g[node]
        if d["op"] == INPUT_OP:
            d["type"] = reserved[d["attrs"]["name"]]
            continue
        if d["op"] == WEIGHT_OP:
            continue
        spec = O.get_spec(d["op"])
        if spec is None:
            raise GraphBuildError(f"{g.where(node)}: unknown op {d['op']!r}")
        types = {port: g[src]["type"] for port, src in g.inputs(node).items()}
        try:
            d["type"] = spec.infer(types, d["attrs"])
        except O.ShapeError as e:
            raise GraphBuildError(f"{g.where(node)}: {e} ({describe_inputs(g, node)}){_tied_hint(g)}") from None
    out = g.outputs.get(OUTPUT)
    if out is None:
        raise GraphBuildError(f"the graph has no {OUTPUT!r} output")
    t = g[out]["type"]
    if t is None or t.rank != 2 or t.shape[0] != SEQS or not t.dtype.startswith("float"):
        raise GraphBuildError(f"{g.where(out)}: {OUTPUT!r} must be a float [sequences, vocab] tensor, got {t} "
                              f"(did you forget SplitLastTokenStates?)")
    return g
