"""The numpy reference executor: runs a verified graph op by op from the op specs.

It is the oracle for every kernel and every pass. It keeps a contiguous KV cache per layer,
``[slots, max_context, kv_heads, head_dim]`` of the node's kvDtype (float16 rounds as the kernels' stores do),
and serves prefill (many tokens) and decode (one).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from . import ops as O
from .graph import INPUT_OP, WEIGHT_OP, Graph
from .inputs import OUTPUT, rope_tables
from .qformats import dequantize
from .types import TensorType


class ReferenceExecutor:
    """Executes a graph (after the verify pass) with numpy."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], *, max_context: int,
                 num_slots: int = 1) -> None:
        self.graph = graph
        self.order = graph.order()
        self.max_context = max_context
        self.weights = {n: _float_weight(weights[graph[n]["attrs"]["name"]], graph[n]["type"])
                        for n in graph.nodes_of(WEIGHT_OP)}
        self.tables = rope_tables(graph.config)
        self.caches: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for n in graph.order():
            spec = O.get_spec(graph[n]["op"])
            if spec is not None and spec.kv_shape is not None:
                types = {port: graph[src]["type"] for port, src in graph.inputs(n).items()}
                attrs = graph[n]["attrs"]
                shape = (num_slots, max_context) + spec.kv_shape(types, attrs)
                dtype = O.kv_dtype(attrs)
                self.caches[attrs["layer"]] = (np.zeros(shape, dtype), np.zeros(shape, dtype))
        self.attrs = {}  # each op node's attrs with its spec's defaults filled in (IR text may omit them)
        for n in self.order:
            spec = O.get_spec(graph[n]["op"])
            if spec is not None:
                defaults = {p.name: p.default for p in spec.attr_params if p.default is not None}
                self.attrs[n] = defaults | graph[n]["attrs"]
        self.last_use = {}
        for i, n in enumerate(self.order):
            for src in graph.inputs(n).values():
                self.last_use[src] = i

    def run(self, input_ids: Sequence[int] | np.ndarray, positions: Sequence[int] | np.ndarray,
            seq_lens: Sequence[int] | np.ndarray, slots: Sequence[int] | np.ndarray,
            observe: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
        """One step over packed sequences: returns the logits of each sequence's last token [B, vocab].

        ``observe(node, value)`` (if given) sees every op's value as it is computed, in order.
        """
        feeds = {
            "inputIds": np.asarray(input_ids, np.int32),
            "positionIds": np.asarray(positions, np.int32),
            "seqLens": np.asarray(seq_lens, np.int32),
            "attentionMask": np.zeros(len(input_ids), np.int32),
            "atype": np.zeros((), np.float32),
        } | self.tables
        ctx = O.RefContext(caches=self.caches, seq_lens=feeds["seqLens"], slots=np.asarray(slots, np.int64),
                           positions=feeds["positionIds"])
        values: dict[str, np.ndarray] = {}
        out_node = self.graph.outputs[OUTPUT]
        for i, n in enumerate(self.order):
            d = self.graph[n]
            if d["op"] == INPUT_OP:
                values[n] = feeds[d["attrs"]["name"]]
                continue
            if d["op"] == WEIGHT_OP:
                values[n] = self.weights[n]
                continue
            spec = O.get_spec(d["op"])
            ports = self.graph.inputs(n)
            args = {port: values[src] for port, src in ports.items()}
            ctx.names = {port: self.graph[src]["name"] for port, src in ports.items()}
            result = spec.reference(args, self.attrs[n], ctx)
            if result is not None:
                values[n] = result
                if observe is not None:
                    observe(n, result)
            for src in ports.values():
                if self.last_use.get(src) == i and src != out_node and self.graph[src]["op"] != WEIGHT_OP:
                    values.pop(src, None)
        return values[out_node]


def _float_weight(value: np.ndarray, t: TensorType) -> np.ndarray:
    """A weight as float32: block-quantized values are decoded exactly as the kernels decode them."""
    if t.quantized:
        return dequantize(value, t.dtype, t.shape)
    return np.ascontiguousarray(value, dtype=np.float32)
