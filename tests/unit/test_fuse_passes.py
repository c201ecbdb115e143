"""fuse_norm, fuse_act, fuse_residual, fuse_rope: what each rewrites, and the reference results unchanged."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import graphs_equal, parse_graph, print_graph
from graphllm.passes.fuse_elementwise import fuse_elementwise
from graphllm.passes.fuse_linear import fuse_act, fuse_norm, fuse_residual
from graphllm.passes.fuse_qkv import fuse_qkv
from graphllm.passes.fuse_rope import fuse_rope
from graphllm.passes.merge_linears import merge_linears
from graphllm.passes.manager import DEFAULT_PIPELINE, run_passes
from graphllm.pipeline import build_graph, weight_source
from graphllm.io.loader import load_model, weight_types

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral", "tiny_phi3", "tiny_gemma2"]
UNFUSED = ["verify", "dce", "cse"]


def ops(g):
    return Counter(g[n]["op"] for n in g.order())


def logits(model, g):
    ids = [7, 100, 31, 2, 250, 9]
    return ReferenceExecutor(g, weight_source(model, g), max_context=16).run(ids, range(6), [6], [0])


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    model = load_model(FIXTURES / request.param)
    return request.param, model, build_graph(model.config, weight_types(model), passes=UNFUSED)


def test_each_pass_alone_keeps_the_reference_logits(case):
    _, model, plain = case
    expected = logits(model, plain)
    for fuse in (fuse_norm, fuse_act, fuse_residual, fuse_rope, merge_linears, fuse_qkv, fuse_elementwise):
        fused = fuse(plain)
        np.testing.assert_allclose(logits(model, fused), expected, atol=2e-5, rtol=0, err_msg=fuse.__name__)
        assert graphs_equal(parse_graph(print_graph(fused)), fused)


def test_default_pipeline_fuses_every_llama_layer_to_four_projections_and_one_attention(case):
    name, model, plain = case
    fused = run_passes(plain, DEFAULT_PIPELINE)
    np.testing.assert_allclose(logits(model, fused), logits(model, plain), atol=2e-5, rtol=0)
    assert graphs_equal(parse_graph(print_graph(fused)), fused)
    if name in ("tiny_llama", "tiny_qwen2", "tiny_mistral"):
        layers = model.config["num_hidden_layers"]
        assert ops(fused)["FusedLinear"] == 4 * layers + 1 and ops(fused)["QKVAttention"] == layers
        for gone in ("RMSNorm", "AddTo", "Swiglu", "Silu", "MulTo", "Linear", "LlamaRotatePosition2D", "Split",
                     "ExpandHead", "FusedAttention"):
            assert gone not in ops(fused), gone
        attn = [fused[n]["attrs"] for n in fused.nodes_of("QKVAttention")]
        heads = (model.config["num_attention_heads"], model.config["num_key_value_heads"])
        assert all(a["rotaryDim"] and (a["numHeads"], a["numKVHeads"]) == heads for a in attn)
        prologues = Counter(fused[n]["attrs"]["prologue"] for n in fused.nodes_of("FusedLinear"))
        assert prologues == {"rmsnorm": 2 * layers + 1, "swiglu": layers, "none": layers}
        for attn in fused.nodes_of("QKVAttention"):  # drawn as one cluster with its projection
            assert fused[attn]["group"] == fused[fused.inputs(attn)["qkv"]]["group"] is not None
        for down in (n for n in fused.nodes_of("FusedLinear") if fused[n]["attrs"]["prologue"] == "swiglu"):
            assert fused[down]["group"] == fused[fused.inputs(down)["input"]]["group"] is not None
    if name == "tiny_gemma2":  # GELU * up per layer, and the final soft-capping Mul -> Tanh -> Mul
        chains = sorted([s["op"] for s in fused[n]["attrs"]["chain"]] for n in fused.nodes_of("FusedElementwise"))
        assert chains == [["Gelu", "MulTo"], ["Gelu", "MulTo"], ["Mul", "Tanh", "Mul"]]
        assert "Tanh" not in ops(fused)
    if name == "tiny_phi3":  # its checkpoint packs qkv_proj: fuse_rope + fuse_qkv remove the three Split copies
        assert "Split" not in ops(fuse_qkv(fuse_rope(plain))) and ops(fused)["QKVAttention"] == model.config["num_hidden_layers"]


def test_merge_linears_stacks_the_readers_of_one_value_and_splits_the_result():
    model = load_model(FIXTURES / "tiny_qwen2")  # q/k/v have biases: they are stacked too
    plain = build_graph(model.config, weight_types(model), passes=UNFUSED)
    merged = merge_linears(plain)
    layers = model.config["num_hidden_layers"]
    assert ops(plain)["Linear"] - ops(merged)["Linear"] == 3 * layers  # q, k, v and gate, up: 5 -> 2 per layer
    assert ops(merged)["Split"] == 5 * layers
    stacked = [merged[n] for n in merged.nodes_of("Weight") if merged[n]["attrs"].get("concat")]
    qkv = next(d for d in stacked if d["name"].endswith("v_proj.weight"))
    assert qkv["attrs"]["concat"] == [qkv["name"].split("+")[i] for i in range(3)] and qkv["type"].shape == (128, 64)
    assert any(d["name"].endswith("v_proj.bias") and d["type"].shape == (128,) for d in stacked)
    np.testing.assert_allclose(logits(model, merged), logits(model, plain), atol=2e-5, rtol=0)


IR = """\
graph g {
  input $hiddenStates : f32[T,8]
  weight @norm.weight : f32[8]
  weight @w.weight : f32[4,8]
  weight @u.weight : f32[4,8]
  %n : f32[T,8] = RMSNorm(input=$hiddenStates, weight=@norm.weight) {eps=1e-06}
  %a : f32[T,4] = Linear(input=%n, weight=@w.weight)
  %b : f32[T,4] = Linear(input=%n, weight=@u.weight)
  %s : f32[T,4] = Add(input0=%a, input1=%b)
  %n2 : f32[T,8] = RMSNorm(input=$hiddenStates, weight=@norm.weight) {eps=1e-06}
  %c : f32[T,4] = Linear(input=%n2, weight=@w.weight)
  output logits = %s
  output normed = %n2
}
"""


def test_fuse_norm_folds_a_norm_into_all_its_linears_and_keeps_one_that_is_an_output():
    g = parse_graph(IR)
    fused = fuse_norm(g)
    assert ops(fused) == {"Input": 1, "Weight": 3, "FusedLinear": 2, "Add": 1, "RMSNorm": 1, "Linear": 1}
    for node, w in (("%a", "@w.weight"), ("%b", "@u.weight")):
        assert fused.inputs(node) == {"input": "$hiddenStates", "weight": w, "norm": "@norm.weight"}
        assert fused[node]["attrs"] == {"prologue": "rmsnorm", "eps": 1e-06}
    assert fused.inputs("%c")["input"] == "%n2"  # %n2 is an output: computed once, kept


CHAIN_IR = """\
graph g {
  input $hiddenStates : f32[T,8]
  input $positionIds : i32[T]
  %a : f32[T,8] = Silu(input=$hiddenStates)
  %b : f32[T,8] = Mul(input=%a) {v=2.0}
  %c : f32[T,8] = MulTo(input0=%b, input1=$hiddenStates) {}
  %d : f32[T,8] = Tanh(input=%c)
  %e : f32[T,8] = AddTo(input0=%d, input1=%b) {alpha=1.0}
  output logits = %e
  output mid = %d
}
"""


def test_fuse_elementwise_stops_at_values_with_several_readers_and_at_outputs():
    fused = fuse_elementwise(parse_graph(CHAIN_IR))
    assert ops(fused) == {"Input": 2, "FusedElementwise": 2, "AddTo": 1}
    assert [s["op"] for s in fused["%b"]["attrs"]["chain"]] == ["Silu", "Mul"]  # %b is read twice
    assert [s["op"] for s in fused["%d"]["attrs"]["chain"]] == ["MulTo", "Tanh"]  # %d is an output
    assert fused.inputs("%d") == {"input": "%b", "input1": "$hiddenStates"}
    assert fused.inputs("%e") == {"input0": "%d", "input1": "%b"}
