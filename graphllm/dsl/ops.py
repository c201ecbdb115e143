"""The op registry: one OpSpec per operator, used by every layer.

An OpSpec says how the DSL method is called (its parameters, in fastllm's order), which
parameters are graph inputs, weights, attributes or the output name, the shape/dtype rule and the
numpy reference semantics. The recorder, the verifier, the reference executor, the text IR and
the codegen all read the same spec.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .types import SEQS, Dim, TensorType, fmt_shape

# Parameter kinds of a DSL method.
IN = "in"  # a data value read
WEIGHT = "weight"  # a checkpoint tensor read
OUT = "out"  # the data name the result is written to
INOUT = "inout"  # a data value read and overwritten in place (AddTo's input0): a new SSA version
ATTR = "attr"  # a constant (int/float/str)
CACHE = "cache"  # a pastKey.<i>/pastValue.<i> handle: carries the layer's KV cache index
IGNORED = "ignored"  # accepted for fastllm compatibility, carries no information here


class ShapeError(Exception):
    """Raised by an infer rule; the verifier adds the op, names and source location."""


class OpExit(Exception):
    """Raised by the Exit op's reference to stop a run where the model file asked."""


@dataclass(frozen=True)
class Param:
    """One positional parameter of a DSL method."""

    name: str
    kind: str
    optional: bool = False
    default: Any = None
    type: type | None = None


@dataclass
class RefContext:
    """What a reference implementation may need beyond its inputs: KV caches and step layout."""

    caches: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    seq_lens: np.ndarray | None = None
    slots: np.ndarray | None = None
    positions: np.ndarray | None = None
    names: Mapping[str, str] = field(default_factory=dict)


InferFn = Callable[[dict[str, TensorType], dict[str, Any]], TensorType | None]
RefFn = Callable[[dict[str, np.ndarray], dict[str, Any], RefContext], np.ndarray | None]


@dataclass(frozen=True)
class OpSpec:
    """Everything graphllm knows about one operator."""

    name: str
    params: tuple[Param, ...]
    infer: InferFn
    reference: RefFn
    doc: str
    aliases: tuple[str, ...] = ()
    side_effect: bool = False
    kv_shape: Callable[[dict[str, TensorType], dict[str, Any]], tuple[int, int]] | None = None
    """For ops that own a layer's KV cache: (kv_heads, head_dim) of its rows, from input types and attrs
    (the element type is :func:`kv_dtype` of the attrs)."""

    @property
    def input_ports(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind in (IN, WEIGHT, INOUT))

    @property
    def attr_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind == ATTR)

    @property
    def has_output(self) -> bool:
        return any(p.kind in (OUT, INOUT) for p in self.params)


