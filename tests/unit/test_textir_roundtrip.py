"""Text IR round-trips every graph graphllm builds: each tiny family after the default pipeline and
quantization (as stored, float, int8/int4 blocks, GGUF-style block matrices), the real SmolLM2 Q4_1
GGUF, every type spelling; a parsed quantized IR compiles to the same logits as the graph it came from."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from graphllm.codegen.compile import compile_graph, graph_key
from graphllm.dsl.graph import WEIGHT_OP, Graph
from graphllm.dsl.qformats import qformat
from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import graph_difference, parse_graph, print_graph
from graphllm.dsl.types import DTYPES, TensorType
from graphllm.io.loader import LoadedModel, load_model, weight_types
from graphllm.pipeline import GraphOptions, build, build_graph, load_ir
from graphllm.runtime.builds import host_target
from graphllm.runtime.llm import LLM

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral", "tiny_phi3", "tiny_gemma2"]
DTYPE_FLAGS = [None, "float32", "float16", "bfloat16", "int8", "int8g16", "int4", "int4g16"]  # None: as stored
BLOCK_FORMATS = ["q8_0", "q4_0", "q4_1", "q8_0g16", "q4_0g16", "q4_1g64", "q4_1g128", "q8_0g64"]
TOL = 1e-4


@functools.cache
def tiny(name: str) -> LoadedModel:
    """A tiny fixture model, loaded once."""
    return load_model(FIXTURES / name)


def graph_as_loaded(model: LoadedModel, dtype: str | None) -> Graph:
    """The graph LLM.load and `graphllm dump` build (the front door): the default pipeline, then --dtype's quantization."""
    return build(model, GraphOptions(dtype=dtype)).graph


def assert_round_trip(g: Graph) -> None:
    """print -> parse gives an equal graph, which prints as the same text."""
    text = print_graph(g)
    back = parse_graph(text)
    assert graph_difference(g, back) is None
    assert print_graph(back) == text


def weight_dtypes(g: Graph) -> set[str]:
    """The dtypes of the graph's weights."""
    return {g[n]["type"].dtype for n in g.nodes_of(WEIGHT_OP)}


@pytest.mark.parametrize("dtype", DTYPE_FLAGS, ids=lambda d: d or "as_stored")
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_in_every_dtype_round_trips(family, dtype):
    g = graph_as_loaded(tiny(family), dtype)
    expected = {"int8": "q8_0", "int8g16": "q8_0g16", "int4": "q4_1", "int4g16": "q4_1g16"}.get(dtype, dtype)
    assert expected is None or expected in weight_dtypes(g)
    assert_round_trip(g)


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_block_matrices_as_a_gguf_stores_them_round_trip(family, fmt):
    """Every matrix whose rows split into whole groups stored in the format (as a GGUF of it loads), then the pipeline."""
    model = tiny(family)
    group = qformat(fmt).group
    types = {name: TensorType(t.shape, fmt if t.rank == 2 and t.shape[1] % group == 0 else "float32")
             for name, t in weight_types(model).items()}
    g = build_graph(model.config, types, None, [])
    assert fmt in weight_dtypes(g)
    assert_round_trip(g)


@pytest.mark.parametrize("dtype", [*DTYPES, *BLOCK_FORMATS])
def test_every_type_spelling_parses_back(dtype):
    for shape in [(), ("T",), ("B", 320), (96, 128)]:
        t = TensorType(shape, dtype)
        assert TensorType.parse(str(t)) == t


@pytest.mark.parametrize("dtype", [None, "float32", "int4g64"], ids=lambda d: d or "as_stored")
def test_smollm2_gguf_graph_round_trips(smollm2_model, dtype):
    g = graph_as_loaded(smollm2_model, dtype)
    if dtype is None:
        embedding = g.inputs(next(n for n in g.order() if g[n]["op"] == "Embedding"))["weight"]
        assert g[embedding]["type"].dtype == "q8_0" and "q4_1" in weight_dtypes(g)
    assert_round_trip(g)


@pytest.mark.parametrize("dtype", ["int4", "int8"])
def test_parsed_quantized_ir_compiles_to_the_same_logits(tmp_path, dtype, exact_kv):
    model = tiny("tiny_llama")
    built = build(model, GraphOptions(dtype=dtype, kv_dtype=exact_kv))
    original = built.graph
    ir = tmp_path / "g.ir"
    ir.write_text(print_graph(original))
    parsed = load_ir(ir)
    assert graph_key(parsed) == graph_key(original)
    compile_graph(parsed, tmp_path / "art", host_target(), show_progress=False)
    from_ir = LLM.load(model.path, dtype=dtype, artifact=tmp_path / "art", max_context=16, kv_dtype=exact_kv)
    compiled = LLM.load(model.path, dtype=dtype, max_context=16, kv_dtype=exact_kv)
    reference = ReferenceExecutor(original, built.weights, max_context=16)
    ids = [5, 9, 30, 2, 77, 1, 300]
    for step in [(ids, range(7), [7], [0]), ([11], [7], [1], [0])]:
        logits = from_ir.step(*step)
        np.testing.assert_allclose(logits, compiled.step(*step), atol=1e-6, rtol=0)
        np.testing.assert_allclose(logits, reference.run(*step), atol=TOL, rtol=0)
