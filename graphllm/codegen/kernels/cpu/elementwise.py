"""Elementwise kernels: AddTo, MulTo, Add, Mul, Silu, Gelu, Swiglu, Tanh, and chains of them (FusedElementwise).

Each op is a TE compute with the formula of its numpy reference in ops.py (kernels/stages.py, shared
with the other targets), scheduled by `sched.schedule_rows` (row loop parallel in the large-T variant,
row vectorized by 8). exp is a polynomial (`topi.fast_exp`): LLVM lowers `tirx.exp` and `tirx.erf` to
one scalar libm call per vector lane, which undoes the vectorization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from graphllm.codegen.kernels.cpu.sched import ROW_KNOBS, row_kernel
from graphllm.codegen.kernels.stages import chain_stages, stage_builder, swiglu_stage
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32


def _elementwise(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...], body: Callable[..., Any]) -> Kernel:
    """Lower out = body(*inputs) (float32 ports, a TE tensor named "out") to a row Kernel."""
    require_float32(req, *ports)
    return row_kernel(req, [(p, req.types[p]) for p in ports], body, knobs)


def _lower_single(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...],
                  inplace: str | None = None) -> Kernel:
    """One elementwise op as a row kernel."""
    stage = stage_builder(req.op, attrs_of(req))
    return replace(_elementwise(req, knobs, ports, lambda *xs: stage(*xs)), inplace=inplace)


@lowering("AddTo", knobs=ROW_KNOBS)
def lower_add_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 + input1 * alpha (alpha == 1: a plain add, as in the reference); in place over input0 when it dies here."""
    return _lower_single(req, knobs, ("input0", "input1"), inplace="input0")


@lowering("MulTo", knobs=ROW_KNOBS)
def lower_mul_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 * input1 (in place over input0 when it dies here)."""
    return _lower_single(req, knobs, ("input0", "input1"), inplace="input0")


@lowering("Add", knobs=ROW_KNOBS)
def lower_add(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input + v (a constant)."""
    return _lower_single(req, knobs, ("input",))


@lowering("Mul", knobs=ROW_KNOBS)
def lower_mul(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input * v (a constant)."""
    return _lower_single(req, knobs, ("input",))


@lowering("Silu", knobs=ROW_KNOBS)
def lower_silu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input / (1 + exp(-input))."""
    return _lower_single(req, knobs, ("input",))


@lowering("Tanh", knobs=ROW_KNOBS)
def lower_tanh(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """tanh(input) = 1 - 2 / (1 + exp(2 * input))."""
    return _lower_single(req, knobs, ("input",))


@lowering("Gelu", knobs=ROW_KNOBS)
def lower_gelu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """GELU: exact (erf, approximate="none") or the tanh form (approximate="tanh")."""
    return _lower_single(req, knobs, ("input",))


@lowering("FusedElementwise", knobs=ROW_KNOBS)
def lower_fused_elementwise(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """A chain of elementwise ops as one kernel: each step's stage reads the previous one (all inlined into "out")."""
    chain = attrs_of(req)["chain"]
    ports = ("input", "input1") if "input1" in req.types else ("input",)

    def body(x: Any, *extra: Any) -> Any:
        """The chain's TE stages, the last one named "out"."""
        return chain_stages(chain, x, *extra)

    return _elementwise(req, knobs, ports, body)


@lowering("Swiglu", knobs=ROW_KNOBS)
def lower_swiglu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """silu(input[..., :n]) * input[..., n:], n = half the last dim."""
    return _elementwise(req, knobs, ("input",), swiglu_stage)

