"""The reserved graph inputs (fastllm's names), their types, and the RoPE tables fed to sin/cos."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .arch import LOCAL_ROPE_INPUTS, Rope, context_limit, local_rope
from .types import SEQS, TOKENS, TensorType

OUTPUT = "logits"
RESERVED_INPUTS = ("inputIds", "positionIds", "seqLens", "attentionMask", "sin", "cos", "atype", *LOCAL_ROPE_INPUTS)
CACHE_PREFIXES = ("pastKey.", "pastValue.")


def input_types(config: Mapping[str, Any]) -> dict[str, TensorType]:
    """Types of the reserved inputs (RESERVED_INPUTS) a step provides, for a config with max_positions set."""
    table = (context_limit(config), Rope.from_config(config).pairs)
    return {
        "inputIds": TensorType((TOKENS,), "int32"),
        "positionIds": TensorType((TOKENS,), "int32"),
        "seqLens": TensorType((SEQS,), "int32"),
        "attentionMask": TensorType((TOKENS,), "int32"),
        "sin": TensorType(table, "float32"),
        "cos": TensorType(table, "float32"),
        "atype": TensorType((), "float32"),
        "sinLocal": TensorType(table, "float32"),
        "cosLocal": TensorType(table, "float32"),
    }


def rope_inv_freq(rope: Rope) -> np.ndarray:
    """Inverse frequencies of every rotated pair, with the rope's scaling applied."""
    exponent = np.arange(0, 2 * rope.pairs, 2).astype(np.float32) / np.float32(2 * rope.pairs)
    inv = (1.0 / np.power(np.float32(rope.theta), exponent)).astype(np.float32)
    if rope.scaling == "linear":
        inv = (inv / np.float32(rope.factor)).astype(np.float32)
    elif rope.scaling == "llama3":
        low, high, old = rope.low_freq_factor, rope.high_freq_factor, float(rope.original_max_positions)
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv / rope.factor, inv)
        mid = (1 - smooth) * inv / rope.factor + smooth * inv
        inv = np.where((wavelen >= old / high) & (wavelen <= old / low), mid, scaled).astype(np.float32)
    if rope.freq_factors:
        inv = (inv / np.asarray(rope.freq_factors, np.float32)).astype(np.float32)
    return inv


def _tables(rope: Rope, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos [positions, rotaryDim] of one rope, in float32 as transformers computes them."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * rope_inv_freq(rope)[None, :]
    return np.sin(angles), np.cos(angles)


def rope_tables(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The RoPE inputs of a graph's config: sin, cos, and sinLocal, cosLocal (the sliding layers' rope of
    Gemma 3; the same arrays as sin, cos when the config has one rope), each [max_positions, rotaryDim].

    Computed in float32 as transformers does, so positions far into the context round alike.
    """
    positions = context_limit(config)
    sin, cos = _tables(Rope.from_config(config), positions)
    local = local_rope(config)
    sin_local, cos_local = (sin, cos) if local is None else _tables(local, positions)
    return {"sin": sin, "cos": cos, "sinLocal": sin_local, "cosLocal": cos_local}
