"""The one entry point for models: `load_model(path)` for an HF folder, a .gguf file or the default model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphllm.errors import ModelLoadError
from graphllm.io import download
from graphllm.io.gguf import open_gguf
from graphllm.io.hf import open_hf_folder
from graphllm.dsl import ops as O
from graphllm.dsl import qformats
from graphllm.dsl.types import TensorType
from graphllm.io.tokenizer import Tokenizer
from graphllm.io.weights import HALF_DTYPES, to_float_dtype

_EXPECTED = "expected a .gguf file or a Hugging Face model folder (config.json, model.safetensors, tokenizer.json)"


@dataclass
class LoadedModel:
    """A model ready for graph building: HF config, float32 HF-named weights (lazy), tokenizer."""

    config: dict[str, Any]
    weights: Mapping[str, np.ndarray]
    tokenizer: Tokenizer | None  # None only for an HF folder without tokenizer.json
    generation_config: dict[str, Any]
    path: Path
    file_type: str  # e.g. "gguf:Q4_1", "safetensors:bfloat16"


def weight_types(model: LoadedModel, native: bool = True) -> dict[str, TensorType]:
    """Every weight's graph type, without reading any: when ``native``, GGUF Q8_0/Q4_0/Q4_1 matrices keep
    their block format and float16/bfloat16 matrices (GGUF or safetensors) their 16-bit type (kernels
    decode or widen inside the loop); everything else is float32."""
    out = {}
    for name, t in model.weights.tensors.items():
        stored = t.qformat or (t.float_dtype if t.float_dtype in HALF_DTYPES and len(t.shape) == 2 else None)
        out[name] = TensorType(tuple(t.shape), (stored if native else None) or "float32")
    return out


class WeightSource(Mapping[str, np.ndarray]):
    """Weights as a graph's types want them: raw blocks for block-quantized types, float16 or
    ml_dtypes.bfloat16 arrays for the 16-bit types, else float32.

    Stored blocks of the wanted format and stored 16-bit numbers of the wanted type are passed through
    untouched; other weights are quantized or rounded (to nearest even) here when the graph asks for a
    block format (``--dtype int8`` / ``int4g``) or a 16-bit type (``--dtype float16`` / ``bfloat16``).
    """

    def __init__(self, model: LoadedModel, types: Mapping[str, TensorType],
                 parts: Mapping[str, list[str]] | None = None, folds: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.model, self.types, self.parts, self.folds = model, types, dict(parts or {}), dict(folds or {})

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.parts:  # a weight a pass derived: the rows of several checkpoint tensors
            t = self.types[name]
            return np.concatenate([self._value(p, TensorType(self._shape(p), t.dtype)) for p in self.parts[name]])
        return self._value(name, self.types.get(name))

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.model.weights.tensors[name].shape)

    def _float(self, name: str) -> np.ndarray:
        """A weight's float32 value: a checkpoint tensor, or a folded computation (fold_constants) evaluated."""
        if name in self.parts:
            return np.concatenate([self._float(p) for p in self.parts[name]])
        if name not in self.folds:
            return np.asarray(self.model.weights[name], dtype=np.float32)
        return self._evaluate(self.folds[name])

    def _evaluate(self, fold: dict[str, Any]) -> np.ndarray:
        """A folded computation {op, attrs, inputs: port -> weight name or a nested fold} by the op's reference."""
        spec = O.get_spec(fold["op"])
        attrs = {p.name: p.default for p in spec.attr_params if p.default is not None} | fold["attrs"]
        inputs = {port: self._evaluate(w) if isinstance(w, dict) else self._float(w) for port, w in fold["inputs"].items()}
        return np.asarray(spec.reference(inputs, attrs, O.RefContext()), dtype=np.float32)

    def _value(self, name: str, t: TensorType | None) -> np.ndarray:
        if t is None or not (t.quantized or t.dtype in HALF_DTYPES):
            return self._float(name) if name in self.folds else self.model.weights[name]
        tensor = self.model.weights.tensors.get(name)
        if t.quantized:
            if tensor is not None and tensor.qformat == t.dtype:
                return tensor.raw()
            return qformats.quantize(self._float(name), t.dtype)
        if tensor is not None and tensor.float_dtype == t.dtype:
            return tensor.stored()
        return to_float_dtype(self._float(name), t.dtype)

    def span(self, name: str) -> tuple[Path, int, int] | None:
        """The file, offset and length of a checkpoint tensor's bytes as stored (None for a derived weight or one
        not read from a file): what a warm start reads back, once checked to equal the weight the graph takes."""
        tensor = self.model.weights.tensors.get(name)
        if name in self.parts or name in self.folds or tensor is None:
            return None
        return tensor.span() if hasattr(tensor, "span") else None

    def __iter__(self) -> Iterator[str]:
        yield from self.model.weights
        yield from self.parts
        yield from self.folds

    def __len__(self) -> int:
        return len(self.model.weights) + len(self.parts) + len(self.folds)

    def __contains__(self, name: object) -> bool:
        return name in self.model.weights or name in self.parts or name in self.folds


def _load_gguf(path: Path) -> LoadedModel:
    """A GGUF file: config and tokenizer from its metadata; eos ids include the chat template's end of turn."""
    model = open_gguf(path)
    tokenizer = Tokenizer.from_gguf(model.fields)
    generation_config = {"eos_token_id": tokenizer.eos_token_ids}
    if tokenizer.bos_token_id is not None:
        generation_config["bos_token_id"] = tokenizer.bos_token_id
    return LoadedModel(model.config, model.weights, tokenizer, generation_config, path, model.file_type)


def _load_hf(path: Path) -> LoadedModel:
    """An HF folder: config.json, safetensors, generation_config.json and tokenizer files."""
    if not (path / "config.json").is_file():
        what = "is empty" if not any(path.iterdir()) else "has no config.json"
        raise ModelLoadError(f"{path}: the folder {what}; {_EXPECTED}")
    model = open_hf_folder(path)
    tokenizer = Tokenizer.from_hf_folder(path) if (path / "tokenizer.json").is_file() else None
    generation_config = dict(model.generation_config)
    if tokenizer is not None:
        generation_config["eos_token_id"] = tokenizer.eos_token_ids
    return LoadedModel(model.config, model.weights, tokenizer, generation_config, path, model.file_type)


def load_model(path: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Load a model: None = the default (downloaded once), a folder = HF checkpoint, a .gguf file = GGUF."""
    resolved = download.default_model_path() if path is None else Path(path).expanduser()
    if resolved.is_dir():
        return _load_hf(resolved)
    if resolved.is_file() and resolved.suffix.lower() == ".gguf":
        return _load_gguf(resolved)
    if not resolved.exists():
        raise ModelLoadError(f"{resolved}: no such file or folder; {_EXPECTED}")
    raise ModelLoadError(f"{resolved}: unknown model file kind; {_EXPECTED}")
