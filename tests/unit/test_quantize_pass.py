"""--dtype: which weights get a block format, and the reference computes on exactly those values."""

from pathlib import Path

import numpy as np
import pytest

from graphllm.dsl.qformats import dequantize, quantize
from graphllm.errors import GraphLLMError
from graphllm.passes.quantize import block_format
from graphllm.runtime.llm import LLM

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"


@pytest.mark.parametrize("dtype, fmt", [("int8", "q8_0"), ("int4", "q4_1"), ("int4g32", "q4_1"),
                                        ("int4g16", "q4_1g16"), ("int8g64", "q8_0g64"), ("float32", None)])
def test_dtype_names(dtype, fmt):
    assert block_format(dtype) == fmt


@pytest.mark.parametrize("bad", ["int3", "fp8", "int4g7"])
def test_bad_dtype(bad):
    with pytest.raises(GraphLLMError):
        block_format(bad)


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
