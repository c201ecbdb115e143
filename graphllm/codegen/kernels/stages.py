"""TE stages every target's kernels share: each op's formula (its numpy reference in dsl/ops.py) as TE computes.

A stage builder takes TE tensors and returns the TE tensor of its result; the targets differ only in
how they schedule the stages (kernels/cpu: vector rows and register tiles; kernels/cuda: thread
bindings). Stages end in a tensor named "out" unless a caller names it otherwise.

exp and erf: `topi.fast_exp` (a Cephes-style polynomial, ~1e-7 relative error, clamped to +-88.4 so
that x / (1 + exp(-x)) stays finite) instead of libm calls; erf is the reference's own Abramowitz &
Stegun 7.1.26 formula with that exp. The tanh GELU is computed as x * sigmoid(2u), which equals
0.5 * x * (1 + tanh(u)) and needs one exp; Tanh likewise is 1 - 2 / (1 + exp(2x)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from graphllm.codegen.fusion import PLAIN, Fusion
from graphllm.codegen.kernels.common import f32, inv_root_mean, rope_rotate, widen
from graphllm.dsl.ops import BINARY_ELEMENTWISE, get_spec
from graphllm.dsl.qformats import qformat
from graphllm.layouts import QROWS, STORAGE, pack_block, packer_name, qlayout

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

# Abramowitz & Stegun 7.1.26, as in ops._erf: erf(z) = 1 - t * poly(t) * exp(-z^2), t = 1/(1 + P z).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT1_2 = 0.7071067811865476
_SQRT2_PI = 0.7978845608028654
_GELU_TANH_C = 0.044715

# ------------------------------------------------------------------ elementwise


def _with_exp(shape: tuple[Any, ...], arg: Callable[..., Any], combine: Callable[..., Any], name: str = "out") -> Any:
    """Return out[i] = combine(exp(arg(i)), i) with a vectorizable exp (topi.fast_exp, inlined later)."""
    from tvm import te, topi

    e = topi.fast_exp(te.compute(shape, arg, name=f"{name}_exp_arg"))
    return te.compute(shape, lambda *i: combine(e(*i), *i), name=name)


def _map(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stage builder out[i] = fn(x0[i], x1[i], ...) over same-shaped inputs."""

    def stage(*xs: Any, name: str = "out") -> Any:
        """The TE compute of fn."""
        from tvm import te

        return te.compute(xs[0].shape, lambda *i: fn(*(x(*i) for x in xs)), name=name)
    return stage


def _silu(x: Any, name: str = "out") -> Any:
    """input / (1 + exp(-input))."""
    return _with_exp(x.shape, lambda *i: -x(*i), lambda e, *i: x(*i) / (f32(1.0) + e), name)


def _tanh(x: Any, name: str = "out") -> Any:
    """tanh(input) = 1 - 2 / (1 + exp(2 * input))."""
    return _with_exp(x.shape, lambda *i: f32(2.0) * x(*i), lambda e, *i: f32(1.0) - f32(2.0) / (f32(1.0) + e), name)


def stage_builder(op: str, attrs: dict[str, Any]) -> Callable[..., Any]:
    """The TE stage builder of one elementwise op (its numpy reference's formula): f(*inputs, name=...) -> tensor.

    Shared by the single-op kernels and FusedElementwise chains (fuse_elementwise).
    """
    if op == "AddTo":
        alpha = float(attrs["alpha"])
        return _map(lambda a, b: a + b) if alpha == 1.0 else _map(lambda a, b: a + b * f32(alpha))
    if op == "MulTo":
        return _map(lambda a, b: a * b)
    if op == "Add":
        v = f32(float(attrs["v"]))
        return _map(lambda a: a + v)
    if op == "Mul":
        v = f32(float(attrs["v"]))
        return _map(lambda a: a * v)
    if op == "Silu":
        return _silu
    if op == "Tanh":
        return _tanh
    if op == "Gelu":
        approximate = attrs["approximate"]
        if approximate not in ("none", "tanh"):
            raise NotImplementedError(f"Gelu: approximate={approximate!r} is not 'none' or 'tanh'")
        return _gelu_tanh if approximate == "tanh" else _gelu_erf
    raise NotImplementedError(f"{op} is not an elementwise op")


