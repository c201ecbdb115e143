"""FusedLinear: a Linear with an input prologue (RMSNorm or Swiglu) and a residual-add epilogue, one kernel.

The prologue is applied where the kernel already reads x (the GEMV's pre-scaled copy of its token
tile; the GEMM transforms x once into a [T, K] workspace first); the epilogue adds the residual
row as the result is stored (in place: the output may take over the residual's buffer, each element
is read by the thread that writes it). Block-quantized weights use qlinear's kernels, float ones linear's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from graphllm.codegen.kernels.cpu.sched import attrs_of
from graphllm.codegen.lower import Kernel, LowerRequest, lowering


@dataclass(frozen=True)
class Fusion:
    """What a FusedLinear adds around the matmul: an input prologue and a residual epilogue.

    prologue 'rmsnorm': x becomes RMSNorm(x, norm, eps, offset); 'swiglu': x [T, 2K] becomes
    silu(x[:, :K]) * x[:, K:]; residual: y = residual + W x (+ b).
    """

    prologue: str = "none"
    eps: float = 0.0
    offset: float = 0.0
    residual: bool = False

    def params(self, bias: bool) -> tuple[str, ...]:
        """The kernel parameters (op ports) in PrimFunc order."""
        return ("input", "weight", *(("bias",) if bias else ()), *(("norm",) if self.prologue == "rmsnorm" else ()),
                *(("residual",) if self.residual else ()), "out")


PLAIN = Fusion()


def fusion_of(req: LowerRequest) -> Fusion:
    """The prologue/epilogue a FusedLinear node asks for."""
    a = attrs_of(req)
    return Fusion(a.get("prologue") or "none", float(a.get("eps") or 0.0), float(a.get("weightOffset") or 0.0),
                  "residual" in req.types)


@lowering("FusedLinear")
def lower_fused_linear(req: LowerRequest) -> Kernel:
    """Linear(prologue(input)) (+ residual) with the weight's kernel family (float or block-quantized)."""
    from graphllm.codegen.kernels.cpu.linear import lower_linear  # linear's kernels take a Fusion from here

    fusion = fusion_of(req)
    return replace(lower_linear(req, fusion), inplace="residual" if fusion.residual else None)
