"""Quantized Linear (GEMV, GEMM) and Embedding kernels vs numpy on the exactly dequantized weights."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.kernels.cpu.qlinear import (
    DEFAULTS,
    lower_qembedding,
    lower_qlinear,
    qembedding,
    qlinear_gemm,
    qlinear_gemv,
)
from graphllm.codegen.lower import LowerRequest
from graphllm.dsl.qformats import dequantize, quantize
from graphllm.dsl.types import TensorType
from graphllm.layouts import aligned_empty, get_packer, pack_qweight, qlayout

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_1g128", "q8_0g64"]
# (K, N, bias): SmolLM2's hidden/intermediate shapes and a small N that fills no 16-row block exactly;
# a format only gets the shapes whose K is a whole number of its groups (576 is not one of 128).
SHAPES = [(576, 576, True), (576, 1536, False), (1536, 576, False), (384, 37, True)]
CASES = [(f, k, n, b) for f in FORMATS for k, n, b in SHAPES if k % qlayout(f).fmt.group == 0]
TOKENS = [1, 3, 7, 64]
VOCAB = 101  # embedding rows: not a multiple of the 16-row packing block


def _name(fmt: str, k: int, n: int, bias: bool) -> str:
    """Kernel name prefix of one case."""
    return f"{fmt}_{k}x{n}{'_b' if bias else ''}"


def _mxcsr_func() -> object:
    """A kernel that swaps the calling thread's MXCSR with csr[0] (to run the GEMV with DAZ set)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("mxcsr")
            csr = T.match_buffer(T.arg("csr", T.handle()), (2,), "uint32")
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.stmxcsr", tirx.address_of(csr[1])))
            T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", tirx.address_of(csr[0])))
    return ib.get()


@pytest.fixture(scope="module")
def module():
    """Every case's GEMV and GEMM, and one embedding per format, built into one module."""
    funcs = {}
    for fmt, k, n, bias in CASES:
        funcs[f"{_name(fmt, k, n, bias)}_gemv"] = qlinear_gemv(fmt, k, n, bias)
        funcs[f"{_name(fmt, k, n, bias)}_gemm"] = qlinear_gemm(fmt, k, n, bias)
    for fmt in FORMATS:
        funcs[f"emb_{fmt}"] = qembedding(fmt, VOCAB, 384)
    if platform.machine() in ("x86_64", "AMD64"):
        funcs["mxcsr"] = _mxcsr_func()
    return build_module(funcs).mod


