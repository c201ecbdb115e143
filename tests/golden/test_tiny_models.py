"""Tiny random Llama/Qwen2 (made by tests/fixtures/make_fixtures.py with transformers) vs their logits."""

import json
from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

FIXTURES = Path(__file__).parents[1] / "fixtures"
MODELS = ["tiny_llama", "tiny_qwen2"]
TOL = 1e-4


@pytest.fixture(scope="module", params=MODELS)
def case(request, exact_kv):
    folder = FIXTURES / request.param
    return (LLM.load(folder, executor="reference", max_context=128, kv_dtype=exact_kv),
            np.load(folder / "expected.npz"),
            json.loads((folder / "expected.json").read_text()))


@pytest.mark.parametrize("p", [0, 1, 2])
def test_prefill_and_greedy_decode_logits(case, p):
    llm, exp, _ = case
    ids = exp[f"prompt{p}_ids"].tolist()
    logits = llm.prefill(ids)
    np.testing.assert_allclose(logits, exp[f"prompt{p}_prefill_logits"][-1], atol=TOL, rtol=0)
    position = len(ids)
    for k, expected in enumerate(exp[f"prompt{p}_step_logits"]):
        np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0, err_msg=f"step {k}")
        token = int(exp[f"prompt{p}_new_tokens"][k])
        assert int(np.argmax(logits)) == token
        logits = llm.decode(token, position)
        position += 1


@pytest.mark.parametrize("p", [1, 2])
def test_token_by_token_equals_every_prefill_row(case, p):
    llm, exp, _ = case
    for i, token in enumerate(exp[f"prompt{p}_ids"].tolist()):
        np.testing.assert_allclose(llm.decode(token, i, slot=0), exp[f"prompt{p}_prefill_logits"][i], atol=TOL, rtol=0)


def test_batched_step_equals_separate_runs(case):
    llm, exp, _ = case
    a, b = exp["prompt1_ids"].tolist(), exp["prompt2_ids"].tolist()
    both = LLM.load(llm.model.path, executor="reference", max_context=128, num_slots=2, kv_dtype=llm.kv_dtype)
    out = both.step(a + b, list(range(len(a))) + list(range(len(b))), [len(a), len(b)], [0, 1])
    np.testing.assert_allclose(out[0], exp["prompt1_prefill_logits"][-1], atol=TOL, rtol=0)
    np.testing.assert_allclose(out[1], exp["prompt2_prefill_logits"][-1], atol=TOL, rtol=0)


def _default(llm: LLM) -> LLM:
    """The same model with the default (float16) KV cache: the greedy-token checks hold on what users run."""
    return LLM.load(llm.model.path, executor="reference", max_context=128)


def test_chat_template_and_greedy_generation(case):
    llm, exp, meta = case
    llm = _default(llm)
    chat = meta["chat"]
    text = llm.tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True)
    assert text == chat["text"]
    assert llm.tokenizer.encode(text) == chat["ids"]
    done = llm.complete(chat["ids"], SamplingParams(max_tokens=12, ignore_eos=True))
    assert done.token_ids == exp["chat_new_tokens"].tolist()
    assert done.finish_reason == "length"


def test_prefix_reuse_gives_the_same_tokens(case):
    llm, exp, _ = case
    llm = _default(llm)
    ids = exp["prompt2_ids"].tolist()
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    first = llm.complete(ids, params).token_ids
    again = llm.complete(ids, params).token_ids  # the whole prompt is cached now
    longer = llm.complete(ids + first[:2], params).token_ids  # a cached prefix plus new tokens
    assert first == again == exp["prompt2_new_tokens"].tolist()[:6]
    assert longer == exp["prompt2_new_tokens"].tolist()[2:8]
