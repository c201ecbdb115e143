"""Every op's numpy reference against values written independently of the op registry."""

import math

import numpy as np
import pytest

from graphllm.dsl import ops as O
from graphllm.dsl.types import TensorType

rng = np.random.default_rng(0)


def ref(op, attrs=None, ctx=None, **inputs):
    spec = O.get_spec(op)
    full = {p.name: p.default for p in spec.attr_params if p.default is not None}
    full.update(attrs or {})
    return spec.reference(inputs, full, ctx or O.RefContext())


def infer(op, attrs=None, **types):
    spec = O.get_spec(op)
    full = {p.name: p.default for p in spec.attr_params if p.default is not None}
    full.update(attrs or {})
    return spec.infer({k: TensorType.parse(v) for k, v in types.items()}, full)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_embedding():
    w = randn(10, 4)
    out = ref("Embedding", input=np.array([3, 0, 9], np.int32), weight=w)
    assert np.array_equal(out, np.stack([w[3], w[0], w[9]]))
    assert str(infer("Embedding", input="i32[T]", weight="f32[10,4]")) == "f32[T,4]"
    with pytest.raises(IndexError):
        ref("Embedding", input=np.array([10], np.int32), weight=w)


def test_rmsnorm():
    x, w = randn(3, 8), randn(8)
    expect = np.empty_like(x)
    for r in range(3):
        ms = sum(float(v) ** 2 for v in x[r]) / 8
        expect[r] = [x[r, i] / math.sqrt(ms + 1e-6) * w[i] for i in range(8)]
    np.testing.assert_allclose(ref("RMSNorm", {"eps": 1e-6}, input=x, weight=w), expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(O.ShapeError, match="must be \\[8\\]"):
        infer("RMSNorm", {"eps": 1e-6}, input="f32[T,8]", weight="f32[7]")


def test_layernorm():
    x, w, b = randn(2, 6), randn(6), randn(6)
    m = x.mean(1, keepdims=True)
    expect = (x - m) / np.sqrt(((x - m) ** 2).mean(1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(ref("LayerNorm", {"eps": 1e-5}, input=x, weight=w, bias=b), expect, rtol=1e-5, atol=1e-6)


def test_linear_with_and_without_bias():
    x, w, b = randn(5, 3), randn(4, 3), randn(4)
    expect = np.array([[sum(x[t, k] * w[n, k] for k in range(3)) for n in range(4)] for t in range(5)])
    np.testing.assert_allclose(ref("Linear", input=x, weight=w), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref("Linear", input=x, weight=w, bias=b), expect + b, rtol=1e-5, atol=1e-6)
    assert str(infer("Linear", input="f32[T,3]", weight="f32[4,3]")) == "f32[T,4]"
    with pytest.raises(O.ShapeError, match="expects 3"):
        infer("Linear", input="f32[T,5]", weight="f32[4,3]")
    with pytest.raises(O.ShapeError, match="bias"):
        infer("Linear", input="f32[T,3]", weight="f32[4,3]", bias="f32[3]")


def test_expand_head():
    x = randn(2, 12)
    out = ref("ExpandHead", {"headDim": 4}, input=x)
    assert out.shape == (2, 3, 4) and np.array_equal(out[1, 2], x[1, 8:12])
    assert str(infer("ExpandHeads", {"headDim": 4}, input="f32[T,12]")) == "f32[T,3,4]"
    with pytest.raises(O.ShapeError, match="not a multiple"):
        infer("ExpandHead", {"headDim": 5}, input="f32[T,12]")


def test_rope_matches_complex_rotation_and_partial_dims():
    d, r = 8, 3  # rotaryDim counts pairs: 3 pairs rotated, the last 2 elements pass through
    x = randn(2, 2, d)
    pos = np.array([0, 5], np.int32)
    angles = np.arange(10)[:, None] * np.array([1.0, 0.1, 0.01])[None, :]
    sin, cos = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    out = ref("LlamaRotatePosition2D", {"rotaryDim": r}, input=x, positionIds=pos, sin=sin, cos=cos)
    for t in range(2):
        for h in range(2):
            z = (x[t, h, :r] + 1j * x[t, h, r:2 * r]) * np.exp(1j * angles[pos[t]])
            np.testing.assert_allclose(out[t, h, :r], z.real, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out[t, h, r:2 * r], z.imag, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(out[t, h, 2 * r:], x[t, h, 2 * r:])
    with pytest.raises(O.ShapeError, match="ExpandHead"):
        infer("LlamaRotatePosition2D", {"rotaryDim": 2}, input="f32[T,8]", positionIds="i32[T]",
              sin="f32[10,4]", cos="f32[10,4]")


def _naive_attention(q, keys, vals, scale):
    """Per query row and head, softmax over cache rows 0..pos (keys/vals already per query head)."""
    out = np.zeros(q.shape, np.float64)
    for t in range(q.shape[0]):
        for h in range(q.shape[1]):
            n = keys[t].shape[0]
            s = np.array([float(q[t, h] @ keys[t][j, h]) * scale for j in range(n)])
            p = np.exp(s - s.max())
            p /= p.sum()
            out[t, h] = sum(p[j] * vals[t][j, h] for j in range(n))
    return out.reshape(q.shape[0], -1)


def test_fused_attention_prefill_decode_gqa_and_slots():
    hq, hk, d, cap = 4, 2, 3, 8
    caches = {0: (np.zeros((2, cap, hk, d), np.float32), np.zeros((2, cap, hk, d), np.float32))}
    q, k, v = randn(5, hq, d), randn(5, hk, d), randn(5, hk, d)
    # two sequences packed: slot 1 gets 3 tokens at positions 0..2, slot 0 gets 2 tokens at 0..1
    seq = np.array([3, 2], np.int32)
    pos = np.array([0, 1, 2, 0, 1], np.int32)
    ctx = O.RefContext(caches=caches, slots=np.array([1, 0]), positions=pos)
    out = ref("FusedAttention", {"scale": 0.5, "layer": 0}, ctx, q=q, curk=k, curv=v, seqLens=seq)
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)  # query head h uses kv head h // 2
    keys = [kk[0:1], kk[0:2], kk[0:3], kk[3:4], kk[3:5]]
    vals = [vv[0:1], vv[0:2], vv[0:3], vv[3:4], vv[3:5]]
    np.testing.assert_allclose(out, _naive_attention(q, keys, vals, 0.5), rtol=1e-5, atol=1e-6)
    assert np.array_equal(caches[0][0][1, :3], k[:3]) and np.array_equal(caches[0][0][0, :2], k[3:])
    # decode one token for slot 1 at position 3: attends to the 3 cached rows plus itself
    q1, k1, v1 = randn(1, hq, d), randn(1, hk, d), randn(1, hk, d)
    ctx = O.RefContext(caches=caches, slots=np.array([1]), positions=np.array([3], np.int32))
    out1 = ref("FusedAttention", {"scale": 0.5, "layer": 0}, ctx, q=q1, curk=k1, curv=v1,
               seqLens=np.array([1], np.int32))
    keys1 = np.repeat(np.concatenate([k[:3], k1]), 2, axis=1)
    vals1 = np.repeat(np.concatenate([v[:3], v1]), 2, axis=1)
    np.testing.assert_allclose(out1, _naive_attention(q1, [keys1], [vals1], 0.5), rtol=1e-5, atol=1e-6)
    assert str(infer("FusedAttention", {"scale": 1.0}, q="f32[T,4,3]", curk="f32[T,2,3]", curv="f32[T,2,3]",
                     seqLens="i32[B]")) == "f32[T,12]"
    with pytest.raises(O.ShapeError, match="not a multiple"):
        infer("FusedAttention", {"scale": 1.0}, q="f32[T,3,3]", curk="f32[T,2,3]", curv="f32[T,2,3]",
              seqLens="i32[B]")


def test_elementwise_ops():
    a, b = randn(3, 4), randn(3, 4)
    np.testing.assert_allclose(ref("AddTo", input0=a, input1=b), a + b)
    np.testing.assert_allclose(ref("AddTo", {"alpha": 0.5}, input0=a, input1=b), a + 0.5 * b, rtol=1e-6)
    np.testing.assert_allclose(ref("MulTo", input0=a, input1=b), a * b)
    np.testing.assert_allclose(ref("Silu", input=a), a / (1 + np.exp(-a)), rtol=1e-6)
    np.testing.assert_allclose(ref("Add", {"v": 2.0}, input=a), a + 2)
    np.testing.assert_allclose(ref("Mul", {"v": 3.0}, input=a), a * 3, rtol=1e-6)
    with pytest.raises(O.ShapeError, match="differ"):
        infer("AddTo", input0="f32[T,4]", input1="f32[T,5]")


def test_gelu_exact_and_tanh():
    x = np.linspace(-5, 5, 101).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(ref("Gelu", input=x), exact, rtol=1e-5, atol=1e-6)
    tanh = np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(ref("Gelu", {"approximate": "tanh"}, input=x), tanh, rtol=1e-5, atol=1e-6)


def test_swiglu():
    x = randn(2, 6)
    g, u = x[:, :3], x[:, 3:]
    np.testing.assert_allclose(ref("Swiglu", input=x), g / (1 + np.exp(-g)) * u, rtol=1e-6)
    assert str(infer("Swiglu", input="f32[T,6]")) == "f32[T,3]"


def test_split_last_token_states():
    x = randn(6, 2)
    out = ref("SplitLastTokenStates", input=x, seqLens=np.array([2, 1, 3], np.int32))
    assert np.array_equal(out, x[[1, 2, 5]])
    assert str(infer("SplitLastTokenStates", input="f32[T,2]", seqLens="i32[B]")) == "f32[B,2]"


def test_cat_split_repeat():
    a, b = randn(2, 3), randn(2, 2)
    assert np.array_equal(ref("Cat", {"axis": 1}, input0=a, input1=b), np.hstack([a, b]))
    assert str(infer("Cat", {"axis": -1}, input0="f32[T,3]", input1="f32[T,2]")) == "f32[T,5]"
    assert np.array_equal(ref("Split", {"axis": 1, "start": 1, "end": 3}, input=a), a[:, 1:3])
    with pytest.raises(O.ShapeError, match="not inside"):
        infer("Split", {"axis": 1, "start": 1, "end": 4}, input="f32[T,3]")
    assert np.array_equal(ref("Repeat", {"axis": 1, "repeatTimes": 2}, input=a), np.hstack([a, a]))
    assert str(infer("Repeat", {"axis": 1, "repeatTimes": 2}, input="f32[T,3]")) == "f32[T,6]"


def test_datatype_as_and_print_and_exit(capsys):
    x = randn(2, 2).astype(np.float16)
    assert ref("DataTypeAs", input=x, input1=np.zeros((), np.float32)).dtype == np.float32
    ctx = O.RefContext(names={"input": "hidden"})
    assert ref("Print", ctx=ctx, input=x) is None
    assert "hidden" in capsys.readouterr().err
    with pytest.raises(O.OpExit):
        ref("Exit")


def test_every_registered_op_is_tested_here():
    from pathlib import Path

    source = "".join(p.read_text() for p in Path(__file__).parent.glob("test_ops*.py"))
    for name in O.REGISTRY:
        assert f'"{name}"' in source, f"op {name} has no reference test"


def test_fused_linear_prologues_and_residual():
    x, w, b, g, res = randn(3, 8), randn(5, 8), randn(5), randn(8), randn(3, 5)
    normed = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-6) * (g + 1.0)
    out = ref("FusedLinear", {"prologue": "rmsnorm", "eps": 1e-6, "weightOffset": 1.0},
              input=x, weight=w, bias=b, norm=g, residual=res)
    np.testing.assert_allclose(out, res + normed @ w.T + b, rtol=1e-5, atol=1e-5)
    xx = randn(3, 16)
    act = xx[:, :8] / (1 + np.exp(-xx[:, :8])) * xx[:, 8:]
    np.testing.assert_allclose(ref("FusedLinear", {"prologue": "swiglu"}, input=xx, weight=w), act @ w.T,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref("FusedLinear", input=x, weight=w), x @ w.T, rtol=1e-6)
    assert str(infer("FusedLinear", {"prologue": "swiglu"}, input="f32[T,16]", weight="f32[5,8]")) == "f32[T,5]"
    assert str(infer("FusedLinear", {"prologue": "rmsnorm", "eps": 1e-5}, input="f32[T,8]", weight="f32[5,8]",
                     norm="f32[8]", residual="f32[T,5]")) == "f32[T,5]"
    with pytest.raises(O.ShapeError, match="residual"):
        infer("FusedLinear", input="f32[T,8]", weight="f32[5,8]", residual="f32[T,4]")
    with pytest.raises(O.ShapeError, match="prologue"):
        infer("FusedLinear", {"prologue": "gelu"}, input="f32[T,8]", weight="f32[5,8]")


def test_fused_attention_with_rope_rotates_q_and_k_first():
    hq, hk, d, r = 2, 1, 6, 2  # rotaryDim counts pairs: (0, 2), (1, 3) rotate, 4..5 pass through
    pos = np.array([0, 1, 2], np.int32)
    ang = np.arange(8)[:, None] * np.array([0.5, 0.25])[None, :]
    sin, cos = np.sin(ang).astype(np.float32), np.cos(ang).astype(np.float32)
    q, k, v = randn(3, hq, d), randn(3, hk, d), randn(3, hk, d)

    def rot(x):
        out = x.copy()
        c, s = cos[pos][:, None, :], sin[pos][:, None, :]
        out[..., 0:2] = x[..., 0:2] * c - x[..., 2:4] * s
        out[..., 2:4] = x[..., 2:4] * c + x[..., 0:2] * s
        return out

    def run(rope, qq, kk):
        caches = {0: (np.zeros((1, 4, hk, d), np.float32), np.zeros((1, 4, hk, d), np.float32))}
        ctx = O.RefContext(caches=caches, slots=np.array([0]), positions=pos)
        extra = {"positionIds": pos, "sin": sin, "cos": cos} if rope else {}
        attrs = {"scale": 0.5, "layer": 0, **({"rotaryDim": r} if rope else {})}
        return ref("FusedAttention", attrs, ctx, q=qq, curk=kk, curv=v, seqLens=np.array([3], np.int32), **extra), caches

    fused, caches = run(True, q, k)
    plain, _ = run(False, rot(q), rot(k))
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(caches[0][0][0, :3], rot(k), rtol=1e-6)  # the cache holds rotated keys
    with pytest.raises(O.ShapeError, match="rotaryDim needs"):
        infer("FusedAttention", {"scale": 1.0, "rotaryDim": 2}, q="f32[T,2,6]", curk="f32[T,1,6]",
              curv="f32[T,1,6]", seqLens="i32[B]")


def test_qkv_attention_equals_fused_attention_on_the_split_heads():
    hq, hk, d = 4, 2, 3
    qkv = randn(5, (hq + 2 * hk) * d)
    heads = qkv.reshape(5, hq + 2 * hk, d)
    seq, pos = np.array([5], np.int32), np.arange(5, dtype=np.int32)

    def ctx():
        caches = {0: (np.zeros((1, 8, hk, d), np.float32), np.zeros((1, 8, hk, d), np.float32))}
        return O.RefContext(caches=caches, slots=np.array([0]), positions=pos)

    packed = ref("QKVAttention", {"scale": 0.5, "layer": 0, "numHeads": hq, "numKVHeads": hk}, ctx(), qkv=qkv,
                 seqLens=seq)
    split = ref("FusedAttention", {"scale": 0.5, "layer": 0}, ctx(), q=heads[:, :hq].copy(),
                curk=heads[:, hq:hq + hk].copy(), curv=heads[:, hq + hk:].copy(), seqLens=seq)
    np.testing.assert_array_equal(packed, split)
    assert str(infer("QKVAttention", {"scale": 1.0, "numHeads": hq, "numKVHeads": hk}, qkv="f32[T,24]",
                     seqLens="i32[B]")) == "f32[T,12]"
    assert O.get_spec("QKVAttention").kv_shape({"qkv": TensorType.parse("f32[T,24]")},
                                               {"numHeads": hq, "numKVHeads": hk}) == (2, 3)
    with pytest.raises(O.ShapeError, match="qkv width"):
        infer("QKVAttention", {"scale": 1.0, "numHeads": hq, "numKVHeads": hk}, qkv="f32[T,25]", seqLens="i32[B]")


def test_fused_elementwise_applies_its_chain_in_order():
    x, y = randn(3, 4), randn(3, 4)
    chain = [{"op": "Mul", "attrs": {"v": 0.5}}, {"op": "Tanh"}, {"op": "MulTo"}, {"op": "Add", "attrs": {"v": 1.0}}]
    np.testing.assert_allclose(ref("FusedElementwise", {"chain": chain}, input=x, input1=y),
                               np.tanh(x * 0.5) * y + 1.0, rtol=1e-6, atol=1e-6)
    assert str(infer("FusedElementwise", {"chain": chain}, input="f32[T,4]", input1="f32[T,4]")) == "f32[T,4]"
    with pytest.raises(O.ShapeError, match="cannot be a chain step"):
        infer("FusedElementwise", {"chain": [{"op": "RMSNorm"}]}, input="f32[T,4]")
    with pytest.raises(O.ShapeError, match="needs the chain's input1"):
        infer("FusedElementwise", {"chain": [{"op": "MulTo"}]}, input="f32[T,4]")
