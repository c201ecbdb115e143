"""SmolLM2 re-quantized by llama.cpp to Q4_K_M / Q5_K_M / Q6_K, run on graphllm's native K-quant kernels: greedy text
equals transformers' on the same file (tests/fixtures/smollm2_kquant_golden.json, made by make_fixtures.py).

The files are not downloadable as they are; GRAPHLLM_KQUANT_DIR (default /tmp/h10llama) names the folder holding
smollm2.<TYPE>.gguf. A file that is absent or not the one the goldens were made from skips its tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from graphllm.dsl.graph import WEIGHT_OP
from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "smollm2_kquant_golden.json").read_text())
FOLDER = Path(os.environ.get("GRAPHLLM_KQUANT_DIR", "/tmp/h10llama"))

BLOCKS = {"Q4_K_M": "q4_k", "Q5_K_M": "q5_k", "Q6_K": "q6_k"}  # the K-quant block each file mostly holds

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module", params=sorted(GOLDEN))
def case(request) -> tuple[LLM, dict]:
    """(graphllm on the file, transformers' goldens for it); skipped when the very file is not here."""
    golden = GOLDEN[request.param]
    path = FOLDER / golden["gguf_file"]
    if not path.is_file():
        pytest.skip(f"{path} is absent (set GRAPHLLM_KQUANT_DIR to the folder of the SmolLM2 K-quant files)")
    if sha256(path) != golden["gguf_sha256"]:
        pytest.skip(f"{path} is not the file the goldens were made from (sha256 differs)")
    return LLM.load(path, max_context=256), golden


def test_weights_stay_in_their_blocks(case):
    llm, golden = case
    dtypes = {llm.graph[n]["type"].dtype for n in llm.graph.nodes_of(WEIGHT_OP)}
    assert BLOCKS[golden["gguf_file"].split(".")[1]] in dtypes and "float32" in dtypes  # the norms are F32


def test_first_logits_match_transformers(case, exact_kv):
    """The K-quant kernels' logits within 2e-3 of transformers' (float32 cache: stated, not the float16 default)."""
    llm, golden = case
    llm = LLM.load(llm.model.path, max_context=256, kv_dtype=exact_kv)
    prompt = golden["prompts"][0]
    logits = llm.prefill(prompt["prompt_ids"])
    ids, values = np.array(prompt["prefill_last_top20"]).T
    np.testing.assert_allclose(logits[ids.astype(int)], values, atol=2e-3, rtol=0)


def test_greedy_text_equals_transformers(case):
    llm, golden = case
    for prompt in golden["prompts"]:
        assert llm.tokenizer.encode(prompt["text"]) == prompt["prompt_ids"]
        done = llm.complete(prompt["prompt_ids"], SamplingParams(max_tokens=golden["max_new_tokens"]))
        assert done.text == prompt["new_text_skip_special"], prompt["text"]
        assert done.token_ids == [t for t in prompt["new_ids"] if t not in golden["eos_token_ids"]]
        assert done.finish_reason == ("stop" if prompt["stopped_at_eos"] else "length")
