"""References of the ops and attributes added for Qwen3/Mistral/Phi-3/Gemma 2, against values written here."""

import math

import numpy as np
import pytest

from graphllm.dsl import ops as O

from test_ops import _naive_attention, infer, randn, ref


def test_tanh():
    x = np.linspace(-12, 12, 97).astype(np.float32)
    np.testing.assert_allclose(ref("Tanh", input=x), [math.tanh(v) for v in x.astype(np.float64)], rtol=1e-6, atol=1e-7)
    assert str(infer("Tanh", input="f32[B,7]")) == "f32[B,7]"


def test_rmsnorm_weight_offset_scales_by_one_plus_weight():
    x, w = randn(3, 8), randn(8)
    plain = ref("RMSNorm", {"eps": 1e-6}, input=x, weight=w)
    gemma = ref("RMSNorm", {"eps": 1e-6, "weightOffset": 1.0}, input=x, weight=w)
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(gemma, x / rms * (1.0 + w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain, x / rms * w, rtol=1e-5, atol=1e-6)


def _attend(q, k, v, pos, **attrs):
    """One sequence (slot 0) through the FusedAttention reference with a fresh cache."""
    shape = (1, 16) + k.shape[1:]
    ctx = O.RefContext(caches={0: (np.zeros(shape, np.float32), np.zeros(shape, np.float32))},
                       slots=np.array([0]), positions=np.asarray(pos, np.int32))
    return ref("FusedAttention", {"scale": 0.5, "layer": 0, **attrs}, ctx, q=q, curk=k, curv=v,
               seqLens=np.array([len(pos)], np.int32))


def test_attention_sliding_window_sees_the_last_window_keys():
    hq, hk, d, n, window = 4, 2, 3, 7, 3
    q, k, v = randn(n, hq, d), randn(n, hk, d), randn(n, hk, d)
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    lo = [max(0, t - window + 1) for t in range(n)]  # a token at t sees t-window+1 .. t
    expect = _naive_attention(q, [kk[lo[t]:t + 1] for t in range(n)], [vv[lo[t]:t + 1] for t in range(n)], 0.5)
    np.testing.assert_allclose(_attend(q, k, v, range(n), window=window), expect, rtol=1e-5, atol=1e-6)
    full = _naive_attention(q, [kk[:t + 1] for t in range(n)], [vv[:t + 1] for t in range(n)], 0.5)
    np.testing.assert_allclose(_attend(q, k, v, range(n), window=0), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_attend(q, k, v, range(n), window=n), full, rtol=1e-5, atol=1e-6)
    with pytest.raises(O.ShapeError, match="window"):
        infer("FusedAttention", {"scale": 1.0, "window": -1}, q="f32[T,4,3]", curk="f32[T,2,3]",
              curv="f32[T,2,3]", seqLens="i32[B]")


def test_attention_softcap_squashes_scaled_scores():
    hq, hk, d, n, cap = 2, 1, 4, 5, 0.7
    q, k, v = randn(n, hq, d) * 3, randn(n, hk, d) * 3, randn(n, hk, d)
    out = _attend(q, k, v, range(n), softcap=cap)
    expect = np.zeros((n, hq * d))
    for t in range(n):
        for h in range(hq):
            s = np.array([cap * math.tanh(float(q[t, h] @ k[j, 0]) * 0.5 / cap) for j in range(t + 1)])
            p = np.exp(s - s.max())
            expect[t, h * d:(h + 1) * d] = (p / p.sum()) @ v[:t + 1, 0]
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, _attend(q, k, v, range(n)), atol=1e-3)  # the cap matters at these scores
