"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF): greedy text equals transformers' with the default
float16 KV cache and with a float32 one; first logits equal transformers' (float32 cache) or the reference
executor's (the same float16 cache)."""

import json
from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module", params=[("tvm", None, None), ("tvm", None, "float32"), ("tvm", "float32", "float32"),
                                        pytest.param(("reference", None, None), marks=pytest.mark.slow)],
                ids=["tvm-q4_1-blocks", "tvm-q4_1-blocks-kv32", "tvm-float32-kv32", "reference-q4_1"])
def llm(request, smollm2_gguf):
    """SmolLM2 on one executor with one --dtype and --kv-dtype (None: the defaults, a float16 cache)."""
    executor, dtype, kv_dtype = request.param
    return LLM.load(smollm2_gguf, executor=executor, dtype=dtype, kv_dtype=kv_dtype, max_context=256)


def test_tokenizer_and_chat_template_match_transformers(llm):
    for case in GOLDEN["prompts"]:
        if "messages" in case:
            assert llm.tokenizer.apply_chat_template(case["messages"]) == case["text"]
        assert llm.tokenizer.encode(case["text"]) == case["prompt_ids"]
    assert llm.tokenizer.eos_token_ids == GOLDEN["eos_token_ids"]


def test_the_cache_has_the_asked_dtype(llm, request):
    """No --kv-dtype: float16 caches (the default); float32 when asked."""
    asked = request.node.callspec.params["llm"][2]
    assert llm.kv_dtype == (asked or "float16")
    assert {c.dtype for pair in llm.executor.caches.values() for c in pair} == {np.dtype(llm.kv_dtype)}


def test_first_logits_match_transformers(llm, exact_kv, kv16_atol):
    """A float32 cache: transformers' top-20 logits within 2e-3. A float16 cache: the reference executor's logits
    with the same cache within float16's tolerance, and transformers' top token."""
    case = GOLDEN["prompts"][0]
    logits = llm.prefill(case["prompt_ids"])
    ids, values = np.array(case["prefill_last_top20"]).T
    if llm.kv_dtype == exact_kv:
        np.testing.assert_allclose(logits[ids.astype(int)], values, atol=2e-3, rtol=0)
        return
    assert int(np.argmax(logits)) == int(ids[0])
    ref = LLM.load(llm.model.path, executor="reference", kv_dtype=llm.kv_dtype, max_context=len(case["prompt_ids"]) + 1)
    np.testing.assert_allclose(logits, ref.prefill(case["prompt_ids"]), atol=kv16_atol, rtol=0)


@pytest.mark.parametrize("index", range(len(GOLDEN["prompts"])))
def test_greedy_continuation_equals_transformers(llm, index):
    case = GOLDEN["prompts"][index]
    done = llm.complete(case["prompt_ids"], SamplingParams(max_tokens=GOLDEN["max_new_tokens"]))
    expected = [t for t in case["new_ids"] if t not in GOLDEN["eos_token_ids"]]
    assert done.token_ids == expected
    assert done.text == case["new_text_skip_special"]
    assert done.finish_reason == ("stop" if case["stopped_at_eos"] else "length")
