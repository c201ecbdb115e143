"""Shape ops that move data: Cat, Split, Repeat, and DataTypeAs when it changes the dtype (a cast).

All are row copies: the loops before the op's axis are the rows, the rest is fused and vectorized.
Cat's two sources are loop-partitioned apart and Repeat's copies are separate tiles, so the
inner loops are plain vector copies without per-element tests or modulos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from graphllm.codegen.kernels.cpu.sched import ROW_KNOBS, row_kernel
from graphllm.codegen.kernels.stages import cast_stage, cat_stage, repeat_stage, split_stage
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering


def _axis(req: LowerRequest, port: str) -> int:
    """Return the node's `axis` attribute as a non-negative axis of the `port` input."""
    return int(attrs_of(req)["axis"]) % req.types[port].rank


@lowering("Cat", knobs=ROW_KNOBS)
def lower_cat(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out = concatenate(input0, input1) along axis."""
    axis = _axis(req, "input0")
    first = int(req.types["input0"].shape[axis])
    inner = math.prod(int(d) for d in req.output.shape[axis + 1 :])

    def body(x0: Any, x1: Any) -> Any:
        """The concatenation; the source test folds away once the row is partitioned at the seam."""
        return cat_stage(x0, x1, axis)

    args = [(p, req.types[p]) for p in ("input0", "input1")]
    return row_kernel(req, args, body, knobs, axis=axis, cuts=(first * inner,))


@lowering("Split", knobs=ROW_KNOBS)
def lower_split(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out = input[start:end] along axis."""
    attrs = attrs_of(req)
    axis, start, end = _axis(req, "input"), int(attrs["start"]), int(attrs["end"])

    def body(x: Any) -> Any:
        """The slice."""
        return split_stage(x, axis, start, end)

    return row_kernel(req, [("input", req.types["input"])], body, knobs, axis=axis)


@lowering("Repeat", knobs=ROW_KNOBS)
def lower_repeat(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out = repeatTimes copies of input one after another along axis (numpy.tile semantics)."""
    axis, times = _axis(req, "input"), int(attrs_of(req)["repeatTimes"])

    def body(x: Any) -> Any:
        """The tiling; the modulo folds away once the row is split into its copies."""
        return repeat_stage(x, axis, times)

    return row_kernel(req, [("input", req.types["input"])], body, knobs, axis=axis, repeats=times)


@lowering("DataTypeAs", knobs=ROW_KNOBS)
def lower_datatype_as(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out = input cast to input1's dtype; input1 only names the dtype, so it is not a parameter."""
    dtype = req.output.dtype

    def body(x: Any) -> Any:
        """The cast."""
        return cast_stage(x, dtype)

    return row_kernel(req, [("input", req.types["input"])], body, knobs)
