"""Linear kernels (GEMV and GEMM on the packed weight layout) vs numpy, at several token counts."""

from __future__ import annotations

import numpy as np
import pytest

from graphllm.codegen.build import build_module

from graphllm.runtime.tvm import as_tensor
from graphllm.codegen.kernels.cpu.linear import DEFAULTS, linear_entry, linear_kernels
from graphllm.layouts import aligned_empty, pack_block, pack_weight

# (K, N, bias): nb = 16, 8 and 2 column blocks; one SmolLM2 shape (hidden -> intermediate)
SHAPES = [(64, 48, True), (40, 24, False), (24, 6, True), (576, 1536, False)]


def _name(k: int, n: int, bias: bool) -> str:
    """Return the kernel name prefix of one test shape."""
    return f"lin_{k}x{n}{'_b' if bias else ''}"


@pytest.fixture(scope="module")
def module():
    """Build every test shape's GEMV and GEMM kernels into one module, once."""
    funcs = {}
    for k, n, bias in SHAPES:
        funcs.update(linear_kernels(k, n, bias, name=_name(k, n, bias)))
    return build_module(funcs).mod


def _run(module, func: str, x: np.ndarray, wp: np.ndarray, b: np.ndarray | None, n: int) -> np.ndarray:
    """Call one kernel on aligned copies of the inputs and return y."""
    xa = aligned_empty(x.shape)
    xa[...] = x
    y = aligned_empty((x.shape[0], n))
    y[...] = np.nan
    args = [xa, wp] + ([b] if b is not None else []) + [y]
    module[func](*(as_tensor(a) for a in args))
    return y


@pytest.mark.parametrize("k,n,bias", SHAPES)
@pytest.mark.parametrize("t", [1, 7, 128])
@pytest.mark.parametrize("kind", ["gemv", "gemm"])
def test_linear_matches_numpy(module, k: int, n: int, bias: bool, t: int, kind: str) -> None:
    """Both kernels are correct at every T (the dispatcher only picks the faster one)."""
    rng = np.random.default_rng(k * 1000 + n + t)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((t, k), dtype=np.float32)
    b = aligned_empty(n) if bias else None
    if b is not None:
        b[...] = rng.standard_normal(n)
    y = _run(module, f"{_name(k, n, bias)}_{kind}", x, pack_weight(w), b, n)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + (b if b is not None else 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_linear_entry_dispatch() -> None:
    """Few tokens go to the GEMV, the rest to the GEMM."""
    assert linear_entry("l", 1) == "l_gemv"
    assert linear_entry("l", DEFAULTS["large_from"] - 1) == "l_gemv"
    assert linear_entry("l", DEFAULTS["large_from"]) == "l_gemm"


def test_pack_weight_layout() -> None:
    """[N, K] -> [N/nb, K, nb], 64-byte aligned, element (n, k) at [n // nb, k, n % nb]."""
    w = np.arange(48 * 5, dtype=np.float32).reshape(48, 5)
    wp = pack_weight(w)
    assert pack_block(48) == 16 and pack_block(24) == 8 and pack_block(6) == 2 and pack_block(7) == 1
    assert wp.shape == (3, 5, 16) and wp.ctypes.data % 64 == 0 and wp.flags.c_contiguous
    assert wp[2, 3, 5] == w[2 * 16 + 5, 3]
    with pytest.raises(ValueError):
        pack_weight(w[0])
