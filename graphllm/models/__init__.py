"""Built-in model descriptions, each a ComputeGraph file; picked from config.json."""

from __future__ import annotations

from typing import Any

from ..dsl.graph import ComputeGraph
from ..errors import ModelLoadError

ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3_text": ("Gemma3ForCausalLM", "gemma3"),
}


def builtin_model(config: dict[str, Any]) -> type[ComputeGraph]:
    """The description for a config's model_type / architectures; an unknown one is a clear error."""
    import importlib

    model_type = str(config.get("model_type", "")).lower()
    archs = config.get("architectures") or []
    for key, (arch, module) in ARCHITECTURES.items():
        if model_type == key or arch in archs:
            return importlib.import_module(f"graphllm.models.{module}").__model__
    raise ModelLoadError(
        f"unsupported architecture (model_type={model_type or '?'}, architectures={archs}); built-in: "
        f"{', '.join(sorted(ARCHITECTURES))}. Describe it in a ComputeGraph file and pass --custom FILE.py")
