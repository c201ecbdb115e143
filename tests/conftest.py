"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphllm.errors import ModelLoadError
from graphllm.io import download


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
