"""The default float16 KV cache on every tiny family: the compiled executor computes what the reference executor
does with the same float16 cache, and both pick transformers' greedy tokens. (The float32 cache is held to
transformers' logits at 1e-4 in test_tiny_models, test_families and test_compiled.)"""

from pathlib import Path

import numpy as np
import pytest

from graphllm.runtime.llm import LLM

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = sorted(p.name for p in FIXTURES.glob("tiny_*") if (p / "expected.npz").is_file())


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    """The family's model on the compiled and on the reference executor, both with the default KV cache, and
    transformers' expected run."""
    folder = FIXTURES / request.param
    return (LLM.load(folder, executor="tvm", max_context=64), LLM.load(folder, executor="reference", max_context=64),
            np.load(folder / "expected.npz"))


def test_every_family_is_covered():
    assert len(FAMILIES) == 8 and {"tiny_llama", "tiny_gemma2", "tiny_phi3"} <= set(FAMILIES)


def test_the_default_cache_is_float16(pair):
    for llm in pair[:2]:
        assert llm.kv_dtype == "float16"
        assert {c.dtype for kv in llm.executor.caches.values() for c in kv} == {np.dtype("float16")}


@pytest.mark.parametrize("p", [0, 1, 2])
def test_compiled_equals_reference_and_both_pick_transformers_tokens(pair, p, kv16_atol):
    """Prefill, then KV-cached decode of transformers' greedy tokens: every step's logits agree between the
    executors, and each one's top token is transformers' (float32 cache) top token, or at a near tie one that
    transformers scored within 2 x kv16_atol of it (the float16 cache moves each logit by less than kv16_atol)."""
    tvm, ref, exp = pair
    ids = exp[f"prompt{p}_ids"].tolist()
    logits = [llm.step(ids, range(len(ids)), [len(ids)], [0])[0] for llm in (tvm, ref)]
    position = len(ids)
    for k, expected in enumerate(exp[f"prompt{p}_step_logits"]):
        np.testing.assert_allclose(logits[0], logits[1], atol=kv16_atol, rtol=0, err_msg=f"prompt {p} step {k}")
        picked = [int(np.argmax(x)) for x in logits]
        assert all(expected[t] >= expected.max() - 2 * kv16_atol for t in picked), f"prompt {p} step {k}: {picked}"
        token = int(exp[f"prompt{p}_new_tokens"][k])
        logits = [llm.decode(token, position, slot=0) for llm in (tvm, ref)]
        position += 1