def chain_stages(chain: Sequence[dict[str, Any]], x: Any, *extra: Any) -> Any:
    """A FusedElementwise chain's TE stages: each step reads the previous one (and `extra` if binary); the last is "out"."""
    for k, step in enumerate(chain):
        spec = get_spec(step["op"])
        attrs = {p.name: p.default for p in spec.attr_params if p.default is not None} | step.get("attrs", {})
        name = "out" if k == len(chain) - 1 else f"s{k}"
        binary = step["op"] in BINARY_ELEMENTWISE
        x = stage_builder(step["op"], attrs)(x, *(extra if binary else ()), name=name)
    return x


def swiglu_stage(v: Any, name: str = "out") -> Any:
    """The Swiglu TE stage on the output's shape: gate at column j, up at column j + n (FusedLinear's prologue too)."""
    n = int(v.shape[-1]) // 2

    def up(*i: Any) -> Any:
        """The up half at output index i."""
        return v(*i[:-1], i[-1] + n)

    shape = (*v.shape[:-1], n)
    return _with_exp(shape, lambda *i: -v(*i), lambda e, *i: v(*i) / (f32(1.0) + e) * up(*i), name)


def _gelu_tanh(x: Any, name: str = "out") -> Any:
    """0.5 * x * (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) * (x + 0.044715 x^3)."""

    def minus_2u(*i: Any) -> Any:
        """-2u at index i."""
        v = x(*i)
        return f32(-2.0 * _SQRT2_PI) * (v + f32(_GELU_TANH_C) * v * v * v)

    return _with_exp(x.shape, minus_2u, lambda e, *i: x(*i) / (f32(1.0) + e), name)


def _gelu_erf(x: Any, name: str = "out") -> Any:
    """0.5 * x * (1 + erf(x / sqrt(2))), erf as in ops._erf (A&S 7.1.26)."""
    from tvm import tirx

    def minus_z2(*i: Any) -> Any:
        """-z^2 at index i, z = x / sqrt(2)."""
        z = x(*i) * f32(_SQRT1_2)
        return -(z * z)

    def combine(e: Any, *i: Any) -> Any:
        """GELU from exp(-z^2) at index i."""
        v = x(*i)
        z = v * f32(_SQRT1_2)
        t = f32(1.0) / (f32(1.0) + f32(_ERF_P) * tirx.abs(z))
        poly = f32(_ERF_A[-1])
        for a in reversed(_ERF_A[:-1]):
            poly = poly * t + f32(a)
        tail = t * poly * e  # 1 - |erf(z)|
        erf = tirx.Select(z < f32(0.0), tail - f32(1.0), f32(1.0) - tail)
        return f32(0.5) * v * (f32(1.0) + erf)

    return _with_exp(x.shape, minus_z2, combine, name)


# ------------------------------------------------------------------ row normalizations


def _row_sum(shape: tuple[Any, ...], term: Any, name: str) -> Any:
    """Return s[r] = sum over the last axis k of term(*r, k), a TE reduction over one row."""
    from tvm import te

    k = te.reduce_axis((0, shape[-1]), name="k")
    return te.compute(shape[:-1], lambda *r: te.sum(term(*r, k), axis=k), name=name)


def _rsqrt_mean(total: Any, n: int, eps: float, name: str) -> Any:
    """Return 1 / sqrt(total / n + eps) per row (the reference's mean, then eps, then sqrt)."""
    from tvm import te

    return te.compute(total.shape, lambda *r: inv_root_mean(total(*r), n, eps), name=name)


def rmsnorm_stages(x: Any, w: Any, eps: float, offset: float = 0.0, name: str = "out") -> Any:
    """The RMSNorm TE stages over the last axis ("sumsq", "inv_rms", then `name`); FusedLinear's prologue too."""
    from tvm import te

    def scale(c: Any) -> Any:
        """The weight of column c, offset as in the reference."""
        return w(c) + f32(offset) if offset else w(c)

    sq = _row_sum(x.shape, lambda *i: x(*i) * x(*i), "sumsq")
    inv = _rsqrt_mean(sq, int(x.shape[-1]), eps, "inv_rms")
    return te.compute(x.shape, lambda *i: x(*i) * inv(*i[:-1]) * scale(i[-1]), name=name)


def layernorm_stages(x: Any, w: Any, bias: Any | None, eps: float) -> Any:
    """The LayerNorm TE stages over the last axis: "sum", "mean", "sumsq" of deviations, "rstd", then "out"."""
    from tvm import te

    n = int(x.shape[-1])
    total = _row_sum(x.shape, x, "sum")
    mean = te.compute(total.shape, lambda *r: total(*r) / f32(float(n)), name="mean")

    def dev(*i: Any) -> Any:
        """x - mean at index i."""
        return x(*i) - mean(*i[:-1])

    sq = _row_sum(x.shape, lambda *i: dev(*i) * dev(*i), "sumsq")
    rstd = _rsqrt_mean(sq, n, eps, "rstd")

    def out(*i: Any) -> Any:
        """The normalized, scaled (and shifted) value at index i."""
        y = dev(*i) * rstd(*i[:-1]) * w(i[-1])
        return y + bias(i[-1]) if bias is not None else y

    return te.compute(x.shape, out, name="out")


