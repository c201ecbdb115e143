"""Qwen3, Mistral, Phi-3, Gemma 2, Gemma 3 and Llama 3 (rope scaling) built-in descriptions vs transformers (tiny fixtures), both executors."""

from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = ["tiny_qwen3", "tiny_mistral", "tiny_phi3", "tiny_gemma2", "tiny_gemma3", "tiny_llama3"]
TOL = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """The fixture folder and transformers' expected logits."""
    folder = FIXTURES / request.param
    return folder, np.load(folder / "expected.npz")


@pytest.fixture(scope="module", params=["reference", "tvm"])
def loaded(request, family, exact_kv):
    """The family's model on one executor (the TVM build is compiled once per family, then cached)."""
    folder, exp = family
    return LLM.load(folder, executor=request.param, max_context=64, num_slots=2, kv_dtype=exact_kv), exp


def test_prefill_and_greedy_decode_match_transformers(loaded, greedy_matches):
    llm, exp = loaded
    for p in range(3):
        greedy_matches(llm, exp, p, TOL)


def test_packed_sequences_match_separate_prefills(loaded):
    llm, exp = loaded
    a, b = exp["prompt1_ids"].tolist(), exp["prompt2_ids"].tolist()
    out = llm.step(a + b, list(range(len(a))) + list(range(len(b))), [len(a), len(b)], [0, 1])
    np.testing.assert_allclose(out[0], exp["prompt1_prefill_logits"][-1], atol=TOL, rtol=0)
    np.testing.assert_allclose(out[1], exp["prompt2_prefill_logits"][-1], atol=TOL, rtol=0)


def test_each_family_gets_its_own_description(family):
    folder, _ = family
    graph = LLM.load(folder, executor="reference", max_context=16, passes=["verify", "dce", "cse"]).graph  # unfused
    ops = {graph[n]["op"] for n in graph.order()}
    attention = [graph[n]["attrs"] for n in graph.nodes_of("FusedAttention")]
    if folder.name == "tiny_gemma2":  # layer 0 slides over 4 keys, layer 1 is global; both soft-cap
        assert [a.get("window") for a in attention] == [4, None] and {a["softcap"] for a in attention} == {6.0}
        assert "Tanh" in ops and all(graph[n]["attrs"]["weightOffset"] == 1.0 for n in graph.nodes_of("RMSNorm"))
    elif folder.name == "tiny_gemma3":  # layer 0 slides with the local rope; q and k normalized per head
        assert [a.get("window") for a in attention] == [4, None] and {a.get("softcap") for a in attention} == {None}
        inputs = {graph[n]["attrs"]["name"] for n in graph.nodes_of("Input")}
        assert {"sin", "cos", "sinLocal", "cosLocal"} <= inputs and sum(1 for _ in graph.nodes_of("RMSNorm")) == 13
    elif folder.name == "tiny_llama3":  # llama3 rope scaling lives in the sin/cos tables, not in the graph
        assert graph.config["rope_parameters"]["rope_type"] == "llama3"
    elif folder.name == "tiny_mistral":
        assert [a.get("window") for a in attention] == [4, 4]
    elif folder.name == "tiny_phi3":
        assert {"Split", "Swiglu"} <= ops
        assert {graph[n]["attrs"]["rotaryDim"] for n in graph.nodes_of("LlamaRotatePosition2D")} == {4}
    else:  # qwen3: q and k normalized per head (head_dim 32) before RoPE
        assert sum(str(graph[n]["type"]).endswith(",32]") for n in graph.nodes_of("RMSNorm")) == 4
