"""quantize: give Linear weights a block format (`--dtype int8` / `int4g[GROUP]` / `q5_0` / `q5_1`) or a 16-bit float
type (`--dtype float16` / `bfloat16`), weight-only: kernels widen or decode the weights, activations
stay float32.

A float32 weight changes type only when every reader is a (Fused)Linear's weight port (or an Embedding, when
embeddings are included: always for the 16-bit types, so a tied lm_head is 16-bit too) and, for a
block format, its rows split into whole groups; the numbers follow at load.
"""

from __future__ import annotations

import re

from ..dsl.graph import WEIGHT_OP, Graph
from ..dsl.ops import LINEAR_OPS
from ..dsl.qformats import qformat
from ..dsl.types import TensorType
from ..errors import GraphLLMError

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
_DTYPE = re.compile(r"^(int8|int4)(?:g(\d+))?$")
GGUF_FORMATS = ("q5_0", "q5_1")  # GGUF block types --dtype names directly (quantized by gguf's reference code)
READ_ONLY_FORMATS = ("q4_k", "q5_k", "q6_k")  # kept from files, no quantizer here


def block_format(dtype: str) -> str | None:
    """The block format for a --dtype value (int8 -> q8_0, int4g128 -> q4_1g128, q5_0, q5_1); None for the float types."""
    if dtype in FLOAT_DTYPES:
        return None
    if dtype in GGUF_FORMATS:
        return dtype
    if dtype in READ_ONLY_FORMATS:
        raise GraphLLMError(f"--dtype {dtype}: graphllm computes on {dtype} blocks but cannot make them (llama.cpp's "
                            f"llama-quantize can); use q5_0, q5_1, int8 or int4")
    m = _DTYPE.match(dtype)
    if not m:
        raise GraphLLMError(f"unknown --dtype {dtype!r} (use float32, float16, bfloat16, int8, int8g<GROUP>, int4, "
                            f"int4g<GROUP>, q5_0 or q5_1)")
    base = "q8_0" if m.group(1) == "int8" else "q4_1"
    group = int(m.group(2) or 32)
    if group < 2 or group % 2:
        raise GraphLLMError(f"--dtype {dtype}: group size {group} must be an even number")
    return base if group == 32 else f"{base}g{group}"


def quantize_weights(graph: Graph, dtype: str, include_embeddings: bool = False,
                     notes: list[str] | None = None) -> Graph:
    """A copy of the graph whose eligible float32 weights have ``dtype``'s block format or 16-bit float type."""
    fmt_name = block_format(dtype)
    if dtype == "float32":
        return graph
    fmt = qformat(fmt_name) if fmt_name else None
    g = graph.copy()
    embeddings = include_embeddings or fmt is None
    ports = {(op, "weight") for op in LINEAR_OPS} | ({("Embedding", "weight")} if embeddings else set())
    skipped = []
    for node in list(g.nodes_of(WEIGHT_OP)):
        t = g[node]["type"]
        users = g.users(node)
        if t.dtype != "float32" or t.rank != 2 or not users or any((g[d]["op"], p) not in ports for d, p in users):
            continue
        if fmt is not None and t.shape[1] % fmt.group:
            skipped.append(g[node]["name"])
            continue
        g[node]["type"] = TensorType(t.shape, fmt_name or dtype)
    if skipped and notes is not None:
        notes.append(f"--dtype {dtype}: kept {len(skipped)} weight(s) in float32, their rows are not a whole "
                     f"number of {fmt.group}-element groups: {', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}")
    return g