# ------------------------------------------------------------------ gathers, shape ops, RoPE


def gather_rows(table: Any, index: Any) -> Any:
    """Return out[b, ...] = table[index[b], ...], the TE row gather."""
    from tvm import te

    shape = (index.shape[0], *table.shape[1:])
    return te.compute(shape, lambda b, *rest: table[(index[b], *rest)], name="out")


def at(index: tuple[Any, ...], axis: int, value: Any) -> tuple[Any, ...]:
    """Return `index` with its `axis` entry replaced by `value`."""
    return (*index[:axis], value, *index[axis + 1 :])


def cat_stage(x0: Any, x1: Any, axis: int) -> Any:
    """out = concatenate(x0, x1) along axis (a source test per element; the CPU schedule partitions it away)."""
    from tvm import te

    first = x0.shape[axis]

    def value(*i: Any) -> Any:
        """out[i]."""
        return te.if_then_else(i[axis] < first, x0(*i), x1(*at(i, axis, i[axis] - first)))

    shape = at(tuple(x0.shape), axis, x0.shape[axis] + x1.shape[axis])
    return te.compute(shape, value, name="out")


def split_stage(x: Any, axis: int, start: int, end: int) -> Any:
    """out = x[start:end] along axis."""
    from tvm import te

    shape = at(tuple(x.shape), axis, end - start)
    return te.compute(shape, lambda *i: x(*at(i, axis, i[axis] + start)), name="out")


def repeat_stage(x: Any, axis: int, times: int) -> Any:
    """out = `times` copies of x one after another along axis (numpy.tile semantics)."""
    from tvm import te

    size = int(x.shape[axis])
    shape = at(tuple(x.shape), axis, size * times)
    return te.compute(shape, lambda *i: x(*at(i, axis, i[axis] % size)), name="out")


def cast_stage(x: Any, dtype: str) -> Any:
    """out = x cast to dtype."""
    from tvm import te

    return te.compute(x.shape, lambda *i: x(*i).astype(dtype), name="out")


def rope_value(x: Callable[..., Any], t: Any, h: Any, i: Any, p: Any, sin: Callable[..., Any],
               cos: Callable[..., Any], r: int) -> Any:
    """Element (t, h, i) of rotate-half RoPE of x(t, h, i) at position p, the tables read as sin(p, i) and cos(p, i)
    (pairs i, i + r; dims from 2r on copied)."""
    from tvm import te

    first = rope_rotate(x(t, h, i), x(t, h, i + r), cos(p, i), sin(p, i), second=False)
    second = rope_rotate(x(t, h, i), x(t, h, i - r), cos(p, i - r), sin(p, i - r), second=True)
    return te.if_then_else(i < r, first, te.if_then_else(i < 2 * r, second, x(t, h, i)))


def rope_stage(x: Any, pos: Any, sin: Any, cos: Any, r: int) -> Any:
    """Rotate-half RoPE of x [T, H, D] at each token's position."""
    from tvm import te

    return te.compute(x.shape, lambda t, h, i: rope_value(x, t, h, i, pos[t], sin, cos, r), name="out")


def packed_rows(ids: Any, hidden: int, weight_at: Callable[[Any, Any], Any], dtype: str = "float32") -> Any:
    """Return out[t, h] = weight_at(ids[t], h): an Embedding over a packed table (float panels or quantized records)."""
    from tvm import te

    return te.compute((ids.shape[0], hidden), lambda t, h: weight_at(ids[t], h).astype(dtype), name="out")


# ------------------------------------------------------------------ Linear


def prologue_stage(x: Any, k: int, fusion: Fusion) -> tuple[Any, list[Any]]:
    """Return (the matmul's input stage, its extra placeholders): x itself, or the RMSNorm / Swiglu
    kernels' own TE stages over x, ending in a stage named "xn"."""
    from tvm import te

    if fusion.prologue == "rmsnorm":
        g = te.placeholder((k,), "float32", name="g")
        return rmsnorm_stages(x, g, fusion.eps, fusion.offset, name="xn"), [g]
    if fusion.prologue == "swiglu":
        return swiglu_stage(x, name="xn"), []
    return x, []


