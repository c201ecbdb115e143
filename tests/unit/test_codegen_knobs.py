"""Kernels lowered with non-default knob values still compute the op's numpy reference; bad knobs are clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.knobs import Knob, KnobError, defaults
from graphllm.codegen.lower import Kernel, LowerRequest, knobs_of, lower
from graphllm.runtime.tvm import configure_threads
from graphllm.dsl.ops import RefContext, get_spec
from graphllm.dsl.qformats import dequantize, quantize
from graphllm.dsl.types import TensorType
from graphllm.layouts import aligned_empty, get_packer

TOKENS = (1, 7, 13)  # a lone token, a GEMV remainder tile, more tokens than every crossover below
SLOT, FIRST_POS, CONTEXT = 1, 37, 64  # attention: this step's tokens go to slot 1 from position 37 on


def request(op: str, inputs: dict[str, str], **attrs: Any) -> LowerRequest:
    """The LowerRequest of one node, its output type from the op's shape rule."""
    types = {port: TensorType.parse(text) for port, text in inputs.items()}
    return LowerRequest(op, tuple(sorted(attrs.items())), tuple(types.items()), get_spec(op).infer(types, attrs))


# (name, request, knob values other than the defaults)
CASES = [
    ("qlinear", request("FusedLinear", {"input": "f32[T,576]", "weight": "q4_1[200,576]", "bias": "f32[200]",
                                        "norm": "f32[576]", "residual": "f32[T,200]"}, prologue="rmsnorm", eps=1e-6),
     {"large_from": 4, "gemv_tile": 3, "gemv_rows": 8, "chains": 2, "prefetch": 0, "gemm_rows": 4}),
    ("linear", request("FusedLinear", {"input": "f32[T,384]", "weight": "f32[48,192]", "residual": "f32[T,48]"},
                       prologue="swiglu"),
     {"large_from": 2, "gemm_rows": 4}),
    ("attention", request("FusedAttention", {"q": "f32[T,4,16]", "k": "f32[1]", "v": "f32[1]", "curk": "f32[T,2,16]",
                                             "curv": "f32[T,2,16]", "seqLens": "i32[B]"}, scale=0.25),
     {"key_block": 16, "key_unroll": 2, "key_splits": 2, "max_tasks": 8}),
    ("rmsnorm", request("RMSNorm", {"input": "f32[T,576]", "weight": "f32[576]"}, eps=1e-6),
     {"vector_lanes": 4, "parallel_min_elems": 4096, "reduce_lanes": 8}),
]


@pytest.fixture(scope="module")
def built() -> tuple[Any, dict[str, Kernel]]:
    """Lower every case with its knob values and build all kernels into one module."""
    configure_threads()
    kernels = {name: lower(req, "cpu", values) for name, req, values in CASES}
    funcs = {}
    for name, kernel in kernels.items():
        for i, stage in enumerate((*kernel.before, kernel)):
            funcs.update({f"{name}_{i}{suffix}": func for suffix, func in stage.variants().items()})
    return build_module(funcs), kernels