REGISTRY: dict[str, OpSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add an op to the registry (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in REGISTRY or key in _ALIASES:
            raise ValueError(f"op {key} registered twice")
    REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def get_spec(name: str) -> OpSpec | None:
    """The spec for an op name or alias, or None."""
    return REGISTRY.get(_ALIASES.get(name, name))


# ---------------------------------------------------------------- shape helpers

def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ShapeError(message)


def _same(a: TensorType, b: TensorType, what: str) -> None:
    _require(a.shape == b.shape, f"{what}: shapes {fmt_shape(a.shape)} and {fmt_shape(b.shape)} differ")


def _float(t: TensorType, port: str) -> None:
    _require(t.dtype.startswith("float") or t.dtype == "bfloat16", f"{port} must be a float tensor, got {t}")


def _axis(axis: int, rank: int) -> int:
    _require(-rank <= axis < rank, f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def _div(dim: Dim, by: int, what: str) -> Dim:
    if isinstance(dim, str):
        raise ShapeError(f"{what}: cannot split the symbolic dim {dim}")
    _require(by > 0 and dim % by == 0, f"{what}: {dim} is not a multiple of {by}")
    return dim // by


def _unary(t: dict[str, TensorType], a: dict[str, Any]) -> TensorType:
    _float(t["input"], "input")
    return t["input"]


def _binary(t: dict[str, TensorType], a: dict[str, Any]) -> TensorType:
    _same(t["input0"], t["input1"], "input0 and input1")
    return t["input0"]


def _erf(x: np.ndarray) -> np.ndarray:
    """Error function to float32 precision (Abramowitz & Stegun 7.1.26, |err| < 1.5e-7)."""
    sign = np.sign(x)
    ax = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * ax)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-ax * ax))).astype(x.dtype)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """GELU, exact (erf) or with the tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))


# ---------------------------------------------------------------- operators

def _embedding_infer(t, a):
    ids, w = t["input"], t["weight"]
    _require(ids.dtype.startswith("int"), f"input must hold token ids (int), got {ids}")
    _require(w.rank == 2, f"weight must be [vocab, hidden], got {fmt_shape(w.shape)}")
    return TensorType(ids.shape + (w.shape[1],), "float32")  # 16-bit and block tables decode to float32 rows


def _embedding_ref(x, a, ctx):
    ids, w = x["input"], x["weight"]
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise IndexError(f"token id {int(ids.max())} is outside the vocabulary of {w.shape[0]}")
    return w[ids].astype(np.float32)


register(OpSpec(
    "Embedding",
    (Param("input", IN), Param("weight", WEIGHT), Param("output", OUT)),
    _embedding_infer, _embedding_ref,
    "output[t] = weight[input[t]]: token ids to embedding rows."))


def _datatype_as_infer(t, a):
    return TensorType(t["input"].shape, t["input1"].dtype)


register(OpSpec(
    "DataTypeAs",
    (Param("input", INOUT), Param("input1", IN)),
    _datatype_as_infer,
    lambda x, a, ctx: x["input"].astype(x["input1"].dtype),
    "input becomes input1's dtype (data['atype'] is the activation dtype)."))


def _rmsnorm_infer(t, a):
    x, w = t["input"], t["weight"]
    _float(x, "input")
    _require(w.rank == 1 and w.shape[0] == x.shape[-1],
             f"weight {fmt_shape(w.shape)} must be [{x.shape[-1]}] to match the input's last dim")
    return x


def _rmsnorm_ref(x, a, ctx):
    v = x["input"]
    inv = 1.0 / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + np.float32(a["eps"]))
    w = x["weight"] + np.float32(a["weightOffset"]) if a.get("weightOffset") else x["weight"]
    return (v * inv.astype(np.float32)) * w


register(OpSpec(
    "RMSNorm",
    (Param("input", IN), Param("weight", WEIGHT), Param("eps", ATTR, type=float), Param("output", OUT),
     Param("weightOffset", ATTR, optional=True, type=float)),
    _rmsnorm_infer, _rmsnorm_ref,
    "output = input / sqrt(mean(input^2, last axis) + eps) * (weight + weightOffset); Gemma's norms "
    "scale by (1 + weight): weightOffset=1."))


def _layernorm_infer(t, a):
    x, w = t["input"], t["weight"]
    _float(x, "input")
    _require(w.rank == 1 and w.shape[0] == x.shape[-1], f"weight {fmt_shape(w.shape)} must be [{x.shape[-1]}]")
    if "bias" in t:
        _same(t["bias"], w, "weight and bias")
    return x


def _layernorm_ref(x, a, ctx):
    v = x["input"]
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    out = (v - mean) / np.sqrt(var + np.float32(a["eps"])) * x["weight"]
    return out + x["bias"] if "bias" in x else out


register(OpSpec(
    "LayerNorm",
    (Param("input", IN), Param("weight", WEIGHT), Param("bias", WEIGHT, optional=True),
     Param("eps", ATTR, type=float), Param("output", OUT)),
    _layernorm_infer, _layernorm_ref,
    "output = (input - mean) / sqrt(var + eps) * weight + bias, over the last axis."))


def _linear_infer(t, a):
    x, w = t["input"], t["weight"]
    _float(x, "input")
    _require(w.rank == 2, f"weight must be 2-D [out, in], got {fmt_shape(w.shape)}")
    _require(x.shape[-1] == w.shape[1],
             f"input {fmt_shape(x.shape)} has {x.shape[-1]} features but weight {fmt_shape(w.shape)} "
             f"expects {w.shape[1]}")
    if "bias" in t:
        _require(t["bias"].shape == (w.shape[0],),
                 f"bias {fmt_shape(t['bias'].shape)} must be [{w.shape[0]}]")
    return x.with_shape(x.shape[:-1] + (w.shape[0],))


def _linear_ref(x, a, ctx):
    out = x["input"] @ x["weight"].T
    return out + x["bias"] if "bias" in x else out


register(OpSpec(
    "Linear",
    (Param("input", IN), Param("weight", WEIGHT), Param("bias", WEIGHT, optional=True), Param("output", OUT)),
    _linear_infer, _linear_ref,
    "output = input @ weight.T + bias; weight is [out, in] as in Hugging Face checkpoints."))


def _expand_head_infer(t, a):
    x = t["input"]
    heads = _div(x.shape[-1], a["headDim"], f"last dim of {fmt_shape(x.shape)} by headDim {a['headDim']}")
    return x.with_shape(x.shape[:-1] + (heads, a["headDim"]))


def _expand_head_ref(x, a, ctx):
    v = x["input"]
    return v.reshape(v.shape[:-1] + (-1, a["headDim"]))


register(OpSpec(
    "ExpandHead",
    (Param("input", INOUT), Param("headDim", ATTR, type=int)),
    _expand_head_infer, _expand_head_ref,
    "[T, heads*headDim] -> [T, heads, headDim], in place.",
    aliases=("ExpandHeads",)))


def _rope_infer(t, a):
    x, pos, sin, cos = t["input"], t["positionIds"], t["sin"], t["cos"]
    _require(x.rank == 3, f"input must be [T, heads, headDim] (call ExpandHead first), got {fmt_shape(x.shape)}")
    _require(pos.dtype.startswith("int") and pos.shape == (x.shape[0],),
             f"positionIds {pos} must be int[{x.shape[0]}]")
    _same(sin, cos, "sin and cos")
    r = a["rotaryDim"]
    _require(0 < 2 * r <= x.shape[2], f"rotaryDim {r} counts pairs: 2*{r} must not exceed headDim {x.shape[2]}")
    _require(sin.shape[-1] >= r, f"sin/cos tables {fmt_shape(sin.shape)} have fewer than rotaryDim={r} columns")
    return x


def _rope_ref(x, a, ctx):
    v, pos = x["input"], x["positionIds"]
    r = a["rotaryDim"]
    cos = x["cos"][pos, :r][:, None, :]
    sin = x["sin"][pos, :r][:, None, :]
    out = v.copy()
    x1, x2 = v[..., :r], v[..., r:2 * r]
    out[..., :r] = x1 * cos - x2 * sin
    out[..., r:2 * r] = x2 * cos + x1 * sin
    return out


register(OpSpec(
    "LlamaRotatePosition2D",
    (Param("input", INOUT), Param("positionIds", IN), Param("sin", IN), Param("cos", IN),
     Param("rotaryDim", ATTR, type=int)),
    _rope_infer, _rope_ref,
    "Rotate-half RoPE in place: pairs (i, i+rotaryDim) for i < rotaryDim (rotaryDim counts pairs, "
    "as in fastllm); the rest of each head passes through."))


KV_DTYPES = ("float16", "float32")  # element types a KV cache may have (the attention ops' kvDtype)
UNSET_KV_DTYPE = "float32"  # the cache of an attention node without kvDtype (IR written before the attribute)


def kv_dtype(attrs: Mapping[str, Any]) -> str:
    """The element type of the KV cache an attention node owns: its kvDtype attribute, float32 when absent."""
    return attrs.get("kvDtype") or UNSET_KV_DTYPE


def kv_caches_dtype(dtypes: Iterable[str]) -> str | None:
    """The element type of a model's KV caches from each cache's (None without any; mixed ones joined by '+')."""
    return "+".join(sorted(set(dtypes))) or None


def kv_position_bytes(caches: Iterable[tuple[Sequence[int], str]]) -> int:
    """Bytes one token position takes in one slot of KV caches given as (kv_shape, dtype) each: keys and values."""
    return sum(2 * int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in caches)


def _attention_infer(t, a):
    q, k, v = t["q"], t["curk"], t["curv"]
    _require(q.rank == 3 and k.rank == 3 and v.rank == 3,
             f"q, curk and curv must be [T, heads, headDim], got {q}, {k}, {v}")
    _same(k, v, "curk and curv")
    _require(q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2],
             f"q {fmt_shape(q.shape)} and curk {fmt_shape(k.shape)} disagree on tokens or headDim")
    _require(k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0,
             f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    _require(t["seqLens"].dtype.startswith("int"), "seqLens must be int")
    _require(a.get("window", 0) >= 0, f"window {a.get('window')} must be >= 0 (0: no sliding window)")
    _require(a.get("softcap", 0) >= 0, f"softcap {a.get('softcap')} must be >= 0 (0: no soft-capping)")
    _require(kv_dtype(a) in KV_DTYPES, f"kvDtype {kv_dtype(a)!r} must be one of {', '.join(KV_DTYPES)}")
    if a.get("rotaryDim"):
        _require(all(p in t for p in ROPE_PORTS), f"rotaryDim needs the {', '.join(ROPE_PORTS)} inputs")
        for port in ("q", "curk"):
            _rope_infer({"input": t[port], **{p: t[p] for p in ROPE_PORTS}}, a)
    return q.with_shape((q.shape[0], q.shape[1] * q.shape[2]))


ROPE_PORTS = ("positionIds", "sin", "cos")


def _rotated(x, port, a):
    """x[port] with RoPE applied when the attention has it fused in (rotaryDim), else as given."""
    if not a.get("rotaryDim"):
        return x[port]
    return _rope_ref({"input": x[port], **{p: x[p] for p in ROPE_PORTS}}, a, None)


def soft_cap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap): squashes x smoothly into (-cap, cap) (Gemma 2's logit soft-capping)."""
    c = np.float32(cap)
    return np.tanh(x / c) * c


