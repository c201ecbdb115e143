"""The real default model with a float16 KV cache (--kv-dtype f16): greedy text still equals transformers'."""

import json
from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    return LLM.load(smollm2_gguf, kv_dtype="f16", max_context=256)


@pytest.mark.slow
def test_float16_cache_keeps_the_greedy_text(llm):
    """Every golden prompt's greedy continuation is transformers' (float32 KV there) token for token."""
    assert llm.kv_dtype == "float16"
    assert {c.dtype for pair in llm.executor.caches.values() for c in pair} == {np.dtype("float16")}
    for case in GOLDEN["prompts"]:
        done = llm.complete(case["prompt_ids"], SamplingParams(max_tokens=GOLDEN["max_new_tokens"]))
        assert done.token_ids == [t for t in case["new_ids"] if t not in GOLDEN["eos_token_ids"]]
