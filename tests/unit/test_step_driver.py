"""The native step driver: kernel calls run as one native program (bit-identical to calls through tvm_ffi), kernel
errors raised as clear exceptions, libraries without the driver refused as damaged builds, and the CPU run path
never imports the tvm_ffi package."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from graphllm.codegen.build import build_module, export_module
from graphllm.codegen.kernels.cpu.linear import linear_kernels
from graphllm.layouts import aligned_empty, pack_weight
from graphllm.plan import DamagedBuild, HostStep
from graphllm.runtime import builds
from graphllm.runtime.llm import LLM
from graphllm.runtime.program import KernelLibrary
from graphllm.runtime.tvm import bind, configure_threads, load_module

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny_llama"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small Linear (GEMV + GEMM) exported with the driver, once."""
    configure_threads(2)
    path = tmp_path_factory.mktemp("lib") / "kernels.so"
    return export_module(build_module(linear_kernels(32, 16, bias=True, name="lin")), path)


@pytest.fixture
def linear() -> tuple[np.ndarray, ...]:
    """x [1, 32], W packed, b, y [1, 16] (aligned), and W itself."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32), dtype=np.float32)
    x, b, y = aligned_empty((1, 32)), aligned_empty(16), aligned_empty((1, 16))
    x[...] = rng.standard_normal((1, 32))
    b[...] = rng.standard_normal(16)
    return x, pack_weight(w), b, y, w


def test_a_program_runs_its_kernels_as_tvm_ffi_calls_do(library: Path, linear) -> None:
    """Two calls in one program: the results equal the same kernels called through tvm_ffi, bit for bit; the
    arrays are bound zero-copy (a new input is seen by the next run)."""
    x, w, b, y, dense = linear
    y2 = aligned_empty((1, 16))
    program = KernelLibrary(library).program([("lin_gemv", [x, w, b, y]), ("lin_gemm", [x, w, b, y2])])
    program()
    expected = aligned_empty((1, 16))
    bind(load_module(library)["lin_gemv"], x, w, b, expected)()
    assert np.array_equal(y, expected) and np.array_equal(y2, expected)
    np.testing.assert_allclose(y, x @ dense.T + b, rtol=1e-5, atol=1e-5)
    x[...] = 0
    program()
    assert np.array_equal(y[0], b) and np.array_equal(y2[0], b)
    seconds = program.timed()
    assert seconds.shape == (2,) and (seconds > 0).all()


@pytest.mark.parametrize("args, error, message", [
    (lambda x, w, b, y: [x, w, b], TypeError, "kernel lin_gemv: Expected 4 arguments"),
    (lambda x, w, b, y: [aligned_empty((1, 31)), w, b, y], ValueError, "kernel lin_gemv: Invalid x.shape[1]"),
    (lambda x, w, b, y: [x, w, b, aligned_empty((1, 16), "int32")], TypeError, "kernel lin_gemv: Mismatched y.dtype"),
], ids=["arity", "shape", "dtype"])
def test_a_kernel_error_stops_the_program_with_its_message(library: Path, linear, args, error, message) -> None:
    """The failing call's error (kind -> exception class, TVM's message) names the kernel; later calls do not run."""
    x, w, b, y, _ = linear
    after = aligned_empty((1, 16))
    after[...] = 7
    program = KernelLibrary(library).program([("lin_gemv", args(x, w, b, y)), ("lin_gemm", [x, w, b, after])])
    with pytest.raises(error) as caught:
        program()
    assert str(caught.value).startswith(message)
    assert (after == 7).all()


def test_unaligned_buffers_and_unknown_kernels_are_refused(library: Path, linear) -> None:
    x, w, b, y, _ = linear
    lib = KernelLibrary(library)
    with pytest.raises(ValueError, match="64-byte aligned"):
        lib.program([("lin_gemv", [aligned_empty(33)[1:].reshape(1, 32), w, b, y])])
    with pytest.raises(AttributeError, match="no function 'lin_nope'"):
        lib.program([("lin_nope", [x, w, b, y])])


def test_a_library_without_the_driver_is_a_damaged_build(tmp_path: Path) -> None:
    """A kernel library an older graphllm exported (no driver) is refused as damaged, so the cache rebuilds it."""
    old = tmp_path / "kernels.so"
    build_module(linear_kernels(32, 16, bias=False, name="old")).export_library(str(old))
    with pytest.raises(DamagedBuild, match="no step driver"):
        KernelLibrary(old)


def test_the_driver_source_is_part_of_the_build_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed driver.c changes codegen_hash (so every cached build is rebuilt with it)."""
    sources = tmp_path / "codegen"
    sources.mkdir()
    (sources / "a.py").write_text("x = 1\n")
    (sources / "driver.c").write_text("int f(void) { return 1; }\n")
    monkeypatch.setattr(builds, "CODEGEN_SOURCES", sources)
    builds.codegen_hash.cache_clear()
    try:
        before = builds.codegen_hash()
        (sources / "driver.c").write_text("int f(void) { return 2; }\n")
        builds.codegen_hash.cache_clear()
        assert builds.codegen_hash() != before
    finally:
        builds.codegen_hash.cache_clear()


@pytest.fixture(scope="module")
def tiny() -> LLM:
    """The tiny Llama on the compiled executor (built into the cache once)."""
    return LLM.load(TINY, executor="tvm", max_context=64, num_slots=1)


def test_a_kernel_error_in_a_step_names_the_kernel(tiny: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that fails inside a step's native program raises its error; the executor's next step still runs."""
    executor = tiny.executor
    first = next(i for i, s in enumerate(executor.steps) if not isinstance(s, HostStep))
    broken = dataclasses.replace(executor.steps[first], args=executor.steps[first].args[:-1])
    good = tiny.step([5, 6, 7], range(3), [3], [0])
    monkeypatch.setattr(executor, "steps", [broken, *executor.steps[first + 1:]])
    with pytest.raises(TypeError, match=rf"^kernel {executor.plan.kernel_symbol(broken, 5, 1)}: Expected"):
        executor.run([1, 2, 3, 4, 5], range(5), [5], [0])
    monkeypatch.undo()
    executor._bindings.pop((5, 1))
    assert np.array_equal(tiny.step([5, 6, 7], range(3), [3], [0]), good)


def test_profile_reports_its_keys(tiny: LLM) -> None:
    prof = tiny.executor.profile(1, 1, repeat=2)
    assert set(prof) == {"step_s", "kernels_s", "launches", "ffi_call_s"}
    assert prof["launches"] == len(tiny.executor.steps)
    assert 0 < prof["ffi_call_s"] < prof["kernels_s"] and prof["step_s"] > 0


def test_the_cpu_run_path_never_imports_tvm_ffi(tiny: LLM) -> None:
    """A fresh process loads the cached build and runs steps with only the native libraries (no tvm_ffi, no tvm)."""
    code = f"""
        import sys
        from graphllm.runtime.llm import LLM
        llm = LLM.load({str(TINY)!r}, executor="tvm", max_context=64, num_slots=1)
        logits = llm.step([5, 6, 7], range(3), [3], [0])
        print(logits.tobytes().hex()[:64], "tvm_ffi" in sys.modules, "tvm" in sys.modules)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, check=True).stdout.split()
    assert out[1:] == ["False", "False"]
    assert out[0] == tiny.step([5, 6, 7], range(3), [3], [0]).tobytes().hex()[:64]
