"""What a FusedLinear adds around its matmul (prologue, residual epilogue): the description every Linear kernel reads."""

from __future__ import annotations

from dataclasses import dataclass

from .lower import LowerRequest, attrs_of


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
