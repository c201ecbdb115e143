"""LlamaRotatePosition2D: rotate-half RoPE with per-token positions, into a new buffer (float32).

out[t, h, i]      = x[t, h, i] * cos[p, i] - x[t, h, i + r] * sin[p, i]      for i < r
out[t, h, i + r]  = x[t, h, i + r] * cos[p, i] + x[t, h, i] * sin[p, i]      for i < r
out[t, h, i]      = x[t, h, i]                                               for i >= 2r
with p = positionIds[t] and r = rotaryDim (it counts pairs, as in fastllm). The three regions of
a head are loop-partitioned apart, so each is a branch-free vector loop over i.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphllm.codegen.kernels.cpu.sched import ROW_KNOBS, row_kernel
from graphllm.codegen.kernels.stages import rope_stage
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32


@lowering("LlamaRotatePosition2D", knobs=ROW_KNOBS)
def lower_rope(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """Rotate pairs (i, i + rotaryDim) of every head by the angle tables at each token's position."""
    require_float32(req, "input", "sin", "cos")
    r = int(attrs_of(req)["rotaryDim"])
    head_dim = int(req.types["input"].shape[2])

    def body(x: Any, pos: Any, sin: Any, cos: Any) -> Any:
        """The RoPE formula; the region tests fold away once the i loop is partitioned."""
        return rope_stage(x, pos, sin, cos, r)

    cuts = (r, 2 * r) if 2 * r < head_dim else (r,)
    args = [(p, req.types[p]) for p in ("input", "positionIds", "sin", "cos")]
    return row_kernel(req, args, body, knobs, axis=2, cuts=cuts)
