"""Row normalizations over the last axis: RMSNorm (optionally scaled by weight + offset, Gemma's
1 + weight) and LayerNorm (with or without bias), float32.

One row per parallel task (large-T variant) or a serial row loop (small T). The row statistics
are sums rfactor-ed into up to 32 vector partial sums (`sched.schedule_row_reductions`); LayerNorm
makes two passes (mean, then the mean of squared deviations) exactly as its reference does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphllm.codegen.kernels.cpu.sched import REDUCE_KNOBS, row_kernel
from graphllm.codegen.kernels.stages import layernorm_stages, rmsnorm_stages
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32


def _norm_kernel(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...], reductions: tuple[str, ...],
                 body: Any) -> Kernel:
    """Lower out = body(*inputs) (TE stages whose `reductions` are row sums) to a row Kernel."""
    require_float32(req, *ports)
    args = [(p, req.types[p]) for p in ports]
    return row_kernel(req, args, body, knobs, axis=req.output.rank - 1, reductions=reductions)


@lowering("RMSNorm", knobs=REDUCE_KNOBS)
def lower_rmsnorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """(x * (1 / sqrt(mean(x^2) + eps))) * (weight + weightOffset) over the last axis."""
    attrs = attrs_of(req)
    eps, offset = float(attrs["eps"]), float(attrs.get("weightOffset") or 0.0)
    return _norm_kernel(req, knobs, ("input", "weight"), ("sumsq",), lambda x, w: rmsnorm_stages(x, w, eps, offset))


@lowering("LayerNorm", knobs=REDUCE_KNOBS)
def lower_layernorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """(x - mean) / sqrt(var + eps) * weight (+ bias) over the last axis; bias if the node has one."""
    eps = float(attrs_of(req)["eps"])
    has_bias = "bias" in req.types

    def body(x: Any, w: Any, *bias: Any) -> Any:
        """The LayerNorm TE stages (two-pass variance)."""
        return layernorm_stages(x, w, bias[0] if bias else None, eps)

    ports = ("input", "weight", "bias") if has_bias else ("input", "weight")
    return _norm_kernel(req, knobs, ports, ("sum", "sumsq"), body)
