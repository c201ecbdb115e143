"""Row normalizations over the last axis: RMSNorm (optionally scaled by weight + offset, Gemma's
1 + weight) and LayerNorm (with or without bias), float32.

One row per parallel task (large-T variant) or a serial row loop (small T). The row statistics
are sums rfactor-ed into up to 32 vector partial sums (`sched.schedule_row_reductions`); LayerNorm
makes two passes (mean, then the mean of squared deviations) exactly as its reference does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphllm.codegen.kernels.common import f32, inv_root_mean
from graphllm.codegen.kernels.cpu.sched import REDUCE_KNOBS, row_kernel
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32


def _norm_kernel(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...], reductions: tuple[str, ...],
                 body: Any) -> Kernel:
    """Lower out = body(*inputs) (TE stages whose `reductions` are row sums) to a row Kernel."""
    require_float32(req, *ports)
    args = [(p, req.types[p]) for p in ports]
    return row_kernel(req, args, body, knobs, axis=req.output.rank - 1, reductions=reductions)


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


@lowering("RMSNorm", knobs=REDUCE_KNOBS)
def lower_rmsnorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """(x * (1 / sqrt(mean(x^2) + eps))) * (weight + weightOffset) over the last axis."""
    attrs = attrs_of(req)
    eps, offset = float(attrs["eps"]), float(attrs.get("weightOffset") or 0.0)
    return _norm_kernel(req, knobs, ("input", "weight"), ("sumsq",), lambda x, w: rmsnorm_stages(x, w, eps, offset))


@lowering("LayerNorm", knobs=REDUCE_KNOBS)
def lower_layernorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """(x - mean) / sqrt(var + eps) * weight (+ bias) over the last axis; bias if the node has one."""
    eps, n = float(attrs_of(req)["eps"]), int(req.output.shape[-1])
    has_bias = "bias" in req.types

    def body(x: Any, w: Any, *bias: Any) -> Any:
        """The LayerNorm TE stages (two-pass variance)."""
        from tvm import te

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
            return y + bias[0](i[-1]) if bias else y

        return te.compute(x.shape, out, name="out")

    ports = ("input", "weight", "bias") if has_bias else ("input", "weight")
    return _norm_kernel(req, knobs, ports, ("sum", "sumsq"), body)
