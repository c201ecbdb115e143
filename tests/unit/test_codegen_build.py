"""Build -> export a shared library -> load it with the thin runtime (no `import tvm`) -> call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from graphllm.codegen.build import build_module, export_module

from graphllm.runtime.tvm import as_tensor, bind, load_module
from graphllm.codegen.kernels.cpu.linear import linear_kernels
from graphllm.layouts import aligned_empty, pack_weight

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Build one small Linear (GEMV + GEMM) and export it, once."""
    path = tmp_path_factory.mktemp("lib") / "kernels.so"
    return export_module(build_module(linear_kernels(32, 16, bias=True, name="lin")), path)


def test_aligned_empty_is_64_byte_aligned() -> None:
    """Buffers for kernels start on a 64-byte boundary whatever the size and dtype."""
    for shape, dtype in [((3,), "float32"), ((5, 7), "int32"), (1, "float64")]:
        a = aligned_empty(shape, dtype)
        assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.dtype == np.dtype(dtype)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)


def test_as_tensor_rejects_unaligned_arrays() -> None:
    """An unaligned or strided array would be read wrongly (or crash) by a kernel: refused."""
    a = aligned_empty(17)
    with pytest.raises(ValueError):
        as_tensor(a[1:])
    with pytest.raises(ValueError):
        as_tensor(aligned_empty((4, 4)).T)


def test_exported_library_loads_and_runs(library: Path) -> None:
    """The exported .so loads through tvm_ffi and a pre-bound call computes x @ W.T + b in place."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32), dtype=np.float32)
    x, b, y = aligned_empty((1, 32)), aligned_empty(16), aligned_empty((1, 16))
    x[...] = rng.standard_normal((1, 32))
    b[...] = rng.standard_normal(16)
    mod = load_module(library)
    call = bind(mod["lin_gemv"], x, pack_weight(w), b, y)
    call()
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    x[...] = 0  # bound buffers are zero-copy: the next call sees new inputs
    call()
    np.testing.assert_allclose(y[0], b, rtol=1e-6)


def test_thin_runtime_runs_without_tvm_compiler(library: Path) -> None:
    """A fresh process loads and runs the library without importing `tvm` (nor torch)."""
    code = f"""
        import sys
        import numpy as np
        from graphllm.runtime.tvm import bind, load_module
        from graphllm.layouts import aligned_empty
        from graphllm.runtime.tvm import configure_threads
        configure_threads(2)
        mod = load_module({str(library)!r})
        x, w, b, y = aligned_empty((7, 32)), aligned_empty((1, 32, 16)), aligned_empty(16), aligned_empty((7, 16))
        x[...] = 1; w[...] = 0.5; b[...] = 1
        bind(mod["lin_gemm"], x, w, b, y)()
        print(float(y.min()), float(y.max()), "tvm" in sys.modules, "torch" in sys.modules)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120, check=True
    ).stdout
    assert out.split() == ["17.0", "17.0", "False", "False"]
