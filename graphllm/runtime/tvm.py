"""The thin TVM runtime: `tvm_ffi` + `libtvm_runtime.so`, never the compiler (0.2-0.3 s to import).

Size TVM's thread pool (through the C API: no `tvm_ffi` import), check kernel buffers; for the CUDA executor and the
tools, load a kernel library with `tvm_ffi` and wrap aligned numpy arrays as its tensors. The CPU executor runs its
kernels through the native step driver instead (runtime/program.py).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..host import physical_cores
from ..layouts import ALIGNMENT
from . import ffi

if TYPE_CHECKING:
    import tvm_ffi

# TVM thread-pool affinity mode "big cores" (ThreadGroup::kBig), the mode the pool starts in.
_AFFINITY_BIG = 1


def load_runtime() -> ModuleType:
    """Load `tvm_ffi` and `libtvm_runtime.so` (RTLD_GLOBAL) without the compiler; return tvm_ffi.

    tvm_ffi 0.1.14 imports torch eagerly when it is installed (3 s); it is blocked during the
    import of tvm_ffi only, so a later `import torch` still works.
    """
    if "tvm_ffi" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
        try:
            import tvm_ffi
        finally:
            del sys.modules["torch"]
    import tvm_ffi

    ffi.native()  # libtvm_runtime.so, RTLD_GLOBAL
    return tvm_ffi


def configure_threads(n: int | None = None) -> int:
    """Make TVM's thread pool use `n` threads (default: TVM_NUM_THREADS if set, else physical cores).

    TVM sizes its (per calling thread) pool from TVM_NUM_THREADS when the pool is first used and
    halves the core count without it (1 thread on a 2-vCPU VM). `runtime.config_threadpool` can
    later change the count only up to that initial size, so call this before any kernel runs.
    Returns the number of threads the pool now uses (warns if it is below `n`).
    """
    if n is None:
        env = os.environ.get("TVM_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    os.environ["TVM_NUM_THREADS"] = str(n)
    ffi.call_global("runtime.config_threadpool", _AFFINITY_BIG, n)
    used = int(cast(int, ffi.call_global("runtime.NumThreads")))
    if used < n:
        warnings.warn(
            f"TVM's thread pool already started with {used} thread(s) and cannot grow to {n}; "
            "call configure_threads() before the first kernel runs",
            RuntimeWarning,
            stacklevel=2,
        )
    return used


def load_module(path: str | os.PathLike) -> tvm_ffi.Module:
    """Load an exported kernel library with the thin runtime (no `import tvm`); index it by name."""
    return load_runtime().load_module(str(path))


def check_buffer(array: np.ndarray) -> np.ndarray:
    """`array` if a kernel may read it (C-contiguous, 64-byte aligned: kernels assume it), else ValueError."""
    if array.ctypes.data % ALIGNMENT or not array.flags.c_contiguous:
        raise ValueError("kernel buffers must be C-contiguous and 64-byte aligned; use aligned_empty")
    return array


def as_tensor(array: np.ndarray) -> tvm_ffi.Tensor:
    """Wrap a 64-byte-aligned C-contiguous numpy array as a zero-copy tvm_ffi Tensor (checked)."""
    return load_runtime().from_dlpack(check_buffer(array))


def bind(func: Callable[..., Any], *arrays: np.ndarray) -> Callable[[], Any]:
    """Wrap the arrays once and return a no-argument callable running `func` on them (per-token path).

    functools.partial over pre-wrapped tensors costs 0.3 us a call, a Python closure 0.4 us.
    """
    return functools.partial(func, *(as_tensor(a) for a in arrays))
