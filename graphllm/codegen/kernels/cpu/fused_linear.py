"""FusedLinear: a Linear with an input prologue (RMSNorm or Swiglu) and a residual-add epilogue, one kernel.

The prologue is applied where the kernel already reads x (the GEMV's pre-scaled copy of its token
tile; the GEMM transforms x once into a [T, K] workspace first); the epilogue adds the residual
row as the result is stored (in place: the output may take over the residual's buffer, each element
is read by the thread that writes it). Block-quantized weights use qlinear's kernels, float ones linear's;
the description both read (`Fusion`) lives in graphllm/codegen/fusion.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from graphllm.codegen.fusion import fusion_of
from graphllm.codegen.kernels.cpu.linear import linear_knobs, lower_linear
from graphllm.codegen.lower import Kernel, LowerRequest, lowering


@lowering("FusedLinear", knobs=linear_knobs)
def lower_fused_linear(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """Linear(prologue(input)) (+ residual) with the weight's kernel family (float or block-quantized)."""
    fusion = fusion_of(req)
    return replace(lower_linear(req, knobs, fusion), inplace="residual" if fusion.residual else None)
