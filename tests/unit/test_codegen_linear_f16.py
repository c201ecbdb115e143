"""16-bit Linear weights (float16, bfloat16): GEMV and GEMM widen them in the loop; result = x @ W16.float32.T."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.kernels.cpu.linear import linear_kernels
from graphllm.codegen.lower import LowerRequest, lower
from graphllm.dsl.types import TensorType
from graphllm.layouts import aligned_empty, get_packer, pack_weight

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
SHAPES = [(64, 48, True), (40, 24, False), (24, 6, True), (576, 1536, False)]  # nb = 16, 8, 2; a SmolLM2 shape


def _name(dtype: str, k: int, n: int, bias: bool) -> str:
    """Return the kernel name prefix of one test case."""
    return f"lin_{dtype}_{k}x{n}{'_b' if bias else ''}"


@pytest.fixture(scope="module")
def module():
    """Build every (dtype, shape) GEMV and GEMM into one module, once."""
    funcs = {}
    for dtype in DTYPES:
        for k, n, bias in SHAPES:
            funcs.update(linear_kernels(k, n, bias, name=_name(dtype, k, n, bias), dtype=dtype))
    return build_module(funcs).mod


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("k,n,bias", SHAPES)
@pytest.mark.parametrize("t", [1, 64])
@pytest.mark.parametrize("kind", ["gemv", "gemm"])
def test_linear_16bit_matches_numpy(module, dtype: str, k: int, n: int, bias: bool, t: int, kind: str) -> None:
    """Both kernels equal x @ W16.astype(float32).T (+ b) within float32 rounding."""
    rng = np.random.default_rng(k * 1000 + n + t)
    w16 = rng.standard_normal((n, k), dtype=np.float32).astype(DTYPES[dtype])
    x = aligned_empty((t, k))
    x[...] = rng.standard_normal((t, k))
    b = aligned_empty(n) if bias else None
    if b is not None:
        b[...] = rng.standard_normal(n)
    y = aligned_empty((t, n))
    y[...] = np.nan
    args = [x, pack_weight(w16, dtype)] + ([b] if b is not None else []) + [y]
    module[f"{_name(dtype, k, n, bias)}_{kind}"](*(as_tensor(a) for a in args))
    ref = x.astype(np.float64) @ w16.astype(np.float64).T + (b if b is not None else 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_pack_16bit_layout_and_rounding() -> None:
    """The packed copy keeps the layout [N/nb, K, nb]; float32 input rounds to nearest even."""
    w = np.arange(48 * 5, dtype=np.float32).reshape(48, 5) + np.float32(1 / 3)
    f16 = pack_weight(w, "float16")
    assert f16.dtype == np.float16 and f16.shape == (3, 5, 16) and f16.ctypes.data % 64 == 0
    assert f16[2, 3, 5] == np.float16(w[37, 3])
    bf16 = pack_weight(w, "bfloat16")
    assert bf16.dtype == np.uint16 and bf16.ctypes.data % 64 == 0
    assert bf16[2, 3, 5] == np.array(w[37, 3], ml_dtypes.bfloat16).view(np.uint16)
    halfway = np.array([[1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8]], np.float32)  # ties: to even mantissa
    assert pack_weight(halfway, "bfloat16").ravel().tolist() == [0x3F80, 0x3F82]
    np.testing.assert_array_equal(get_packer("linear_blocks:float16")(w), f16)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lowering_names_the_16bit_packer(dtype: str) -> None:
    """A Linear with a 16-bit weight lowers to the widening kernels and asks for that dtype's packing."""
    req = LowerRequest("Linear", (), (("input", TensorType(("T", 32))), ("weight", TensorType((16, 32), dtype))),
                       TensorType(("T", 16)))
    kernel = lower(req)
    assert kernel.packs == {"weight": f"linear_blocks:{dtype}"}
