"""A tiny llama GGUF mixing Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 (as llama.cpp's K-quant files of small models do):
it loads with every matrix kept in its blocks (no dequantize warning), and compiled logits equal the reference's."""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from test_codegen_kquant import random_blocks

from graphllm.io.loader import load_model, weight_types
from graphllm.runtime.llm import LLM

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 256, 4, 2, 512, 64
# GGUF tensor -> (rows, columns, type); token_embd is also the tied lm_head
TENSORS = {
    "token_embd.weight": (VOCAB, HIDDEN, QT.Q6_K),
    "output_norm.weight": (HIDDEN, 0, QT.F32),
    "blk.0.attn_norm.weight": (HIDDEN, 0, QT.F32),
    "blk.0.ffn_norm.weight": (HIDDEN, 0, QT.F32),
    "blk.0.attn_q.weight": (HIDDEN, HIDDEN, QT.Q4_K),
    "blk.0.attn_k.weight": (KV_HEADS * HIDDEN // HEADS, HIDDEN, QT.Q5_K),
    "blk.0.attn_v.weight": (KV_HEADS * HIDDEN // HEADS, HIDDEN, QT.Q6_K),
    "blk.0.attn_output.weight": (HIDDEN, HIDDEN, QT.Q5_0),
    "blk.0.ffn_gate.weight": (FFN, HIDDEN, QT.Q5_1),
    "blk.0.ffn_up.weight": (FFN, HIDDEN, QT.Q4_K),
    "blk.0.ffn_down.weight": (HIDDEN, FFN, QT.Q5_K),
}
METADATA = {
    "block_count": 1, "context_length": 128, "embedding_length": HIDDEN, "feed_forward_length": FFN,
    "head_count": HEADS, "head_count_kv": KV_HEADS, "layer_norm_rms_eps": 1e-5, "rope_freq_base": 10000.0,
    "rope_dimension_count": HIDDEN // HEADS, "file_type": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "tokenizer_model": "gpt2", "token_list": [f"t{i}" for i in range(VOCAB)], "token_types": [1] * VOCAB,
    "token_merges": [], "bos_token_id": 1, "eos_token_id": 2,
}


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny mixed-type GGUF, written with the gguf package (K-type blocks: random codes, valid scales)."""
    path = tmp_path_factory.mktemp("kq") / "kq.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in METADATA.items():
        getattr(writer, f"add_{key}")(value)
    rng = np.random.default_rng(0)
    for i, (name, (rows, cols, qtype)) in enumerate(TENSORS.items()):
        if qtype == QT.F32:
            writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(rows)).astype(np.float32))
        else:
            writer.add_tensor(name, random_blocks(qtype.name.lower(), rows, cols, seed=i), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_k_quant_file_keeps_its_blocks_and_compiles_to_the_reference_logits(kquant_gguf: Path) -> None:
    """No tensor is widened; the compiled executor (GEMV at T=1, 7, GEMM at 128) equals the numpy reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(kquant_gguf)
    types = {t.dtype for t in weight_types(model).values()}
    assert types == {"float32", "q4_k", "q5_k", "q6_k", "q5_0", "q5_1"}
    compiled = LLM.load(kquant_gguf, executor="tvm", max_context=160)
    reference = LLM.load(kquant_gguf, executor="reference", max_context=160)
    for tokens in (1, 7, 128):
        ids = (np.arange(tokens) * 7 % VOCAB).tolist()
        got = compiled.step(ids, range(tokens), [tokens], [0])
        want = reference.step(ids, range(tokens), [tokens], [0])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_dtype_q5_0_compiles_to_the_reference_logits() -> None:
    """`--dtype q5_0` quantizes an HF model's Linear weights with gguf's Q5_0 code; compiled == reference."""
    tiny = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
    compiled = LLM.load(tiny, executor="tvm", dtype="q5_0", max_context=32)
    reference = LLM.load(tiny, executor="reference", dtype="q5_0", max_context=32)
    types = {compiled.graph[n]["type"].dtype for n in compiled.graph.nodes_of("Weight")}
    assert "q5_0" in types
    ids = [5, 17, 99, 3, 8, 1, 60]
    np.testing.assert_allclose(compiled.step(ids, range(7), [7], [0]), reference.step(ids, range(7), [7], [0]),
                               rtol=0, atol=1e-4)
