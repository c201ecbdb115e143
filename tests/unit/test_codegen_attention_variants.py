"""The attention kernel's sliding window and score soft-capping vs a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.kernels.cpu.attention import DEFAULTS, attention_func
from graphllm.layouts import aligned_empty

HQ, HK, D = 4, 2, 16
CONTEXT = 3 * DEFAULTS["key_block"] + 5
# (window, softcap): windows inside one key block and across blocks, with and without a cap
VARIANTS = [(5, 0.0), (2 * DEFAULTS["key_block"] + 3, 2.5), (0, 2.5)]


@pytest.fixture(scope="module")
def module():
    """Build every variant into one module, once."""
    funcs = {f"attention_{w}_{c}": attention_func(HQ, HK, D, D**-0.5, w, c) for w, c in VARIANTS}
    return build_module(funcs).mod


def expected(q, k_cache, v_cache, pos, window: int, cap: float) -> np.ndarray:
    """Return softmax over keys max(0, pos-window+1)..pos of the (capped) scaled scores, in float64."""
    t_len, hq, d = q.shape
    out = np.zeros((t_len, hq * d))
    for t in range(t_len):
        lo = max(0, pos[t] - window + 1) if window else 0
        for h in range(hq):
            k = k_cache[0, lo:pos[t] + 1, h // (hq // HK)].astype(np.float64)
            v = v_cache[0, lo:pos[t] + 1, h // (hq // HK)].astype(np.float64)
            s = k @ q[t, h].astype(np.float64) * D**-0.5
            if cap:
                s = cap * np.tanh(s / cap)
            p = np.exp(s - s.max())
            out[t, h * d:(h + 1) * d] = p @ v / p.sum()
    return out


def _aligned(a: np.ndarray) -> np.ndarray:
    """Return a 64-byte-aligned copy of a."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@pytest.mark.parametrize("t", [1, 7, 40])
@pytest.mark.parametrize("window,cap", VARIANTS)
def test_windowed_capped_attention(module, window: int, cap: float, t: int) -> None:
    """Each token sees only its window's keys; scores are capped before the online softmax."""
    rng = np.random.default_rng(t + window)
    q = _aligned(rng.standard_normal((t, HQ, D)).astype(np.float32) * 3)
    k_cache = _aligned(rng.standard_normal((1, CONTEXT, HK, D)).astype(np.float32) * 3)
    v_cache = _aligned(rng.standard_normal((1, CONTEXT, HK, D)).astype(np.float32))
    pos = _aligned(np.sort(rng.integers(0, CONTEXT, t)).astype(np.int32))
    pos[-1] = CONTEXT - 1
    slot = _aligned(np.zeros(t, np.int32))
    out = aligned_empty((t, HQ * D), "float32")
    module[f"attention_{window}_{cap}"](*(as_tensor(a) for a in (q, k_cache, v_cache, pos, slot, _aligned_threads(2), out)))
    np.testing.assert_allclose(out, expected(q, k_cache, v_cache, pos, window, cap), rtol=1e-4, atol=1e-5)


def _aligned_threads(n: int) -> np.ndarray:
    """The executor's `threads` extra (key splits for steps with few tokens)."""
    out = aligned_empty(1, "int32")
    out[0] = n
    return out