def _attention_ref(x, a, ctx):
    """Write this step's K/V into the layer's cache, then causal (optionally windowed) attention."""
    q, k, v = _rotated(x, "q", a), _rotated(x, "curk", a), x["curv"]
    kc, vc = ctx.caches[a["layer"]]
    seq_lens = x["seqLens"]
    starts = np.concatenate([[0], np.cumsum(seq_lens)])
    hq, hk, d = q.shape[1], k.shape[1], q.shape[2]
    group = hq // hk
    out = np.empty((q.shape[0], hq * d), dtype=np.float32)
    pos = ctx.positions
    for b, slot in enumerate(ctx.slots):
        rows = slice(starts[b], starts[b + 1])
        p = pos[rows]
        kc[slot, p] = k[rows]  # rounded to the cache's dtype (float16: to nearest even, as the kernels store)
        vc[slot, p] = v[rows]
        n = int(p.max()) + 1 if p.size else 0
        keys = np.repeat(kc[slot, :n].astype(np.float32), group, axis=1)  # [n, hq, d], widened exactly
        vals = np.repeat(vc[slot, :n].astype(np.float32), group, axis=1)
        s = np.einsum("thd,nhd->htn", q[rows], keys) * np.float32(a["scale"])
        if a.get("softcap"):
            s = soft_cap(s, a["softcap"])
        keep = np.arange(n)[None, None, :] <= p[None, :, None]
        if a.get("window"):
            keep &= np.arange(n)[None, None, :] > p[None, :, None] - a["window"]
        s = np.where(keep, s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        out[rows] = np.einsum("htn,nhd->thd", s, vals).reshape(-1, hq * d)
    return out


register(OpSpec(
    "FusedAttention",
    (Param("q", IN), Param("k", CACHE), Param("v", CACHE), Param("curk", IN), Param("curv", IN),
     Param("original", IGNORED), Param("mask", IGNORED), Param("output", OUT), Param("seqLens", IN),
     Param("scale", ATTR, type=float), Param("maskType", ATTR, default=0, type=int),
     Param("unitLen", ATTR, default=128, type=int), Param("window", ATTR, optional=True, type=int),
     Param("softcap", ATTR, optional=True, type=float), Param("positionIds", IN, optional=True),
     Param("sin", IN, optional=True), Param("cos", IN, optional=True), Param("rotaryDim", ATTR, optional=True, type=int),
     Param("kvDtype", ATTR, optional=True, type=str)),
    _attention_infer, _attention_ref,
    "Appends curk/curv at each token's position to the KV cache of layer k (pastKey.<i>), then "
    "causal attention of q over that cache (GQA by head groups). Output [T, heads*headDim]. "
    "Optional: window > 0: a token at position p sees keys p-window+1 .. p only (sliding window); softcap > 0: "
    "scores become softcap * tanh(scores / softcap) after scaling (Gemma 2); rotaryDim > 0 (with "
    "positionIds, sin, cos): q and curk are rotated first, as LlamaRotatePosition2D would (the fuse_rope pass); "
    "kvDtype (float16 or float32; absent: float32; builds write float16 unless --kv-dtype f32): the cache's "
    "element type, k/v rounded to it as they are stored. "
    "As in fastllm, k/v only name the layer's cache and original/mask/unitLen carry nothing.",
    kv_shape=lambda t, a: (int(t["curk"].shape[1]), int(t["curk"].shape[2]))))


def _qkv_split_types(t, a):
    """The q, curk, curv types a packed qkv [T, (heads + 2 kvHeads) * headDim] holds."""
    x, hq, hk = t["qkv"], a["numHeads"], a["numKVHeads"]
    _require(x.rank == 2 and hq > 0 and hk > 0, f"qkv must be [T, (heads + 2 kvHeads) * headDim], got {x}")
    d = _div(x.shape[1], hq + 2 * hk, f"qkv width by heads + 2 kvHeads = {hq + 2 * hk}")
    return {"q": x.with_shape((x.shape[0], hq, d)), "curk": x.with_shape((x.shape[0], hk, d)),
            "curv": x.with_shape((x.shape[0], hk, d))}


def _qkv_attention_infer(t, a):
    return _attention_infer({**t, **_qkv_split_types(t, a)}, a)


def _qkv_attention_ref(x, a, ctx):
    v, hq, hk = x["qkv"], a["numHeads"], a["numKVHeads"]
    heads = v.reshape(v.shape[0], hq + 2 * hk, -1)
    parts = {"q": heads[:, :hq], "curk": heads[:, hq:hq + hk], "curv": heads[:, hq + hk:]}
    return _attention_ref({**x, **{k: np.ascontiguousarray(p) for k, p in parts.items()}}, a, ctx)


register(OpSpec(
    "QKVAttention",
    (Param("qkv", IN), Param("k", CACHE), Param("v", CACHE), Param("output", OUT), Param("seqLens", IN),
     Param("numHeads", ATTR, type=int), Param("numKVHeads", ATTR, type=int), Param("scale", ATTR, type=float),
     Param("window", ATTR, optional=True, type=int), Param("softcap", ATTR, optional=True, type=float),
     Param("positionIds", IN, optional=True), Param("sin", IN, optional=True), Param("cos", IN, optional=True),
     Param("rotaryDim", ATTR, optional=True, type=int), Param("kvDtype", ATTR, optional=True, type=str)),
    _qkv_attention_infer, _qkv_attention_ref,
    "FusedAttention over one packed projection: qkv [T, (numHeads + 2 numKVHeads) * headDim] holds q, then "
    "k, then v (what merge_linears + fuse_qkv make of three projections, split and expanded into heads).",
    kv_shape=lambda t, a: (a["numKVHeads"], int(t["qkv"].shape[1]) // (a["numHeads"] + 2 * a["numKVHeads"]))))


def _addto_infer(t, a):
    _float(t["input0"], "input0")
    return _binary(t, a)


register(OpSpec(
    "AddTo",
    (Param("input0", INOUT), Param("input1", IN), Param("alpha", ATTR, default=1.0, type=float)),
    _addto_infer,
    lambda x, a, ctx: x["input0"] + x["input1"] * np.float32(a["alpha"]) if a["alpha"] != 1.0
    else x["input0"] + x["input1"],
    "input0 += input1 * alpha."))

register(OpSpec(
    "MulTo",
    (Param("input0", INOUT), Param("input1", IN)),
    _addto_infer,
    lambda x, a, ctx: x["input0"] * x["input1"],
    "input0 *= input1."))

register(OpSpec(
    "Silu",
    (Param("input", IN), Param("output", OUT)),
    _unary, lambda x, a, ctx: _silu(x["input"]),
    "output = input * sigmoid(input)."))

register(OpSpec(
    "Tanh",
    (Param("input", IN), Param("output", OUT)),
    _unary, lambda x, a, ctx: np.tanh(x["input"]),
    "output = tanh(input) (with Mul, the final logit soft-capping of Gemma 2)."))

register(OpSpec(
    "Gelu",
    (Param("input", IN), Param("output", OUT), Param("approximate", ATTR, default="none", type=str)),
    _unary, lambda x, a, ctx: gelu(x["input"], a["approximate"]),
    "output = GELU(input); approximate='tanh' for the tanh form (GeluNew)."))


def _swiglu_infer(t, a):
    x = t["input"]
    _float(x, "input")
    half = _div(x.shape[-1], 2, f"Swiglu input {fmt_shape(x.shape)}")
    return x.with_shape(x.shape[:-1] + (half,))


def _swiglu_ref(x, a, ctx):
    v = x["input"]
    n = v.shape[-1] // 2
    return _silu(v[..., :n]) * v[..., n:]


register(OpSpec(
    "Swiglu",
    (Param("input", IN), Param("output", OUT)),
    _swiglu_infer, _swiglu_ref,
    "output = silu(input[..., :n]) * input[..., n:], n = half the last dim."))


PROLOGUES = ("none", "rmsnorm", "swiglu")
LINEAR_OPS = ("Linear", "FusedLinear")  # ops whose "weight" is a Linear weight [out, in]


def _fused_linear_infer(t, a):
    x, prologue = t["input"], a.get("prologue", "none")
    _require(prologue in PROLOGUES, f"prologue {prologue!r} must be one of {', '.join(PROLOGUES)}")
    if prologue == "rmsnorm":
        _require("norm" in t and "eps" in a, "the rmsnorm prologue needs the norm weight and eps")
        x = _rmsnorm_infer({"input": x, "weight": t["norm"]}, a)
    elif prologue == "swiglu":
        x = _swiglu_infer({"input": x}, a)
    out = _linear_infer({**t, "input": x}, a)
    if "residual" in t:
        _same(t["residual"], out, "residual and output")
    return out


def _fused_linear_ref(x, a, ctx):
    v, prologue = x["input"], a.get("prologue", "none")
    if prologue == "rmsnorm":
        v = _rmsnorm_ref({"input": v, "weight": x["norm"]}, a, ctx)
    elif prologue == "swiglu":
        v = _swiglu_ref({"input": v}, a, ctx)
    y = _linear_ref({**x, "input": v}, a, ctx)
    return x["residual"] + y if "residual" in x else y


register(OpSpec(
    "FusedLinear",
    (Param("input", IN), Param("weight", WEIGHT), Param("bias", WEIGHT, optional=True), Param("output", OUT),
     Param("norm", WEIGHT, optional=True), Param("residual", IN, optional=True),
     Param("prologue", ATTR, default="none", type=str), Param("eps", ATTR, optional=True, type=float),
     Param("weightOffset", ATTR, optional=True, type=float)),
    _fused_linear_infer, _fused_linear_ref,
    "output = residual + Linear(prologue(input)): prologue 'rmsnorm' is RMSNorm(input, norm, eps, "
    "weightOffset), 'swiglu' is Swiglu(input), 'none' passes input; residual is optional. What the "
    "fuse_norm / fuse_act / fuse_residual passes make of RMSNorm, Swiglu and AddTo around a Linear."))


UNARY_ELEMENTWISE = ("Add", "Mul", "Silu", "Tanh", "Gelu")
BINARY_ELEMENTWISE = ("AddTo", "MulTo")  # the running value is input0, the chain's input1 the other operand


def _chain_steps(a):
    chain = a.get("chain")
    _require(isinstance(chain, list) and chain and all(isinstance(s, dict) and "op" in s for s in chain),
             "chain must be a non-empty list of {op=..., attrs={...}} steps")
    for step in chain:
        _require(step["op"] in UNARY_ELEMENTWISE + BINARY_ELEMENTWISE,
                 f"{step['op']} cannot be a chain step (elementwise: {', '.join(UNARY_ELEMENTWISE + BINARY_ELEMENTWISE)})")
    return [(get_spec(s["op"]), {p.name: p.default for p in get_spec(s["op"]).attr_params if p.default is not None}
             | s.get("attrs", {})) for s in chain]


def _chain_infer(t, a):
    x = t["input"]
    for spec, attrs in _chain_steps(a):
        if spec.name in BINARY_ELEMENTWISE:
            _require("input1" in t, f"step {spec.name} needs the chain's input1")
            x = spec.infer({"input0": x, "input1": t["input1"]}, attrs)
        else:
            x = spec.infer({"input": x}, attrs)
    return x


def _chain_ref(x, a, ctx):
    v = x["input"]
    for spec, attrs in _chain_steps(a):
        args = {"input0": v, "input1": x["input1"]} if spec.name in BINARY_ELEMENTWISE else {"input": v}
        v = spec.reference(args, attrs, ctx)
    return v


register(OpSpec(
    "FusedElementwise",
    (Param("input", IN), Param("output", OUT), Param("input1", IN, optional=True), Param("chain", ATTR, type=list)),
    _chain_infer, _chain_ref,
    "A chain of elementwise ops applied in order, each to the previous result: unary steps "
    "(Add, Mul, Silu, Tanh, Gelu) take it as input, binary ones (AddTo, MulTo) as input0 with the "
    "chain's input1 as input1; chain = [{op=..., attrs={...}}, ...] (what fuse_elementwise makes)."))


def _split_last_infer(t, a):
    x = t["input"]
    _require(x.rank >= 2, f"input must be [T, ...], got {fmt_shape(x.shape)}")
    return x.with_shape((SEQS,) + x.shape[1:])


def _split_last_ref(x, a, ctx):
    ends = np.cumsum(x["seqLens"]) - 1
    return x["input"][ends]


register(OpSpec(
    "SplitLastTokenStates",
    (Param("input", IN), Param("seqLens", IN), Param("output", OUT)),
    _split_last_infer, _split_last_ref,
    "The last token's row of every sequence: [T, H] -> [B, H]."))


def _scalar_infer(t, a):
    _float(t["input"], "input")
    return t["input"]


register(OpSpec(
    "Add",
    (Param("input", IN), Param("v", ATTR, type=float), Param("output", OUT)),
    _scalar_infer, lambda x, a, ctx: x["input"] + np.float32(a["v"]),
    "output = input + v (a constant)."))

register(OpSpec(
    "Mul",
    (Param("input", IN), Param("v", ATTR, type=float), Param("output", OUT)),
    _scalar_infer, lambda x, a, ctx: x["input"] * np.float32(a["v"]),
    "output = input * v (a constant)."))


def _cat_infer(t, a):
    x0, x1 = t["input0"], t["input1"]
    _require(x0.rank == x1.rank and x0.dtype == x1.dtype, f"cannot concatenate {x0} and {x1}")
    ax = _axis(a["axis"], x0.rank)
    for i, (d0, d1) in enumerate(zip(x0.shape, x1.shape)):
        _require(i == ax or d0 == d1, f"{x0} and {x1} differ outside axis {a['axis']}")
    d0, d1 = x0.shape[ax], x1.shape[ax]
    _require(isinstance(d0, int) and isinstance(d1, int), f"cannot concatenate along symbolic dim {d0}")
    return x0.with_shape(x0.shape[:ax] + (d0 + d1,) + x0.shape[ax + 1:])


register(OpSpec(
    "Cat",
    (Param("input0", IN), Param("input1", IN), Param("axis", ATTR, type=int), Param("output", OUT)),
    _cat_infer, lambda x, a, ctx: np.concatenate([x["input0"], x["input1"]], axis=a["axis"]),
    "output = concatenation of input0 and input1 along axis."))


def _split_infer(t, a):
    x = t["input"]
    ax = _axis(a["axis"], x.rank)
    dim = x.shape[ax]
    _require(isinstance(dim, int), f"cannot split the symbolic dim {dim}")
    _require(0 <= a["start"] < a["end"] <= dim, f"range [{a['start']}, {a['end']}) is not inside [0, {dim})")
    return x.with_shape(x.shape[:ax] + (a["end"] - a["start"],) + x.shape[ax + 1:])


def _split_ref(x, a, ctx):
    v = x["input"]
    index = [slice(None)] * v.ndim
    index[a["axis"]] = slice(a["start"], a["end"])
    return np.ascontiguousarray(v[tuple(index)])


register(OpSpec(
    "Split",
    (Param("input", IN), Param("axis", ATTR, type=int), Param("start", ATTR, type=int),
     Param("end", ATTR, type=int), Param("output", OUT)),
    _split_infer, _split_ref,
    "output = input[start:end] along axis."))


def _repeat_infer(t, a):
    x = t["input"]
    ax = _axis(a["axis"], x.rank)
    dim = x.shape[ax]
    _require(isinstance(dim, int) and a["repeatTimes"] > 0, f"cannot repeat dim {dim} {a['repeatTimes']} times")
    return x.with_shape(x.shape[:ax] + (dim * a["repeatTimes"],) + x.shape[ax + 1:])


def _repeat_ref(x, a, ctx):
    v = x["input"]
    reps = [1] * v.ndim
    reps[a["axis"]] = a["repeatTimes"]
    return np.tile(v, reps)


register(OpSpec(
    "Repeat",
    (Param("input", IN), Param("axis", ATTR, type=int), Param("repeatTimes", ATTR, type=int), Param("output", OUT)),
    _repeat_infer, _repeat_ref,
    "output = repeatTimes copies of input placed one after another along axis."))


def _print_ref(x, a, ctx):
    v = x["input"]
    name = ctx.names.get("input", "?")
    flat = v.reshape(-1)
    print(f"[Print] {name} {v.dtype}{list(v.shape)} sum={float(flat.sum()):.6g} "
          f"first={np.array2string(flat[:8], precision=5)}", file=sys.stderr)
    return None


register(OpSpec(
    "Print",
    (Param("input", IN),),
    lambda t, a: None, _print_ref,
    "Prints a value's name, shape, sum and first elements to stderr (debugging).",
    side_effect=True))


def _exit_ref(x, a, ctx):
    raise OpExit("the model file's Exit op was reached")


register(OpSpec(
    "Exit", (), lambda t, a: None, _exit_ref,
    "Stops the run here (debugging).", side_effect=True))
