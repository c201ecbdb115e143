"""GGUF files of each supported architecture (llama incl. Llama 3 rope factors and Mistral, qwen2, qwen3, phi3,
gemma2, gemma3), written by make_fixtures.py as llama.cpp's converter does (F32 / F16 / Q8_0): graphllm's
logits equal transformers' on the same weights, on both executors, and the tokenizer and chat template come
from the file."""

from pathlib import Path

import numpy as np
import pytest

from graphllm.io.gguf import open_gguf
from graphllm.runtime.llm import LLM

GGUF = Path(__file__).parents[1] / "fixtures" / "gguf"
FILES = sorted(p.stem for p in GGUF.glob("*.gguf"))
TOL = 1e-4  # transformers ran on the file's weights (each matrix quantized, then dequantized)


@pytest.fixture(scope="module", params=FILES)
def case(request):
    """The GGUF file and transformers' expected logits on its weights."""
    return GGUF / f"{request.param}.gguf", np.load(GGUF / f"{request.param}.npz")


@pytest.fixture(scope="module", params=["reference", "tvm"])
def loaded(request, case, exact_kv):
    """The file's model on one executor."""
    path, exp = case
    return LLM.load(path, executor=request.param, max_context=64, num_slots=1, kv_dtype=exact_kv), exp


def test_all_architectures_have_a_fixture():
    assert {open_gguf(GGUF / f"{f}.gguf").fields["general.architecture"].contents() for f in FILES} == {
        "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"}


def test_gguf_logits_match_transformers(loaded, greedy_matches):
    llm, exp = loaded
    for p in (1, 2):
        greedy_matches(llm, exp, p, TOL)


def test_tokenizer_and_chat_template_come_from_the_file(case):
    path, exp = case
    tok = LLM.load(path, executor="reference", max_context=16).tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tok.encode(text) == exp["chat_ids"].tolist()
