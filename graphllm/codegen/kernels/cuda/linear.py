"""CUDA (Fused)Linear: y[T, N] = prologue(x)[T, K] @ W[N, K]^T (+ b) (+ residual), W dequantized inside the dot.

The weights stay in the CPU kernels' packed layouts (graphllm/layouts.py: float panels
[N/nb, K, nb] of float32/float16/bfloat16, block-quantized records of q8_0/q4_0/q4_1 and grouped
variants), so one packer serves both targets; each weight element is widened or decoded to float32
where the dot product reads it (`stages.float_weight`, `stages.quantized_weight`). The schedule is
`sched.schedule_gpu`'s: one warp per output element reduces over K (a GEMV per token), the bias and
residual added by the same thread; a prologue (RMSNorm statistics or Swiglu) is folded into the
dot's read of x, its row statistics a launch of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from graphllm.codegen.fusion import PLAIN, Fusion, fusion_of
from graphllm.codegen.kernels.cuda.sched import KNOBS, schedule_gpu
from graphllm.codegen.kernels.stages import linear_func, packed_weight
from graphllm.codegen.lower import Kernel, LowerRequest, lowering


@lowering("Linear", target="cuda", knobs=KNOBS)
def lower_linear(req: LowerRequest, knobs: Mapping[str, Any], fusion: Fusion = PLAIN) -> Kernel:
    """(Fused)Linear over a 2-D float32 input with a float or block-quantized weight."""
    t = req.types
    if t["input"].rank != 2 or t["input"].dtype != "float32":
        raise NotImplementedError(f"Linear lowering needs a 2-D float32 input, got {t['input']}")
    n, k = t["weight"].shape
    weight, pack = packed_weight(k, n, t["weight"].dtype)
    bias = "bias" in t
    func = schedule_gpu(linear_func(k, n, bias, weight, 1, fusion), knobs)
    return Kernel(func, fusion.params(bias), packs={"weight": pack})


@lowering("FusedLinear", target="cuda", knobs=KNOBS)
def lower_fused_linear(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """Linear(prologue(input)) (+ residual); in place over the residual (each element read by its writer)."""
    fusion = fusion_of(req)
    return replace(lower_linear(req, knobs, fusion), inplace="residual" if fusion.residual else None)
