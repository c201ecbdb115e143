"""Built-in model descriptions, each a ComputeGraph file; picked from config.json."""

from __future__ import annotations

from typing import Any

import re
from collections.abc import Mapping

from ..dsl.arch import ArchConfig
from ..dsl.graph import ComputeGraph
from ..dsl.types import TensorType
from ..errors import ConfigError, ModelLoadError

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


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def check_sizes(config: Mapping[str, Any], types: Mapping[str, TensorType]) -> None:
    """The config's sizes against the checkpoint's tensors (HF names, as every loader gives them): a config that
    contradicts the weights is a ConfigError naming the value and the tensor, not a silently wrong model."""
    arch = ArchConfig.from_config(config)
    hidden, hd = arch.hidden_size, arch.head_dim
    expected = {
        "model.embed_tokens.weight": ((arch.vocab_size or _rows(types, "model.embed_tokens.weight"), hidden),
                                      "vocab_size, hidden_size"),
        "model.layers.0.self_attn.q_proj.weight": ((arch.num_heads * hd, hidden), "num_attention_heads * head_dim, hidden_size"),
        "model.layers.0.self_attn.k_proj.weight": ((arch.num_kv_heads * hd, hidden),
                                                   "num_key_value_heads * head_dim, hidden_size"),
        "model.layers.0.mlp.up_proj.weight": ((arch.intermediate_size, hidden), "intermediate_size, hidden_size"),
    }
    for name, (shape, what) in expected.items():
        t = types.get(name)
        if t is not None and tuple(t.shape) != shape:
            raise ConfigError(f"config ({what}) = {shape} contradicts the checkpoint: {name} is {list(t.shape)}")
    layers = {int(m.group(1)) for name in types if (m := _LAYER.match(name))}
    if layers and max(layers) + 1 != arch.num_layers:
        raise ConfigError(f"config num_hidden_layers = {arch.num_layers} contradicts the checkpoint, which has "
                          f"{max(layers) + 1} layers (model.layers.0 .. {max(layers)})")


def _rows(types: Mapping[str, TensorType], name: str) -> int:
    return int(types[name].shape[0]) if name in types else 0
