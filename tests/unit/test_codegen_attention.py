"""Causal GQA attention and KV-cache write kernels vs a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.kernels.cpu.attention import DEFAULTS, attention_func, kv_write_func
from graphllm.layouts import aligned_empty

# (Hq, Hk, D): a small GQA config and SmolLM2-135M's
CONFIGS = [(6, 2, 16), (9, 3, 64)]
SLOTS, CONTEXT = 2, 3 * DEFAULTS["key_block"] + 5  # several key blocks, the last one partial


def _name(hq: int, hk: int, d: int) -> str:
    """Return the kernel name suffix of one config."""
    return f"{hq}_{hk}_{d}"


@pytest.fixture(scope="module")
def module():
    """Build attention and kv_write for every config into one module, once."""
    funcs = {}
    for hq, hk, d in CONFIGS:
        funcs[f"attention_{_name(hq, hk, d)}"] = attention_func(hq, hk, d, d**-0.5)
        funcs[f"kv_write_{_name(hq, hk, d)}"] = kv_write_func(hk, d)
    return build_module(funcs).mod


def _aligned(a: np.ndarray) -> np.ndarray:
    """Return a 64-byte-aligned copy of a."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def reference(q, k_cache, v_cache, pos, slot, scale: float) -> np.ndarray:
    """Return softmax(q k^T * scale) v over positions 0..pos[t] of slot[t], in float64."""
    t_len, hq, d = q.shape
    group = hq // k_cache.shape[2]
    out = np.zeros((t_len, hq * d))
    for t in range(t_len):
        for h in range(hq):
            k = k_cache[slot[t], : pos[t] + 1, h // group].astype(np.float64)
            v = v_cache[slot[t], : pos[t] + 1, h // group].astype(np.float64)
            s = k @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h * d : (h + 1) * d] = p @ v / p.sum()
    return out


def _positions(t: int, rng: np.random.Generator) -> np.ndarray:
    """Return per-token positions covering 0, the last position and random ones."""
    if t == 1:
        return np.array([CONTEXT - 1], np.int32)
    pos = rng.integers(0, CONTEXT, t).astype(np.int32)
    pos[0], pos[-1] = 0, CONTEXT - 1
    return pos


def _threads(n: int) -> np.ndarray:
    """The executor's `threads` extra: how many key splits a step with few tokens may use."""
    return _aligned(np.array([n], np.int32))


@pytest.mark.parametrize("hq,hk,d", CONFIGS)
@pytest.mark.parametrize("t", [1, 2, 7, 128])
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_attention_matches_numpy(module, hq: int, hk: int, d: int, t: int, threads: int) -> None:
    """Every token attends to its own slot's prefix (keys split threads // t ways); softmax is stable."""
    rng = np.random.default_rng(t * 100 + hq)
    k_cache = _aligned(rng.standard_normal((SLOTS, CONTEXT, hk, d), dtype=np.float32))
    v_cache = _aligned(rng.standard_normal((SLOTS, CONTEXT, hk, d), dtype=np.float32))
    q = _aligned(rng.standard_normal((t, hq, d), dtype=np.float32) * 4)  # peaked softmax
    pos = _aligned(_positions(t, rng))
    slot = _aligned(rng.integers(0, SLOTS, t).astype(np.int32))
    out = aligned_empty((t, hq * d))
    args = (q, k_cache, v_cache, pos, slot, _threads(threads), out)
    module[f"attention_{_name(hq, hk, d)}"](*(as_tensor(a) for a in args))
    ref = reference(q, k_cache, v_cache, pos, slot, d**-0.5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_attention_large_scores_do_not_overflow(module) -> None:
    """Scores far beyond exp's float32 range still give a finite, correct softmax."""
    hq, hk, d = CONFIGS[0]
    k_cache = _aligned(np.full((1, 8, hk, d), 1.0, np.float32))
    k_cache[0, 3] = -1.0
    v_cache = _aligned(np.arange(8, dtype=np.float32)[None, :, None, None] * np.ones((1, 8, hk, d), np.float32))
    q = _aligned(np.full((1, hq, d), 100.0, np.float32))  # scores of +-400 after scaling
    pos, slot = _aligned(np.array([7], np.int32)), _aligned(np.array([0], np.int32))
    out = aligned_empty((1, hq * d))
    module[f"attention_{_name(hq, hk, d)}"](*(as_tensor(a) for a in (q, k_cache, v_cache, pos, slot, _threads(2), out)))
    ref = reference(q, k_cache, v_cache, pos, slot, d**-0.5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hq,hk,d", CONFIGS)
def test_kv_write_then_prefill(module, hq: int, hk: int, d: int) -> None:
    """kv_write stores each token at [slot, pos]; attention then sees the tokens of its own slot only."""
    rng = np.random.default_rng(7)
    k_cache = _aligned(np.zeros((SLOTS, CONTEXT, hk, d), np.float32))
    v_cache = _aligned(np.zeros((SLOTS, CONTEXT, hk, d), np.float32))
    # two sequences in one step: 5 tokens of slot 1 (positions 0..4) and 3 of slot 0 (positions 0..2)
    slot = _aligned(np.array([1] * 5 + [0] * 3, np.int32))
    pos = _aligned(np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32))
    k_cur = _aligned(rng.standard_normal((8, hk, d), dtype=np.float32))
    v_cur = _aligned(rng.standard_normal((8, hk, d), dtype=np.float32))
    before = k_cache.copy()
    module[f"kv_write_{_name(hq, hk, d)}"](*(as_tensor(a) for a in (k_cur, v_cur, pos, slot, k_cache, v_cache)))
    before[slot, pos] = k_cur
    np.testing.assert_array_equal(k_cache, before)
    np.testing.assert_array_equal(v_cache[slot, pos], v_cur)
    q = _aligned(rng.standard_normal((8, hq, d), dtype=np.float32))
    out = aligned_empty((8, hq * d))
    module[f"attention_{_name(hq, hk, d)}"](*(as_tensor(a) for a in (q, k_cache, v_cache, pos, slot, _threads(2), out)))
    ref = reference(q, k_cache, v_cache, pos, slot, d**-0.5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
