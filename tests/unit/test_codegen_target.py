"""Host target detection (real ISA, never an AVX-512 CPU name without avx512f) and TVM's thread pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graphllm import host
from graphllm.codegen import target as tgt

ROOT = Path(__file__).resolve().parents[2]


def test_detected_target_is_llvm_for_this_host() -> None:
    """The target dict names the LLVM triple, a CPU, and the physical core count."""
    t = tgt.detect_target()
    assert t["kind"] == "llvm" and t["mtriple"] and t["mcpu"]
    assert t["num-cores"] == host.physical_cores() >= 1


def test_detected_cpu_has_no_isa_missing_from_cpuinfo() -> None:
    """Every checked vector feature the chosen CPU name implies is listed in /proc/cpuinfo."""
    import tvm

    t = tgt.detect_target()
    flags = host.cpu_flags()
    features = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(dict(t)))
    for feature, flag in tgt._X86_CHECKED_FEATURES.items():
        if feature in features and flags:
            assert flag in flags, f"{t['mcpu']} implies {feature} but cpuinfo lacks {flag}"


def test_avx512_cpu_rejected_without_avx512f() -> None:
    """An AVX-512 CPU name is unsafe on a host whose flags lack avx512f; AVX2 levels stay safe."""
    import tvm

    flags = frozenset({"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"})
    triple = "x86_64-pc-linux-gnu"
    assert not tgt._cpu_is_safe(tvm, "skylake-avx512", triple, flags)
    assert not tgt._cpu_is_safe(tvm, "x86-64-v4", triple, flags)
    assert tgt._cpu_is_safe(tvm, "x86-64-v3", triple, flags)
    assert tgt._cpu_is_safe(tvm, "skylake-avx512", triple, flags | {"avx512f", "avx512bw", "avx512dq", "avx512vl"})


@pytest.mark.skipif(not {"avx2", "fma"} <= host.cpu_flags(), reason="host has no AVX2/FMA")
def test_kernel_for_detected_target_uses_avx2_fma() -> None:
    """A small vectorized multiply-add built for the detected target emits ymm registers and vfmadd."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def axpy(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32"), c: T.Buffer((64,), "float32")):
        for i in T.vectorized(64):
            c[i] = c[i] + a[i] * b[i]

    asm = tvm.compile(axpy, target=tvm.target.Target(tgt.detect_target())).mod.inspect_source("asm")
    assert "ymm" in asm and "vfmadd" in asm


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    """Run code in a fresh interpreter (TVM's pool is per process) and return its stdout."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("TVM_NUM_THREADS", None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=True,
    )
    return proc.stdout


def test_configure_threads_sets_pool_size_before_start() -> None:
    """configure_threads(2) gives a 2-thread pool without importing the TVM compiler."""
    out = _run_python(
        """
        import sys
        from graphllm.runtime.tvm import configure_threads, load_runtime
        n = configure_threads(2)
        print(n, load_runtime().get_global_func("runtime.NumThreads")(), "tvm" in sys.modules)
        """
    )
    assert out.split() == ["2", "2", "False"]


def test_configure_threads_cannot_grow_a_started_pool() -> None:
    """A pool started with 1 thread can shrink and regrow up to 1 only; growing further warns."""
    out = _run_python(
        """
        import warnings
        from graphllm.runtime.tvm import configure_threads
        print(configure_threads(1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(configure_threads(2), len(caught))
        """
    )
    assert out.split() == ["1", "1", "1"]
