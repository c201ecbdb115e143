"""pytest-benchmark: SmolLM2 decode step and prefill through the TVM executor (run with -m benchmark)."""

import numpy as np
import pytest

from graphllm.runtime.llm import LLM

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module", params=["float32", None], ids=["float32", "native"])
def llm(request, smollm2_gguf):
    return LLM.load(smollm2_gguf, dtype=request.param, max_context=512)


def test_decode_step(benchmark, llm):
    llm.prefill(list(range(100, 228)))
    position = iter(range(128, 10**9))
    benchmark(lambda: llm.decode(42, next(position) % 500))


def test_prefill_128(benchmark, llm):
    ids = np.random.default_rng(0).integers(3, 49000, 128).tolist()
    benchmark(lambda: llm.step(ids, range(128), [128], [0]))
