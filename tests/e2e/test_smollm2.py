"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF): greedy text equals transformers'."""

import json
from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module", params=[("tvm", None), ("tvm", "float32"),
                                        pytest.param(("reference", None), marks=pytest.mark.slow)],
                ids=["tvm-q4_1-blocks", "tvm-float32", "reference-q4_1"])
def llm(request, smollm2_gguf):
    executor, dtype = request.param
    return LLM.load(smollm2_gguf, executor=executor, dtype=dtype, max_context=256)


def test_tokenizer_and_chat_template_match_transformers(llm):
    for case in GOLDEN["prompts"]:
        if "messages" in case:
            assert llm.tokenizer.apply_chat_template(case["messages"]) == case["text"]
        assert llm.tokenizer.encode(case["text"]) == case["prompt_ids"]
    assert llm.tokenizer.eos_token_ids == GOLDEN["eos_token_ids"]


def test_first_logits_match_transformers(llm):
    case = GOLDEN["prompts"][0]
    logits = llm.prefill(case["prompt_ids"])
    ids, values = np.array(case["prefill_last_top20"]).T
    np.testing.assert_allclose(logits[ids.astype(int)], values, atol=2e-3, rtol=0)


@pytest.mark.parametrize("index", range(len(GOLDEN["prompts"])))
def test_greedy_continuation_equals_transformers(llm, index):
    case = GOLDEN["prompts"][index]
    done = llm.complete(case["prompt_ids"], SamplingParams(max_tokens=GOLDEN["max_new_tokens"]))
    expected = [t for t in case["new_ids"] if t not in GOLDEN["eos_token_ids"]]
    assert done.token_ids == expected
    assert done.text == case["new_text_skip_special"]
    assert done.finish_reason == ("stop" if case["stopped_at_eos"] else "length")
