"""Math every target's kernels share, written once as TIR expressions: constants, exp, inverse root,
16-bit weight widening, the RoPE rotation.

Each function builds a PrimExpr from PrimExprs (TE tensor reads, TIR buffer loads, TVMScript values),
so TE computes, IRBuilder bodies and TVMScript macros call the same formula.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tvm.tirx import Expr


def f32(value: float) -> Expr:
    """Return a float32 TIR constant, so that constant arithmetic stays in float32."""
    from tvm import tirx

    return tirx.const(value, "float32")


def fast_exp(x: Expr) -> Expr:
    """Return a float32 exp(x) PrimExpr that vectorizes (Cephes polynomial, ~2 ulp; x <= -87 -> ~0).

    LLVM lowers tirx.exp to one scalar libm call per lane (25% of attention time); this is FMAs.
    """
    from tvm import tirx

    x = tirx.max(tirx.min(x, f32(88.0)), f32(-87.0))
    n = tirx.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(c)
    p = p * r * r + r + f32(1.0)
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127, 23))
    return p * two_n


def inv_root_mean(total: Expr, n: int, eps: float) -> Expr:
    """1 / sqrt(total / n + eps): the reference's mean, then eps, then the root (RMSNorm, LayerNorm)."""
    from tvm import tirx

    return f32(1.0) / tirx.sqrt(total / f32(float(n)) + f32(eps))


def widen(value: Any, dtype: str) -> Expr:
    """Return a stored weight or KV-cache element of `dtype` as float32 (bfloat16: its bits shifted into a float32's top
    half)."""
    from tvm import tirx

    if dtype == "bfloat16":
        return tirx.reinterpret("float32", value.astype("uint32") << tirx.const(16, "uint32"))
    return value.astype("float32")


def narrow(value: Any, dtype: str) -> Expr:
    """Return a float32 value as a KV cache of `dtype` stores it (float16: rounded to nearest even); widen's inverse."""
    from tvm import tirx

    return value if dtype == "float32" else tirx.Cast(dtype, value)


def rope_rotate(x: Expr, partner: Expr, cos: Expr, sin: Expr, second: bool) -> Expr:
    """One element of rotate-half RoPE: x * cos - partner * sin in the first half, x * cos + partner * sin in the second.

    For i < rotaryDim, x = v[i] and partner = v[i + rotaryDim]; in the second half x = v[i + rotaryDim]
    and partner = v[i]; cos and sin are the tables at (position, i).
    """
    return x * cos + partner * sin if second else x * cos - partner * sin
