"""--dtype: which weights get a block format, and the reference computes on exactly those values."""

from pathlib import Path

import numpy as np
import pytest

from graphllm.dsl.qformats import dequantize, quantize
from graphllm.dsl.textir import graph_difference, print_graph
from graphllm.errors import GraphLLMError
from graphllm.io.loader import load_model, weight_types
from graphllm.passes.manager import DEFAULT_PIPELINE, run_passes
from graphllm.passes.quantize import block_format, quantize_weights
from graphllm.pipeline import build_graph
from graphllm.runtime.llm import LLM

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"


@pytest.mark.parametrize("dtype, fmt", [("int8", "q8_0"), ("int4", "q4_1"), ("int4g32", "q4_1"),
                                        ("int4g16", "q4_1g16"), ("int8g64", "q8_0g64"), ("float32", None),
                                        ("q5_0", "q5_0"), ("q5_1", "q5_1")])
def test_dtype_names(dtype, fmt):
    assert block_format(dtype) == fmt


@pytest.mark.parametrize("bad", ["int3", "fp8", "int4g7"])
def test_bad_dtype(bad):
    with pytest.raises(GraphLLMError):
        block_format(bad)


def test_k_quant_dtype_says_llama_cpp_makes_them():
    with pytest.raises(GraphLLMError, match="llama-quantize"):
        block_format("q4_k")


def test_only_linear_weights_are_quantized_and_values_match():
    llm = LLM.load(TINY, executor="reference", dtype="int4g32", max_context=32, passes=["verify"])
    types = {llm.graph[n]["name"]: llm.graph[n]["type"] for n in llm.graph.nodes_of("Weight")}
    assert types["model.layers.0.mlp.up_proj.weight"].dtype == "q4_1"
    assert types["model.embed_tokens.weight"].dtype == "float32"
    assert types["model.norm.weight"].dtype == "float32"
    # the reference computes on the decoded blocks: a float model given those values agrees exactly
    float_llm = LLM.load(TINY, executor="reference", max_context=32, passes=["verify"])
    for node in float_llm.graph.nodes_of("Weight"):
        t = types[float_llm.graph[node]["name"]]
        if t.quantized:
            blocks = quantize(float_llm.model.weights[float_llm.graph[node]["name"]], t.dtype)
            float_llm.executor.weights[node] = dequantize(blocks, t.dtype, t.shape)
    ids = [5, 17, 99, 3]
    np.testing.assert_array_equal(llm.step(ids, range(4), [4], [0]), float_llm.step(ids, range(4), [4], [0]))


def traced(fixture: str):
    model = load_model(TINY.parent / fixture)
    return build_graph(model.config, weight_types(model), passes=["verify"])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma2", "tiny_phi3"])
@pytest.mark.parametrize("dtype", ["int8", "int4g16", "float16", "float32"])
def test_the_quantize_pass_gives_the_graph_quantize_weights_gave_after_the_pipeline(fixture, dtype):
    graph = traced(fixture)
    notes, today_notes = [], []
    today = quantize_weights(run_passes(graph), dtype, notes=today_notes)
    piped = run_passes(graph, dtype=dtype, notes=notes)
    assert graph_difference(piped, today) is None
    assert print_graph(piped) == print_graph(today) and notes == today_notes


def stages(tmp_path, *args, **kwargs) -> list[str]:
    """The passes run_passes ran, in order (from the --print-ir-after-all files)."""
    run_passes(traced("tiny_llama"), *args, print_ir_after_all=tmp_path, **kwargs)
    return [f.stem.split("_", 1)[1] for f in sorted(tmp_path.iterdir())]


def test_quantize_runs_after_the_fusions_before_the_final_verify(tmp_path):
    assert stages(tmp_path / "a", dtype="int4") == ["input", *DEFAULT_PIPELINE[:-1], "quantize", "verify"]
    assert stages(tmp_path / "b", ["verify", "fuse_swiglu"], dtype="int4") == ["input", "verify", "fuse_swiglu",
                                                                               "quantize"]
    assert stages(tmp_path / "c") == ["input", *DEFAULT_PIPELINE]


def test_a_pipeline_may_name_quantize_where_it_wants_it(tmp_path):
    assert stages(tmp_path, ["verify", "quantize", "fuse_swiglu"], dtype="int8") == ["input", "verify", "quantize",
                                                                                     "fuse_swiglu"]
    assert "q8_0" in (tmp_path / "02_quantize.ir").read_text()
    with pytest.raises(GraphLLMError, match="needs a weight dtype"):
        run_passes(traced("tiny_llama"), ["verify", "quantize"])
