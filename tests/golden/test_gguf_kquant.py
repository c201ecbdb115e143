"""The K-quant GGUF files people download: a tiny llama quantized by llama.cpp's llama-quantize to Q4_K_M, Q5_K_M
and Q6_K (make_fixtures.py --kquant). Each loads with every matrix kept in its blocks, in llama.cpp's per-tensor
mix (K types, the Q5_0 / Q5_1 / Q8_0 fallbacks of ffn_down whose rows are 384 long, Q6_K for output and layer 1's
attn_v), and graphllm's logits on both executors equal transformers' on the same file (which dequantizes it with
gguf.quants)."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from graphllm.io.loader import load_model, weight_types
from graphllm.runtime.llm import LLM

KQUANT = Path(__file__).parents[1] / "fixtures" / "gguf_kquant"
# file type -> the weight types graphllm's graph must hold (the file's own, none widened to float32)
TYPES = {
    "Q4_K_M": {"float32", "q4_k", "q6_k", "q5_0", "q8_0"},
    "Q5_K_M": {"float32", "q5_k", "q6_k", "q5_1", "q8_0"},
    "Q6_K": {"float32", "q6_k", "q8_0"},
}
# Both sides compute on the same dequantized values (graphllm decodes the blocks bit-exactly as gguf.quants does), so
# what remains is float32 summation order in 256/384-long dot products, attention and RMSNorm: measured at most
# 1.7e-5 absolute (3e-6 of the largest |logit|, ~5.5) on either executor. 2e-5 of the largest |logit| leaves ~7x
# margin and is still ~10^4 below what a mis-decoded format moves: the three files' logits differ from each
# other by 1 to 2.3.
REL_TOL = 2e-5


def _path(qtype: str) -> Path:
    return KQUANT / f"tiny_llama_k.{qtype}.gguf"


def test_every_k_quant_type_has_a_fixture():
    assert sorted(p.name for p in KQUANT.glob("*.gguf")) == sorted(_path(t).name for t in TYPES)


@pytest.mark.parametrize("qtype", sorted(TYPES))
def test_k_quant_file_loads_in_its_native_blocks(qtype):
    """No dequantize warning, and the graph holds exactly the file's GGML types."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(_path(qtype))
    assert {t.dtype for t in weight_types(model).values()} == TYPES[qtype]


@pytest.fixture(scope="module", params=[(t, e) for t in sorted(TYPES) for e in ("reference", "tvm")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def loaded(request, exact_kv):
    """A K-quant file's model on one executor, and transformers' expected logits on that file."""
    qtype, executor = request.param
    exp = np.load(_path(qtype).with_suffix(".npz"))
    return LLM.load(_path(qtype), executor=executor, max_context=64, num_slots=1, kv_dtype=exact_kv), exp


def test_k_quant_logits_match_transformers(loaded, greedy_matches):
    """Prefill, then 11 KV-cached decode steps of transformers' greedy tokens, for prompts of 6 and 13 tokens."""
    llm, exp = loaded
    for p in (1, 2):
        tol = REL_TOL * float(np.abs(exp[f"prompt{p}_step_logits"]).max())
        greedy_matches(llm, exp, p, tol)


def test_tokenizer_and_chat_template_survive_quantization():
    """llama-quantize copies the metadata: the tokenizer and chat template still come from the file."""
    for qtype in TYPES:
        exp = np.load(_path(qtype).with_suffix(".npz"))
        tok = LLM.load(_path(qtype), executor="reference", max_context=16).tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
        assert tok.encode(text) == exp["chat_ids"].tolist()
