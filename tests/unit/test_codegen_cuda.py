"""CUDA codegen without a GPU: every op's CUDA lowering builds, nvcc compiles it without spills, the tiny
families compile into artifacts holding a fatbin, and --device cuda fails in one line where there is no GPU."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphllm.codegen.build import build_module, compile_fatbin, cuda_source, fatbin_entries
from graphllm.codegen.lower import lower
from graphllm.codegen.target import cuda_target
from graphllm.errors import GraphLLMError
from graphllm.plan import FATBIN_FILE, LIB_FILE, Plan
from test_codegen_ops import ATTENTION, KNOB_SAMPLES, case

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
ROPE = {**ATTENTION, "positionIds": "i32[T]", "sin": "f32[160,32]", "cos": "f32[160,32]"}
CUDA_CASES = KNOB_SAMPLES + [
    case("Linear", {"input": "f32[T,256]", "weight": "q4_0[40,256]", "bias": "f32[40]"}),
    case("Linear", {"input": "f32[T,256]", "weight": "q8_0[48,256]"}),
    case("Linear", {"input": "f32[T,256]", "weight": "f16[48,256]"}),
    case("Embedding", {"input": "i32[T]", "weight": "q4_1[100,256]"}),
    case("Embedding", {"input": "i32[T]", "weight": "bf16[100,256]"}),
    case("FusedAttention", ROPE, scale=0.125, rotaryDim=32, window=16, softcap=50.0),
    case("QKVAttention", {"qkv": "f32[T,960]", "k": "f32[1]", "v": "f32[1]", "seqLens": "i32[B]",
                          "positionIds": "i32[T]", "sin": "f32[160,16]", "cos": "f32[160,16]"},
         numHeads=9, numKVHeads=3, scale=0.125, rotaryDim=16),
    case("FusedAttention", ROPE, scale=0.125, rotaryDim=32, window=16, kvDtype="float16"),  # half cache: write + read
    case("QKVAttention", {"qkv": "f32[T,960]", "k": "f32[1]", "v": "f32[1]", "seqLens": "i32[B]"},
         numHeads=9, numKVHeads=3, scale=0.125, kvDtype="float16"),
]


@needs_nvcc
def test_every_op_builds_for_cuda_and_nvcc_compiles_it_without_spills() -> None:
    """Each op's CUDA kernels (all variants, the KV-cache write too, over float32 and float16 caches) go through TVM's CUDA codegen into one module;
    nvcc compiles that CUDA C for sm_80 and sm_90 and ptxas reports no spill for any kernel."""
    funcs = {}
    for c in CUDA_CASES:
        kernel = lower(c.request(), "cuda")
        for i, stage in enumerate([*kernel.before, kernel]):
            funcs[f"{c.request().key()}_{i}"] = stage.func
    source = cuda_source(build_module(funcs, cuda_target(("sm_80", "sm_90"))))
    assert len(re.findall(r"__global__", source)) >= len(funcs)
    assert "half* __restrict__ k_cache" in source and "float* __restrict__ k_cache" in source  # both cache dtypes
    fatbin, log = compile_fatbin(source, ["sm_80", "sm_90"], ["-Xptxas", "-v"])
    assert {("sass", 80), ("sass", 90), ("ptx", 90)} <= set(fatbin_entries(fatbin))
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), log


def _compile(family: str, out: Path) -> Plan:
    """Run `graphllm compile --device cuda --cuda-arch sm_80,sm_90` on a tiny fixture; return the artifact's plan."""
    done = subprocess.run([sys.executable, "-m", "graphllm.cli", "compile", "--device", "cuda", "--cuda-arch",
                           "sm_80,sm_90", "-m", str(FIXTURES / f"tiny_{family}"), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return Plan.load(out)


def _check_artifact(family: str, tmp_path: Path) -> None:
    """The artifact holds the library with the generated CUDA C and the fatbin for both archs; the plan says so."""
    plan = _compile(family, tmp_path / "art")
    assert plan.target["kind"] == "cuda" and plan.target["fatbin_archs"] == ["sm_80", "sm_90"]
    assert b"__global__" in (tmp_path / "art" / LIB_FILE).read_bytes()
    entries = fatbin_entries((tmp_path / "art" / FATBIN_FILE).read_bytes())
    assert {("sass", 80), ("sass", 90)} <= set(entries)


@needs_nvcc
def test_tiny_llama_compiles_for_cuda(tmp_path: Path) -> None:
    """graphllm compile --device cuda works here for the Llama family (no GPU needed)."""
    _check_artifact("llama", tmp_path)


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "phi3", "gemma2"])
def test_tiny_family_compiles_for_cuda(family: str, tmp_path: Path) -> None:
    """Every other built-in family's tiny fixture compiles for sm_80 and sm_90."""
    _check_artifact(family, tmp_path)


def _has_driver() -> bool:
    """Whether this machine has the CUDA driver library."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_has_driver(), reason="this machine has a CUDA driver")
@pytest.mark.parametrize("command", ["run", "bench"])
def test_device_cuda_without_gpu_is_a_one_line_error(command: str) -> None:
    """--device cuda on a machine without a GPU or driver: one line on stderr, exit 2, no traceback."""
    args = [sys.executable, "-m", "graphllm.cli", command, "--device", "cuda", "-m", str(FIXTURES / "tiny_llama")]
    done = subprocess.run([*args, *(["hi"] if command == "run" else [])], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda needs an NVIDIA GPU"), done.stderr


def test_unknown_cuda_arch_and_bad_device_are_clear_errors() -> None:
    """An arch without limits known here is refused by name; --device rejects what is not cpu, cuda, cuda:N."""
    with pytest.raises(GraphLLMError, match="sm_75"):
        cuda_target(("sm_75", "sm_90"))
    done = subprocess.run([sys.executable, "-m", "graphllm.cli", "run", "--device", "gpu", "hi"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "expected cpu, cuda or cuda:N" in done.stderr
