"""The reserved graph inputs (fastllm's names), their types, and the RoPE tables fed to sin/cos."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError
from .types import SEQS, TOKENS, TensorType

OUTPUT = "logits"
RESERVED_INPUTS = ("inputIds", "positionIds", "seqLens", "attentionMask", "sin", "cos", "atype")
CACHE_PREFIXES = ("pastKey.", "pastValue.")


def head_dim(config: dict[str, Any]) -> int:
    """Per-head size: config's head_dim, else hidden_size / num_attention_heads."""
    if config.get("head_dim"):
        return int(config["head_dim"])
    try:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError(f"config needs hidden_size and num_attention_heads to size the rotary tables ({e})")


def rotary_pairs(config: dict[str, Any]) -> int:
    """Number of rotated pairs per head (fastllm's rotaryDim): half the rotary dimension."""
    if config.get("rotary_dim"):
        return int(config["rotary_dim"]) // 2
    factor = config.get("partial_rotary_factor", (config.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0))
    return int(head_dim(config) * float(factor)) // 2


def input_types(config: dict[str, Any]) -> dict[str, TensorType]:
    """Types of the reserved inputs (RESERVED_INPUTS) a step provides, for a config with max_positions set."""
    return {
        "inputIds": TensorType((TOKENS,), "int32"),
        "positionIds": TensorType((TOKENS,), "int32"),
        "seqLens": TensorType((SEQS,), "int32"),
        "attentionMask": TensorType((TOKENS,), "int32"),
        "sin": TensorType((int(config["max_positions"]), rotary_pairs(config)), "float32"),
        "cos": TensorType((int(config["max_positions"]), rotary_pairs(config)), "float32"),
        "atype": TensorType((), "float32"),
    }


def rope_inv_freq(config: dict[str, Any]) -> np.ndarray:
    """Inverse frequencies of every rotated pair, with the config's rope_scaling applied."""
    pairs = rotary_pairs(config)
    params = config.get("rope_parameters") or {}
    theta = float(config.get("rope_theta", params.get("rope_theta", 10000.0)))
    exponent = np.arange(0, 2 * pairs, 2).astype(np.float32) / np.float32(2 * pairs)
    inv = (1.0 / np.power(np.float32(theta), exponent)).astype(np.float32)
    scaling = config.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        mid = (1 - smooth) * inv / factor + smooth * inv
        return np.where((wavelen >= old / high) & (wavelen <= old / low), mid, scaled).astype(np.float32)
    raise ConfigError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def rope_tables(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos tables [max_positions, rotaryDim] for data['sin'] / data['cos'].

    Computed in float32 as transformers does, so positions far into the context round alike.
    """
    inv = rope_inv_freq(config)
    angles = np.arange(int(config["max_positions"]), dtype=np.float32)[:, None] * inv[None, :]
    return np.sin(angles), np.cos(angles)
