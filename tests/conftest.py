"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphllm.errors import ModelLoadError
from graphllm.io import download


@pytest.fixture(scope="session")
def exact_kv() -> str:
    """The KV dtype of tests held to float32 oracles (transformers, the float32 reference) at float32 tolerances.

    Stated, not the default: the default float16 cache rounds keys and values, which moves logits by ~1e-3.
    """
    return "float32"


@pytest.fixture(scope="session")
def kv16_atol() -> float:
    """Absolute tolerance on logits (of O(1..10)) between two runs that each keep a float16 KV cache.

    Their caches differ only where a float32 difference of one ulp rounds to the neighbouring float16 (a change of
    one float16 ulp, 2^-10 relative: twice float16's rounding error); a few such keys or values move logits of
    O(1..10) far less than 1e-2 (tiny families: at most 8.2e-4). It also bounds how far rounding the cache to
    float16 moves logits from a float32 cache's (measured: up to 7.8e-3 on the tiny families, 9.2e-3 on SmolLM2).
    """
    return 1e-2


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded once); skips only if that is impossible."""
    try:
        return download.default_model_path()
    except ModelLoadError as exc:
        pytest.skip(f"the default model cannot be downloaded: {exc}")


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf: Path):
    """The real GGUF loaded once per session (a loader.LoadedModel; weights dequantize lazily)."""
    from graphllm.io.loader import load_model

    return load_model(smollm2_gguf)