def float_weight(k: int, n: int, dtype: str) -> tuple[Any, Callable[[Any, Any], Any]]:
    """The packed float weight [N/nb, K, nb] of `dtype` (graphllm.layouts.pack_weight) and w(j, r) as float32."""
    from tvm import te

    nb = pack_block(n)
    w = te.placeholder((n // nb, k, nb), STORAGE[dtype], name="w")
    return w, lambda j, r: widen(w[j // nb, r, j % nb], dtype)


def quantized_weight(k: int, n: int, dtype: str) -> tuple[Any, Callable[[Any, Any], Any]]:
    """The packed block-quantized records (graphllm.layouts.pack_qweight) and w(j, r) = d * (u + lo) (+ m) as float32.

    Element e of row j's block kb is slot e // W of word e % W; the fp16 header fields are read as
    16-bit halves of the record's trailing uint32 words.
    """
    from tvm import te, tirx

    lay = qlayout(dtype)
    group, words, bits = lay.fmt.group, lay.words, lay.bits
    w = te.placeholder((-(-n // QROWS), k // group, lay.record), "uint32", name="w")

    def half(rb: Any, kb: Any, field: int, row: Any) -> Any:
        """Header field (0: d, 1: m) of row `row` of a record, as float32."""
        index = 2 * QROWS * words + field * QROWS + row
        word = w[rb, kb, index // 2] >> ((index % 2) * 16).astype("uint32")
        return tirx.reinterpret("float16", (word & tirx.const(0xFFFF, "uint32")).astype("uint16")).astype("float32")

    def value(j: Any, r: Any) -> Any:
        """The weight at row j, column r."""
        rb, row, kb, e = j // QROWS, j % QROWS, r // group, r % group
        word = w[rb, kb, e % words * QROWS + row]
        code = (word >> ((e // words) * bits).astype("uint32")) & tirx.const((1 << bits) - 1, "uint32")
        q = code.astype("int32").astype("float32") + f32(float(lay.lo))
        v = q * half(rb, kb, 0, row)
        return v + half(rb, kb, 1, row) if lay.halves == 2 else v

    return w, value


def packed_weight(k: int, n: int, dtype: str) -> tuple[tuple[Any, Callable[[Any, Any], Any]], str]:
    """The packed weight [N, K] of a float or block-quantized `dtype` (placeholder, w(j, r)) and its packer's name."""
    if qformat(dtype) is not None:
        return quantized_weight(k, n, dtype), qlayout(dtype).pack_name()
    if dtype in STORAGE:
        return float_weight(k, n, dtype), packer_name(dtype)
    raise NotImplementedError(f"weights of dtype {dtype} are not lowered (float32, float16, bfloat16, block formats are)")


def linear_func(k: int, n: int, bias: bool, weight: tuple[Any, Callable[[Any, Any], Any]], rows: int = 1,
                fusion: Fusion = PLAIN) -> PrimFunc:
    """The unscheduled Linear PrimFunc (x, w, [b,] [g,] [res,] y): [prologue,] accumulator "acc" over T padded to
    `rows` (padded rows re-read the last real row), then the epilogue "y" = acc (+ b) (+ residual)."""
    from tvm import te

    w, weight_at = weight
    t_len = te.var("T", "int64")
    x = te.placeholder((t_len, 2 * k if fusion.prologue == "swiglu" else k), "float32", name="x")
    r = te.reduce_axis((0, k), name="k")
    t_pad = (t_len + rows - 1) // rows * rows
    xin, extra = prologue_stage(x, k, fusion)

    def x_row(t: Any) -> Any:
        """Row of x feeding accumulator row t: padded rows re-read the last real row."""
        return t if rows == 1 else te.min(t, t_len - 1)

    acc = te.compute((t_pad, n), lambda t, j: te.sum(xin[x_row(t), r] * weight_at(j, r), axis=r), name="acc")
    b = [te.placeholder((n,), "float32", name="b")] if bias else []
    res = [te.placeholder((t_len, n), "float32", name="res")] if fusion.residual else []

    def out(t: Any, j: Any) -> Any:
        """acc (+ b), added to the residual row if fused."""
        v = acc[t, j] + b[0][j] if b else acc[t, j]
        return res[0][t, j] + v if res else v

    y = te.compute((t_len, n), out, name="y")
    return te.create_prim_func([x, w, *b, *extra, *res, y])
