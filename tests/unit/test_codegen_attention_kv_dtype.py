"""The attention lowering over float16 and float32 KV caches vs the op's numpy reference (same cache dtype).

Each case is lowered as the compiler lowers a node (cache write, then attention), built into one module, and
run for a prefill of T tokens followed by one decode step; the kernels' caches must hold what the reference's
hold (float16: rounded to nearest even by both) and the outputs must agree.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from graphllm.codegen.build import build_module
from graphllm.codegen.lower import Kernel, LowerRequest, lower
from graphllm.dsl.ops import RefContext, get_spec
from graphllm.dsl.types import TensorType
from graphllm.host import cpu_flags
from graphllm.layouts import aligned_empty
from graphllm.runtime.tvm import as_tensor, configure_threads

SLOTS, CONTEXT, ROWS = 2, 160, 160
ROPE = {"positionIds": "i32[T]", "sin": f"f32[{ROWS},32]", "cos": f"f32[{ROWS},32]"}
# (op, input types, attrs): SmolLM2's geometry, a sliding window, window + soft-cap, fused RoPE, packed qkv
SHAPES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("FusedAttention", {"q": "f32[T,9,64]", "curk": "f32[T,3,64]", "curv": "f32[T,3,64]"}, {"scale": 0.125}),
    ("FusedAttention", {"q": "f32[T,6,16]", "curk": "f32[T,2,16]", "curv": "f32[T,2,16]"}, {"scale": 0.25, "window": 5}),
    ("FusedAttention", {"q": "f32[T,4,16]", "curk": "f32[T,2,16]", "curv": "f32[T,2,16]"},
     {"scale": 0.25, "window": 37, "softcap": 2.5}),
    ("FusedAttention", {"q": "f32[T,4,64]", "curk": "f32[T,2,64]", "curv": "f32[T,2,64]", **ROPE},
     {"scale": 0.125, "rotaryDim": 32}),
    ("QKVAttention", {"qkv": "f32[T,960]"}, {"scale": 0.125, "numHeads": 9, "numKVHeads": 3}),
]
CASES = [(op, types, {**attrs, "kvDtype": dtype}) for op, types, attrs in SHAPES for dtype in ("float16", "float32")]
IDS = [f"{op}-{'-'.join(f'{k}={v}' for k, v in a.items() if k != 'scale')}" for op, _, a in CASES]


def _request(op: str, types: dict[str, str], attrs: dict[str, Any]) -> LowerRequest:
    """The node's lowering request (cache handles and seqLens added as the tracer records them)."""
    inputs = {p: TensorType.parse(t) for p, t in {**types, "k": "f32[1]", "v": "f32[1]", "seqLens": "i32[B]"}.items()}
    output = get_spec(op).infer(inputs, attrs)
    return LowerRequest(op, tuple(sorted(attrs.items())), tuple(inputs.items()), output)


@pytest.fixture(scope="module")
def built() -> tuple[Any, list[Kernel]]:
    """Every case's kernels in one module (one tvm.compile)."""
    configure_threads(2)
    kernels = [lower(_request(*c)) for c in CASES]
    funcs = {f"c{i}_{j}": stage.func for i, k in enumerate(kernels) for j, stage in enumerate([*k.before, k])}
    return build_module(funcs).mod, kernels


