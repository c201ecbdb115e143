"""fold_constants: weight-only computations become derived weights, evaluated at load with the op's reference."""

from pathlib import Path

import numpy as np

from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import graphs_equal, parse_graph, print_graph
from graphllm.passes.fold_constants import fold_constants
from graphllm.pipeline import build_graph, weight_source
from graphllm.io.loader import load_model, weight_types

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
IR = """\
graph g {
  config {"hidden_size": 64, "num_attention_heads": 4, "max_positions": 16}
  input $inputIds : i32[T]
  weight @model.embed_tokens.weight : f32[320,64]
  weight @model.norm.weight : f32[64]
  weight @model.layers.0.input_layernorm.weight : f32[64]
  %h : f32[T,64] = Embedding(input=$inputIds, weight=@model.embed_tokens.weight)
  %s : f32[64] = AddTo(input0=@model.norm.weight, input1=@model.layers.0.input_layernorm.weight)
  %s2 : f32[64] = Mul(input=%s) {v=0.5}
  %logits : f32[T,64] = RMSNorm(input=%h, weight=%s2) {eps=1e-05}
  output logits = %logits
}
"""


def test_weight_only_chain_folds_into_one_derived_weight_with_the_same_results():
    model = load_model(TINY)
    g = parse_graph(IR)
    folded = fold_constants(g)
    ops = [folded[n]["op"] for n in folded.order()]
    assert "AddTo" not in ops and "Mul" not in ops and ops.count("RMSNorm") == 1
    weight = folded.inputs("%logits")["weight"]
    fold = folded[weight]["attrs"]["fold"]
    assert fold["op"] == "Mul" and fold["attrs"] == {"v": 0.5}
    assert fold["inputs"]["input"]["op"] == "AddTo"  # the chain: Mul of a folded AddTo
    assert graphs_equal(parse_graph(print_graph(folded)), folded)
    run = lambda graph: ReferenceExecutor(graph, weight_source(model, graph), max_context=8).run(  # noqa: E731
        [3, 5, 7], range(3), [3], [0])
    np.testing.assert_array_equal(run(folded), run(g))
    w = model.weights
    np.testing.assert_array_equal(weight_source(model, folded)[folded[weight]["name"]],
                                  (w["model.norm.weight"] + w["model.layers.0.input_layernorm.weight"]) * np.float32(0.5))


def test_nothing_to_fold_in_a_model_leaves_it_equal():
    g = parse_graph(IR.replace("%s : f32[64] = AddTo(input0=@model.norm.weight, input1=@model.layers.0.input_layernorm.weight)",
                               "%s : f32[T,64] = AddTo(input0=%h, input1=%h)").replace("%s2 : f32[64]", "%s2 : f32[T,64]")
                    .replace("weight=%s2", "weight=@model.norm.weight"))
    assert graphs_equal(fold_constants(g), g)


def test_gemma_weight_offsets_become_folded_weights_with_identical_logits():
    model = load_model(Path(__file__).parents[1] / "fixtures" / "tiny_gemma2")
    plain = build_graph(model.config, weight_types(model), passes=["verify", "dce", "cse"])
    folded = fold_constants(plain)
    norms = list(folded.nodes_of("RMSNorm"))
    assert norms and not any(folded[n]["attrs"].get("weightOffset") for n in norms)
    w = folded.inputs(norms[0])["weight"]
    assert folded[w]["attrs"]["fold"]["op"] == "Add" and folded[w]["attrs"]["fold"]["attrs"] == {"v": 1.0}
    run = lambda graph: ReferenceExecutor(graph, weight_source(model, graph), max_context=8).run(  # noqa: E731
        [3, 5, 7], range(3), [3], [0])
    np.testing.assert_array_equal(run(folded), run(plain))