def _weights(fmt: str, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw blocks of a random weight (with an outlier row and an all-zero block) and their exact decoding."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k), dtype=np.float32) * 0.05
    w[0] *= 300.0
    w[-1, :qlayout(fmt).fmt.group] = 0.0
    raw = quantize(w, fmt)
    return raw, dequantize(raw, fmt, (n, k))


def _aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _run(module, func: str, x: np.ndarray, wp: np.ndarray, b: np.ndarray | None, n: int) -> np.ndarray:
    """Call one kernel on aligned inputs; return y (pre-filled with NaN so unwritten rows show)."""
    y = aligned_empty((x.shape[0], n))
    y[...] = np.nan
    args = [_aligned(x), wp] + ([b] if b is not None else []) + [y]
    module[func](*(as_tensor(a) for a in args))
    return y


@pytest.mark.parametrize("fmt,k,n,bias", CASES, ids=[_name(*c) for c in CASES])
def test_qlinear_matches_numpy(module, fmt: str, k: int, n: int, bias: bool) -> None:
    """Both kernels equal x @ dequantize(W).T (+ b) at every T (the lowering picks the faster one)."""
    raw, wd = _weights(fmt, n, k, seed=k + n)
    wp = pack_qweight(raw, fmt)
    rng = np.random.default_rng(n)
    b = _aligned(rng.standard_normal(n, dtype=np.float32)) if bias else None
    for t in TOKENS:
        x = rng.standard_normal((t, k), dtype=np.float32)
        x[:, 5] = 40.0  # an outlier channel, as LLM activations have
        ref = x.astype(np.float64) @ wd.T.astype(np.float64) + (b if b is not None else 0.0)
        for kind in ("gemv", "gemm"):
            y = _run(module, f"{_name(fmt, k, n, bias)}_{kind}", x, wp, b, n)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=f"{kind} T={t}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_qembedding_matches_numpy(module, fmt: str) -> None:
    """Embedding rows decoded from the packed blocks equal dequantize(raw)[ids], the last rows included."""
    raw, wd = _weights(fmt, VOCAB, 384, seed=7)
    ids = _aligned(np.array([0, VOCAB - 1, 17, 17, 64, 96, 3], np.int32))
    out = aligned_empty((len(ids), 384))
    module[f"emb_{fmt}"](as_tensor(ids), as_tensor(pack_qweight(raw, fmt)), as_tensor(out))
    np.testing.assert_allclose(out, wd[ids], rtol=1e-6, atol=0)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 MXCSR")
@pytest.mark.parametrize("kind", ["gemv", "gemm"])
def test_correct_with_denormals_are_zero(module, kind: str) -> None:
    """Both kernels read weights as denormal floats; they clear MXCSR.DAZ if a library has set it."""
    fmt, k, n, bias = "q4_1", 576, 576, True
    raw, wd = _weights(fmt, n, k, seed=1)
    b = _aligned(np.ones(n, np.float32))
    x = np.random.default_rng(2).standard_normal((16, k), dtype=np.float32)
    csr = _aligned(np.array([0x1F80 | 0x40 | 0x8000, 0], np.uint32))  # default | DAZ | FTZ
    module["mxcsr"](as_tensor(csr))
    try:
        y = _run(module, f"{_name(fmt, k, n, bias)}_{kind}", x, pack_qweight(raw, fmt), b, n)
    finally:
        csr[0] = csr[1]
        module["mxcsr"](as_tensor(csr))
    ref = x.astype(np.float64) @ wd.T.astype(np.float64) + 1.0
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_lowering_and_packers() -> None:
    """Linear and Embedding with a q weight lower to these kernels; packers are registered per format."""
    x, w = TensorType(("T", 576)), TensorType((1536, 576), "q4_1g64")
    kernel = lower_qlinear(LowerRequest("Linear", (), (("input", x), ("weight", w)), TensorType(("T", 1536))), DEFAULTS)
    assert kernel.params == ("input", "weight", "out") and kernel.large_from == DEFAULTS["large_from"]
    assert kernel.packs == {"weight": "qlinear:q4_1g64"}
    ids, table = TensorType(("T",), "int32"), TensorType((49152, 576), "q8_0")
    emb = lower_qembedding(LowerRequest("Embedding", (), (("input", ids), ("weight", table)), TensorType(("T", 576))))
    head = lower_qlinear(LowerRequest("Linear", (), (("input", x), ("weight", table)), TensorType(("T", 49152))), DEFAULTS)
    assert emb.packs == head.packs == {"weight": "qlinear:q8_0"}  # a tied lm_head shares the packed copy
    raw = quantize(np.random.default_rng(0).standard_normal((20, 64), dtype=np.float32), "q8_0")
    packed = get_packer("qlinear:q8_0")(raw)
    assert packed.shape == (2, 2, qlayout("q8_0").record) and packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed, pack_qweight(raw, "q8_0"))
    with pytest.raises(ValueError):
        pack_qweight(raw.astype(np.float32), "q8_0")


@pytest.mark.parametrize("dtype", ["q4_1g6", "q4_0g12", "q8_0g2", "q4_1g2048"])
def test_unsupported_groups_say_so(dtype: str) -> None:
    """Group sizes that are not whole 32-bit words of codes (or are huge) raise a clear NotImplementedError."""
    with pytest.raises(NotImplementedError, match="group size"):
        qlayout(dtype)


def test_layout_sizes() -> None:
    """A packed record holds exactly the raw blocks' bytes (16 rows x one block each)."""
    for fmt in FORMATS:
        lay = qlayout(fmt)
        assert lay.record * 4 == 16 * lay.fmt.block_bytes
