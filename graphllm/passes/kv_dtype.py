"""kv_dtype: the KV cache's element type (``--kv-dtype``), written on every node that owns a cache as its kvDtype.

float16, the default (as in llama.cpp, vLLM and MLC-LLM), halves the cache's memory and the bytes attention reads
per key; float32 keeps keys and values exactly as computed. From this attribute the graph key (hence the build
cache key), the text IR, the reference executor, the kernels and the plan's caches all take the one type. An
attention node without it (IR written before the attribute) keeps a float32 cache (dsl/ops.UNSET_KV_DTYPE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dsl.ops import KV_DTYPES, get_spec, kv_caches_dtype, kv_dtype, kv_position_bytes
from ..errors import GraphLLMError

if TYPE_CHECKING:
    from ..dsl.graph import Graph

DEFAULT_KV_DTYPE = "float16"  # same greedy text and perplexity as float32, faster at long contexts (codegen/NOTES.md)
KV_DTYPE_ALIASES = {"f16": "float16", "f32": "float32"}  # llama.cpp's names (-ctk/-ctv f16)


def kv_dtype_name(value: str) -> str:
    """The KV dtype a user's value names (f16/float16, f32/float32); anything else is a one-line error."""
    name = KV_DTYPE_ALIASES.get(value, value)
    if name not in KV_DTYPES:
        raise GraphLLMError(f"unknown KV-cache dtype {value!r} (use f16, float16, f32 or float32)")
    return name


def set_kv_dtype(graph: Graph, dtype: str) -> Graph:
    """A copy of the graph whose KV-cache-owning nodes (the attention ops) have kvDtype = ``dtype``."""
    name = kv_dtype_name(dtype)
    g = graph.copy()
    for node in _cache_nodes(g):
        g[node]["attrs"]["kvDtype"] = name
    return g


def _cache_nodes(graph: Graph) -> list[str]:
    """The nodes that own a KV cache, in order."""
    return [n for n in graph.order() if (spec := get_spec(graph[n]["op"])) is not None and spec.kv_shape is not None]


def graph_kv_dtype(graph: Graph) -> str | None:
    """The KV caches' element type (None for a graph without one; mixed types are named joined by '+')."""
    return kv_caches_dtype(kv_dtype(graph[n]["attrs"]) for n in _cache_nodes(graph))


def kv_bytes_per_position(graph: Graph) -> int:
    """Bytes of KV cache one token position takes in one slot, over all layers (keys and values)."""
    def cache(n: str) -> tuple[tuple[int, ...], str]:
        types = {port: graph[src]["type"] for port, src in graph.inputs(n).items()}
        return get_spec(graph[n]["op"]).kv_shape(types, graph[n]["attrs"]), kv_dtype(graph[n]["attrs"])
    return kv_position_bytes(cache(n) for n in _cache_nodes(graph))
