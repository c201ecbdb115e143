"""Host CPU detection, the TVM runtime library and TVM's thread pool.

Nothing here imports the TVM compiler at module import time: `load_runtime` and
`configure_threads` work with only `tvm_ffi` plus `libtvm_runtime.so` (the thin runtime path),
and `detect_target` imports `tvm` when it is called.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

# TVM thread-pool affinity mode "big cores" (ThreadGroup::kBig), the mode the pool starts in.
_AFFINITY_BIG = 1

# LLVM feature name -> /proc/cpuinfo flag, for the vector ISA features whose absence makes code
# die with an illegal instruction. A CPU name is accepted only if every one of these features it
# implies is present in cpuinfo.
_X86_CHECKED_FEATURES = {
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
}

# Generic x86-64 micro-architecture levels, best first: the fallback when LLVM's host CPU name
# claims features that cpuinfo does not list (e.g. a hypervisor that masks AVX-512).
_X86_LEVELS = ("x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64")


def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags of /proc/cpuinfo (empty off Linux), the ISA ground truth."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def physical_cores() -> int:
    """Return the number of physical cores this process may run on (hyper-threads not counted)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            core_id = value.strip()
        elif not key and core_id:
            cores.add((physical_id, core_id))
            physical_id = core_id = ""
    return max(1, min(usable, len(cores) or usable))


def _cpu_is_safe(tvm: ModuleType, mcpu: str, mtriple: str, flags: frozenset[str]) -> bool:
    """Return True if LLVM's feature set for `mcpu` needs no checked feature missing from `flags`."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu})
    features = tvm.target.codegen.llvm_get_cpu_features(target)
    return all(flag in flags for feat, flag in _X86_CHECKED_FEATURES.items() if feat in features)


@lru_cache(maxsize=1)
def _host_cpu() -> tuple[str, str]:
    """Return (mtriple, mcpu) of this host, the CPU name checked against cpuinfo (cached)."""
    import tvm  # the compiler; only needed to build

    codegen = tvm.target.codegen
    mtriple = str(codegen.llvm_get_system_triple())
    mcpu = str(codegen.llvm_get_system_cpu())
    flags = cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and flags:
        candidates = (mcpu, *_X86_LEVELS)
        mcpu = next(c for c in candidates if _cpu_is_safe(tvm, c, mtriple, flags))
    return mtriple, mcpu


def detect_target() -> dict[str, object]:
    """Return the TVM target dict for this host's real ISA (never an ISA that cpuinfo lacks)."""
    mtriple, mcpu = _host_cpu()
    return {"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu, "num-cores": physical_cores()}


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

    if tvm_ffi.get_global_func("runtime.NumThreads", allow_missing=True) is None:
        spec = importlib.util.find_spec("tvm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("apache-tvm is not installed: libtvm_runtime.so not found")
        lib = Path(list(spec.submodule_search_locations)[0]) / "lib" / "libtvm_runtime.so"
        ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
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
    tvm_ffi = load_runtime()
    tvm_ffi.get_global_func("runtime.config_threadpool")(_AFFINITY_BIG, n)
    used = int(tvm_ffi.get_global_func("runtime.NumThreads")())
    if used < n:
        warnings.warn(
            f"TVM's thread pool already started with {used} thread(s) and cannot grow to {n}; "
            "call configure_threads() before the first kernel runs",
            RuntimeWarning,
            stacklevel=2,
        )
    return used