def inputs_for(req: LowerRequest, packs: dict[str, str], tokens: int,
               rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the kernel's arrays, the reference's) for T = tokens: weights packed as the kernel asks, q weights decoded."""
    kernel: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    for port, t in req.inputs:
        if t.quantized:
            raw = quantize(rng.standard_normal(t.shape, dtype=np.float32) * 0.05, t.dtype)
            kernel[port], ref[port] = get_packer(packs[port])(raw), dequantize(raw, t.dtype, t.shape)
            continue
        a = aligned_empty(t.concrete({"T": tokens, "B": 1}), t.dtype)
        a[...] = [tokens] if port == "seqLens" else rng.standard_normal(a.shape)
        ref[port] = a
        kernel[port] = get_packer(packs[port])(a) if port in packs else a
    return kernel, ref


def attention_extras(tokens: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The executor's extras for one sequence of `tokens` in slot SLOT from FIRST_POS on, caches random."""
    extras = {"positions": np.arange(FIRST_POS, FIRST_POS + tokens, dtype=np.int32),
              "slots": np.full(tokens, SLOT, np.int32), "threads": np.array([2], np.int32),
              "kcache": rng.standard_normal((2, CONTEXT, 2, 16)).astype(np.float32),
              "vcache": rng.standard_normal((2, CONTEXT, 2, 16)).astype(np.float32)}
    for name, a in extras.items():
        extras[name] = aligned_empty(a.shape, a.dtype)
        extras[name][...] = a
    return extras


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name,req,values", CASES, ids=[c[0] for c in CASES])
def test_non_default_knobs_match_reference(built: tuple[Any, dict[str, Kernel]], name: str, req: LowerRequest,
                                           values: dict[str, Any], tokens: int) -> None:
    """Every variant lowered with these knob values computes the op's reference, at T = 1 and past the crossover."""
    module, kernels = built
    kernel = kernels[name]
    assert kernel.knobs == {**defaults(knobs_of(req)), **values}
    rng = np.random.default_rng(tokens)
    arrays, ref_inputs = inputs_for(req, kernel.packs, tokens, rng)
    ctx, attrs = RefContext(), dict(req.attrs)
    if req.op == "FusedAttention":
        arrays.update(attention_extras(tokens, rng))
        ctx = RefContext(caches={0: (arrays["kcache"].copy(), arrays["vcache"].copy())}, slots=np.array([SLOT]),
                         positions=arrays["positions"])
        attrs["layer"] = 0
    expect = get_spec(req.op).reference(ref_inputs, attrs, ctx)
    caches = {p: arrays[p].copy() for p in ("kcache", "vcache") if p in arrays}
    for suffix in kernel.variants():
        for p, a in caches.items():
            arrays[p][...] = a
        for i, stage in enumerate((*kernel.before, kernel)):
            out = aligned_empty(expect.shape, expect.dtype)
            func = module[f"{name}_{i}{suffix if stage is kernel else ''}"]
            func(*(as_tensor(out if p == "out" else arrays[p]) for p in stage.params))
        np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max(), err_msg=suffix)


def test_unknown_knob_and_bad_value_are_clear_errors() -> None:
    """A knob the kernel lacks, or a value outside the allowed ones, names the kernel, the knob and the choices."""
    req = CASES[1][1]
    with pytest.raises(KnobError, match=r"the cpu kernel of FusedLinear has no knob gemv_tile; its knobs: large_from"):
        lower(req, "cpu", {"gemv_tile": 3})
    with pytest.raises(KnobError, match=r"knob gemm_rows = 5 is not one of 2, 3, 4, 6, 8"):
        lower(req, "cpu", {"gemm_rows": 5})
    with pytest.raises(KnobError, match="key_splits = 'all' is not one of 'threads', 1, 2"):
        lower(CASES[2][1], "cpu", {"key_splits": "all"})
    with pytest.raises(ValueError, match="default 3 is not one of"):
        Knob("tile", (1, 2), 3, "a declaration whose default is not allowed")


def test_knobs_follow_the_kernel_family() -> None:
    """A Linear's knobs are its weight format's: the block-quantized kernels have more than the float ones."""
    names = {name: {k.name for k in knobs_of(req)} for name, req, _ in CASES}
    assert names["linear"] == {"large_from", "gemm_rows"} < names["qlinear"]
    assert lower(CASES[0][1], knobs={"large_from": 4}).large_from == 4


def test_missing_target_names_op_and_target() -> None:
    """An op without a lowering for the target is a NotImplementedError naming both."""
    with pytest.raises(NotImplementedError, match="no TVM lowering for op Print on target cuda"):
        lower(LowerRequest("Print", (), (), None), "cuda")
    with pytest.raises(NotImplementedError, match="no TVM lowering for op Print on target cpu"):
        lower(LowerRequest("Print", (), (), None))
