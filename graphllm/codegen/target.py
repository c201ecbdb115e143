"""TVM targets: this host's (LLVM's CPU name, checked against the ISA that cpuinfo lists) and CUDA's (per arch).

`detect_target` and `cuda_target` import the TVM compiler when called (the runtime never calls them).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any

from ..errors import GraphLLMError
from ..host import cpu_flags, physical_cores

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


TARGET_KINDS = {"llvm": "cpu", "cuda": "cuda"}  # TVM target kind -> graphllm's kernel folder


def target_kind(target: Mapping[str, Any]) -> str:
    """Which kernels a TVM target dict gets ('cpu' for llvm); an unknown kind is a clear error."""
    kind = str(target.get("kind"))
    if kind not in TARGET_KINDS:
        raise GraphLLMError(f"TVM target kind {kind!r} has no graphllm kernels (known: {', '.join(TARGET_KINDS)})")
    return TARGET_KINDS[kind]


def detect_target() -> dict[str, object]:
    """Return the TVM target dict for this host's real ISA (never an ISA that cpuinfo lacks)."""
    mtriple, mcpu = _host_cpu()
    return {"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu, "num-cores": physical_cores()}


# The TVM tag whose limits (threads, shared memory, registers) a CUDA build for an arch takes.
CUDA_TAGS = {"sm_80": "nvidia/nvidia-a100", "sm_86": "nvidia/geforce-rtx-3090", "sm_89": "nvidia/geforce-rtx-4090",
             "sm_90": "nvidia/nvidia-h100"}
DEFAULT_CUDA_ARCHS = ("sm_80", "sm_90")
FATBIN_ARCHS = "fatbin_archs"  # graphllm's keys in a CUDA target dict: the archs nvcc compiles the kernels for,
SOURCE_DIGEST = "cuda_source_sha256"  # and the sha256 of the CUDA C the fatbin was compiled from


def cuda_target(archs: Sequence[str] = DEFAULT_CUDA_ARCHS) -> dict[str, Any]:
    """The TVM target dict of a CUDA build for `archs`: the oldest arch's tag limits, code generated for that arch
    (so it runs on all of them), and the archs themselves under FATBIN_ARCHS."""
    import tvm

    unknown = sorted(set(archs) - CUDA_TAGS.keys())
    if unknown or not archs:
        raise GraphLLMError(f"unsupported CUDA arch {', '.join(unknown) or '(none)'} (known: {', '.join(CUDA_TAGS)})")
    ordered = sorted(set(archs), key=lambda a: int(a[3:]))
    limits = dict(tvm.target.Target(CUDA_TAGS[ordered[0]]).attrs)
    return {"kind": "cuda", **{k: int(v) for k, v in limits.items() if k != "arch"}, "arch": ordered[0],
            FATBIN_ARCHS: ordered}


def tvm_target(target: Mapping[str, Any]) -> dict[str, Any]:
    """The target dict as TVM takes it (graphllm's own keys removed)."""
    return {k: v for k, v in target.items() if k not in (FATBIN_ARCHS, SOURCE_DIGEST)}
