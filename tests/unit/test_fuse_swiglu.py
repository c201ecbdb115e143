"""fuse_swiglu: the MLP's gate/up/SiLU/mul become one Linear + Swiglu; results unchanged."""

from pathlib import Path

import numpy as np
import pytest

from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.dot import to_dot
from graphllm.dsl.textir import graphs_equal, parse_graph, print_graph
from graphllm.passes.fuse_swiglu import fuse_swiglu
from graphllm.pipeline import build_graph, weight_source
from graphllm.io.loader import load_model, weight_types

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("native", [True, False])
def test_fusion_counts_and_equal_logits(name, native):
    model = load_model(FIXTURES / name)
    plain = build_graph(model.config, weight_types(model, native), passes=["verify", "dce", "cse"])
    fused = fuse_swiglu(plain)
    ops = lambda g: [g[n]["op"] for n in g.order()]  # noqa: E731
    layers = model.config["num_hidden_layers"]
    assert ops(fused).count("Swiglu") == layers and "Silu" not in ops(fused) and "MulTo" not in ops(fused)
    assert ops(plain).count("Linear") - ops(fused).count("Linear") == layers
    merged = [fused[n] for n in fused.nodes_of("Weight") if fused[n]["attrs"].get("concat")]
    assert len(merged) == layers and merged[0]["type"].shape == (256, 64)
    assert graphs_equal(parse_graph(print_graph(fused)), fused)
    swiglu = next(fused.nodes_of("Swiglu"))
    assert fused[swiglu]["group"] == fused[fused.inputs(swiglu)["input"]]["group"]  # drawn as one cluster
    assert f'cluster_{fused[swiglu]["group"]}' in to_dot(fused)
    ids = [7, 100, 31, 2, 250]
    run = lambda g: ReferenceExecutor(g, weight_source(model, g), max_context=16).run(ids, range(5), [5], [0])  # noqa: E731
    np.testing.assert_allclose(run(fused), run(plain), atol=1e-5, rtol=0)
