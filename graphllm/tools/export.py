"""`graphllm export`: write a model with its Linear weights already quantized (an HF-style folder).

Quantized weights are stored as their raw blocks (uint8 [N, K/G*block_bytes]) under their own
names; config.json's ``graphllm_quantization`` says which tensors are blocks, of what format and
logical shape, so a later load skips quantization and computes on the blocks directly.
float16 / bfloat16 weights are stored as F16 / BF16 tensors, which a later load keeps 16-bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ..dsl.graph import WEIGHT_OP
from ..dsl.types import TensorType
from ..runtime.llm import LLM
from ..io.loader import WeightSource
from ..io.output import FolderKind, check_output_folder, output_folder
from ..io.weights import HALF_DTYPES


def checkpoint_types(llm: LLM) -> dict[str, TensorType]:
    """The graph's dtype for every checkpoint tensor (the parts of a derived weight take its dtype)."""
    out: dict[str, TensorType] = {}
    shapes = llm.model.weights.tensors
    for node in llm.graph.nodes_of(WEIGHT_OP):
        d = llm.graph[node]
        for name in d["attrs"].get("concat") or [d["name"]]:
            if name in shapes:  # a folded constant (fold_constants) is computed at load, not exported
                out[name] = TensorType(tuple(shapes[name].shape), d["type"].dtype)
    return out

QUANT_KEY = "graphllm_quantization"
EXPORT_FOLDER = FolderKind("export", frozenset({"model.safetensors", "config.json", "generation_config.json",
                                                 "tokenizer.json", "tokenizer_config.json"}), "model.safetensors",
                           replaces=False)


def export_model(llm: LLM, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write llm's weights as its graph types want them (blocks, 16-bit or float32) + config + tokenizer."""
    check_output_folder(Path(out_dir).expanduser().absolute(), EXPORT_FOLDER, force=force)
    source = WeightSource(llm.model, checkpoint_types(llm))
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for name in llm.model.weights:
        t = source.types.get(name)
        if t is not None and t.quantized:
            dtypes[name], shapes[name] = t.dtype, list(t.shape)
            tensors[name] = np.ascontiguousarray(source[name], dtype=np.uint8)
        elif t is not None and t.dtype in HALF_DTYPES:
            tensors[name] = np.ascontiguousarray(source[name])
        else:
            tensors[name] = np.ascontiguousarray(llm.model.weights[name], dtype=np.float32)
    config = {k: v for k, v in llm.model.config.items() if k != QUANT_KEY}
    if dtypes:
        config[QUANT_KEY] = {"format_version": 1, "dtypes": dtypes, "shapes": shapes}
    with output_folder(out_dir, EXPORT_FOLDER, force=force) as tmp:
        _write(tmp, llm, tensors, config)
    return Path(out_dir)


def _write(tmp: Path, llm: LLM, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """The exported files: weights, config, generation config, tokenizer."""
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(llm.model.generation_config, indent=2))
    tok = llm.tokenizer
    if tok is not None:
        tok.hf.save(str(tmp / "tokenizer.json"))
        bos = tok.hf.id_to_token(tok.bos_token_id) if tok.bos_token_id is not None else None
        eos = tok.hf.id_to_token(tok.eos_token_ids[0]) if tok.eos_token_ids else None
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": tok.chat_template, "bos_token": bos, "eos_token": eos, "add_bos_token": tok.add_bos},
            indent=2))
