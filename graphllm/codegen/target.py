"""The TVM target of this host: LLVM's CPU name, checked against the ISA that cpuinfo lists.

`detect_target` imports the TVM compiler when it is called (the runtime never calls it).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
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
