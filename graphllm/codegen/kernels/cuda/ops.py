"""CUDA lowerings of the row-shaped ops: elementwise (and chains), norms, gathers, shape ops, RoPE.

Each is its op's TE stages from kernels/stages.py (the formulas the CPU kernels compute) scheduled
by `sched.schedule_gpu`; activations are float32 as the graph types them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from graphllm.codegen.kernels.cuda.sched import KNOBS, port_kernel, schedule_gpu, te_kernel
from graphllm.codegen.kernels.stages import (cast_stage, cat_stage, chain_stages, gather_rows, layernorm_stages,
                                             packed_rows, packed_weight, repeat_stage, rmsnorm_stages, rope_stage,
                                             split_stage, stage_builder, swiglu_stage)
from graphllm.codegen.lower import Kernel, LowerRequest, attrs_of, lowering, require_float32


def _single(req: LowerRequest, knobs: Mapping[str, Any], ports: tuple[str, ...], inplace: str | None = None) -> Kernel:
    """One elementwise op (float32) as a GPU kernel."""
    require_float32(req, *ports)
    stage = stage_builder(req.op, attrs_of(req))
    return replace(port_kernel(req, ports, lambda *xs: stage(*xs), knobs), inplace=inplace)


@lowering("AddTo", target="cuda", knobs=KNOBS)
def lower_add_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 + input1 * alpha; in place over input0 when it dies here (each thread reads what it writes)."""
    return _single(req, knobs, ("input0", "input1"), inplace="input0")


@lowering("MulTo", target="cuda", knobs=KNOBS)
def lower_mul_to(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input0 * input1 (in place over input0 when it dies here)."""
    return _single(req, knobs, ("input0", "input1"), inplace="input0")


def _register_unary(op: str) -> None:
    """Register the CUDA lowering of a one-input elementwise op."""
    lowering(op, target="cuda", knobs=KNOBS)(lambda req, knobs: _single(req, knobs, ("input",)))


for _op in ("Add", "Mul", "Silu", "Tanh", "Gelu"):
    _register_unary(_op)


@lowering("FusedElementwise", target="cuda", knobs=KNOBS)
def lower_fused_elementwise(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """A chain of elementwise ops as one kernel (every stage inlined into "out")."""
    chain = attrs_of(req)["chain"]
    ports = ("input", "input1") if "input1" in req.types else ("input",)
    require_float32(req, *ports)
    return port_kernel(req, ports, lambda x, *extra: chain_stages(chain, x, *extra), knobs)


@lowering("Swiglu", target="cuda", knobs=KNOBS)
def lower_swiglu(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """silu(input[..., :n]) * input[..., n:]."""
    require_float32(req, "input")
    return port_kernel(req, ("input",), swiglu_stage, knobs)


@lowering("RMSNorm", target="cuda", knobs=KNOBS)
def lower_rmsnorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """x / sqrt(mean(x^2) + eps) * (weight + weightOffset): one warp reduces a row, then scales it."""
    require_float32(req, "input", "weight")
    attrs = attrs_of(req)
    eps, offset = float(attrs["eps"]), float(attrs.get("weightOffset") or 0.0)
    return port_kernel(req, ("input", "weight"), lambda x, w: rmsnorm_stages(x, w, eps, offset), knobs)


@lowering("LayerNorm", target="cuda", knobs=KNOBS)
def lower_layernorm(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """(x - mean) / sqrt(var + eps) * weight (+ bias), two-pass as the reference."""
    ports = ("input", "weight", "bias") if "bias" in req.types else ("input", "weight")
    require_float32(req, *ports)
    eps = float(attrs_of(req)["eps"])
    return port_kernel(req, ports, lambda x, w, *b: layernorm_stages(x, w, b[0] if b else None, eps), knobs)


@lowering("Embedding", target="cuda", knobs=KNOBS)
def lower_embedding(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out[t] = weight[input[t]]: a float32 table as is; 16-bit and block-quantized tables from the Linear kernels'
    packed copy (the one a tied lm_head reads), each element decoded as those kernels decode it."""
    wt = req.types["weight"]
    if wt.dtype == "float32":
        return port_kernel(req, ("input", "weight"), lambda ids, w: gather_rows(w, ids), knobs)
    if req.types["input"].rank != 1:
        raise NotImplementedError(f"a packed Embedding needs ids [T], got {req.types['input']}")
    vocab, hidden = wt.shape
    weight, pack = packed_weight(hidden, vocab, wt.dtype)
    from tvm import te

    ids = te.placeholder((te.var("T", "int64"),), "int32", name="ids")
    out = packed_rows(ids, hidden, weight[1], req.output.dtype)
    func = schedule_gpu(te.create_prim_func([ids, weight[0], out]), knobs)
    return Kernel(func, ("input", "weight", "out"), packs={"weight": pack})


@lowering("SplitLastTokenStates", target="cuda", knobs=KNOBS)
def lower_split_last_token_states(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """out[b] = input[last_rows[b]] (the executor's `last_rows` extra in the seqLens port's place)."""
    args = [("input", req.types["input"]), ("last_rows", req.types["seqLens"])]
    return te_kernel(args, lambda x, rows: gather_rows(x, rows), knobs)


def _axis(req: LowerRequest, port: str) -> int:
    """The node's `axis` attribute as a non-negative axis of the `port` input."""
    return int(attrs_of(req)["axis"]) % req.types[port].rank


@lowering("Cat", target="cuda", knobs=KNOBS)
def lower_cat(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """concatenate(input0, input1) along axis."""
    axis = _axis(req, "input0")
    return port_kernel(req, ("input0", "input1"), lambda a, b: cat_stage(a, b, axis), knobs)


@lowering("Split", target="cuda", knobs=KNOBS)
def lower_split(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input[start:end] along axis."""
    attrs = attrs_of(req)
    axis, start, end = _axis(req, "input"), int(attrs["start"]), int(attrs["end"])
    return port_kernel(req, ("input",), lambda x: split_stage(x, axis, start, end), knobs)


@lowering("Repeat", target="cuda", knobs=KNOBS)
def lower_repeat(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """repeatTimes copies of input along axis (numpy.tile)."""
    axis, times = _axis(req, "input"), int(attrs_of(req)["repeatTimes"])
    return port_kernel(req, ("input",), lambda x: repeat_stage(x, axis, times), knobs)


@lowering("DataTypeAs", target="cuda", knobs=KNOBS)
def lower_datatype_as(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """input cast to input1's dtype (input1 only names the dtype)."""
    dtype = req.output.dtype
    return port_kernel(req, ("input",), lambda x: cast_stage(x, dtype), knobs)


@lowering("LlamaRotatePosition2D", target="cuda", knobs=KNOBS)
def lower_rope(req: LowerRequest, knobs: Mapping[str, Any]) -> Kernel:
    """Rotate-half RoPE with per-token positions (rotaryDim counts pairs, as in fastllm)."""
    require_float32(req, "input", "sin", "cos")
    r = int(attrs_of(req)["rotaryDim"])
    return port_kernel(req, ("input", "positionIds", "sin", "cos"), lambda x, p, s, c: rope_stage(x, p, s, c, r), knobs)