def _aligned(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _step_inputs(types: dict[str, str], positions: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random activations of one step at the given positions (RoPE tables of real sin/cos values)."""
    tokens = len(positions)
    arrays = {}
    for port, text in types.items():
        t = TensorType.parse(text)
        shape = t.concrete({"T": tokens, "B": 1})
        if port == "positionIds":
            arrays[port] = _aligned(positions)
        elif port in ("sin", "cos"):
            angles = np.arange(ROWS)[:, None] * 10000.0 ** (-np.arange(shape[1]) / shape[1])
            arrays[port] = _aligned((np.sin if port == "sin" else np.cos)(angles).astype(np.float32))
        else:
            arrays[port] = _aligned(rng.standard_normal(shape).astype(np.float32) * 2)
    return arrays


@pytest.mark.parametrize("tokens", [1, 7, 128])
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_kernel_matches_reference_over_the_cache_dtype(built: tuple[Any, list[Kernel]], index: int, tokens: int) -> None:
    """Prefill `tokens` tokens into slot 1, then decode one: caches and outputs agree with the reference."""
    module, kernels = built
    op, types, attrs = CASES[index]
    dtype = attrs["kvDtype"]
    kernel = kernels[index]
    rng = np.random.default_rng(tokens * 10 + index)
    shape = (SLOTS, CONTEXT, *get_spec(op).kv_shape(dict(_request(op, types, attrs).inputs), attrs))
    caches = [_aligned(np.zeros(shape, dtype)) for _ in range(2)]
    ref_ctx = RefContext(caches={0: (np.zeros(shape, dtype), np.zeros(shape, dtype))}, slots=np.array([1]))
    for positions in (np.arange(tokens, dtype=np.int32), np.array([tokens], np.int32)):
        arrays = _step_inputs(types, positions, rng)
        extras = {"positions": _aligned(positions), "slots": _aligned(np.ones(len(positions), np.int32)),
                  "threads": _aligned(np.array([2], np.int32)), "kcache": caches[0], "vcache": caches[1],
                  "seqLens": _aligned(np.array([len(positions)], np.int32))}
        ref_ctx.positions = positions
        expect = get_spec(op).reference({**arrays, "seqLens": extras["seqLens"]}, {**attrs, "layer": 0}, ref_ctx)
        out = aligned_empty(expect.shape, "float32")
        bound = {**arrays, **extras, "out": out}
        for j, stage in enumerate([*kernel.before, kernel]):
            module[f"c{index}_{j}"](*(as_tensor(bound[p]) for p in stage.params))
        assert caches[0].dtype == np.dtype(dtype)
        rope = bool(attrs.get("rotaryDim"))  # rotated keys may differ by a float32 ulp, so by one stored ulp
        for have, want in zip(caches, ref_ctx.caches[0]):
            np.testing.assert_allclose(have.astype(np.float32), want.astype(np.float32),
                                       rtol=2 ** -10 if rope and dtype == "float16" else 1e-6, atol=1e-6)
        np.testing.assert_allclose(out, expect, rtol=1e-4, atol=2e-5 * np.abs(expect).max())


def test_float16_cache_is_written_rounded_to_nearest_even(built: tuple[Any, list[Kernel]]) -> None:
    """Values halfway between two float16 numbers are stored rounded to the even one by the kernel and the reference."""
    module, kernels = built
    index = next(i for i, (op, _, a) in enumerate(CASES) if op == "FusedAttention" and a["kvDtype"] == "float16")
    op, types, attrs = CASES[index]
    one_ulp = np.float32(2.0 ** -10)  # float16's spacing in [1, 2)
    curk = np.full((1, 3, 64), 1.0, np.float32) + one_ulp * np.array([0.5, 1.5, 0.25], np.float32)[None, :, None]
    stored = np.float16(curk).astype(np.float32)
    np.testing.assert_array_equal(stored[0, :, 0], [1.0, 1.0 + 2 * one_ulp, 1.0])  # ties to even, then nearest
    caches = [_aligned(np.zeros((SLOTS, CONTEXT, 3, 64), np.float16)) for _ in range(2)]
    bound = {"curk": _aligned(curk), "curv": _aligned(curk), "positions": _aligned(np.array([3], np.int32)),
             "slots": _aligned(np.array([0], np.int32)), "kcache": caches[0], "vcache": caches[1]}
    module[f"c{index}_0"](*(as_tensor(bound[p]) for p in kernels[index].before[0].params))
    np.testing.assert_array_equal(caches[0][0, 3].astype(np.float32), stored[0])
    ref_k = np.zeros((SLOTS, CONTEXT, 3, 64), np.float16)
    ctx = RefContext(caches={0: (ref_k, ref_k.copy())}, slots=np.array([0]), positions=np.array([3], np.int32))
    q = np.zeros((1, 9, 64), np.float32)
    get_spec(op).reference({"q": q, "curk": curk, "curv": curk, "seqLens": np.array([1], np.int32)},
                           {**attrs, "layer": 0}, ctx)
    np.testing.assert_array_equal(ref_k[0, 3].view(np.uint16), caches[0][0, 3].view(np.uint16))


@pytest.mark.skipif("f16c" not in cpu_flags(), reason="the host CPU has no F16C conversions")
def test_float16_loads_and_stores_are_vector_conversions() -> None:
    """On an F16C host the float16 cache is read with vcvtph2ps and written with vcvtps2ph (vectors, no libcalls)."""
    from graphllm.codegen.kernels.cpu.attention import attention_func, kv_write_func
    from graphllm.runtime.builds import host_target

    funcs = {"attention": attention_func(9, 3, 64, 0.125, kv_dtype="float16"),
             "write": kv_write_func(3, 64, kv_dtype="float16")}
    asm = build_module(funcs, host_target()).mod.inspect_source("asm")
    assert re.search(r"vcvtph2ps\s+[^\n]*%[yz]mm", asm) and re.search(r"vcvtps2ph\s+[^\n]*%[xy]mm", asm)
    assert not re.search(r"call[^\n]*(__extendhfsf2|__truncsfhf2|__gnu_h2f_ieee|__gnu_f2h_ieee)", asm)
