"""Read a Hugging Face model folder: config.json, safetensors weights (one file or shards), generation_config.json.

Safetensors files are parsed here (an 8-byte header length, a JSON header, raw little-endian data)
and memory-mapped, so bf16 works without torch and tensors load only when asked.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from graphllm.dsl import qformats
from graphllm.errors import ConfigError, ModelLoadError
from graphllm.io.weights import FLOAT_DTYPES, TensorWeights

# safetensors dtype -> (numpy dtype of the stored bytes, name used in file_type and graph types)
_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    "F64": (np.dtype("<f8"), "float64"),
    "U8": (np.dtype("u1"), "uint8"),  # raw quantized blocks (graphllm export)
}
QUANT_KEY = "graphllm_quantization"
_MAX_HEADER = 100 * 1024 * 1024


def read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    """Parse a JSON object file; a missing optional file gives None, malformed JSON a ConfigError with the line."""
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path}: file not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class SafeTensor:
    """One tensor of a safetensors file: its raw bytes (memory-mapped) and how to widen them to float32."""

    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, F64
    shape: tuple[int, ...]
    data: np.ndarray = field(repr=False)  # uint8 view of the file
    file: Path | None = field(default=None, repr=False, compare=False)  # the file `data` is a view of ...
    offset: int = field(default=0, repr=False, compare=False)  # ... from this byte on

    def span(self) -> tuple[Path, int, int] | None:
        """The file, offset and length of this tensor's bytes (None off a file)."""
        return None if self.file is None else (self.file, self.offset, self.data.nbytes)

    def load(self) -> np.ndarray:
        """The tensor as float32 (a read-only view of the file for F32, a widened copy otherwise)."""
        return self.stored().astype(np.float32, copy=False)

    def stored(self) -> np.ndarray:
        """The numbers as stored (float32, float16, ml_dtypes.bfloat16, ...): a read-only view of the file."""
        return self.data.view(_DTYPES[self.dtype][0]).reshape(self.shape)

    @property
    def float_dtype(self) -> str | None:
        """float32, float16 or bfloat16 for tensors stored as that type, else None."""
        name = _DTYPES[self.dtype][1]
        return name if name in FLOAT_DTYPES else None

    @property
    def qformat(self) -> None:
        """Plain tensors hold numbers, not blocks."""
        return None


@dataclass(frozen=True)
class BlockTensor:
    """A tensor stored as raw quantized blocks (written by `graphllm export`): logical shape [N, K]."""

    name: str
    qformat: str
    shape: tuple[int, ...]
    stored: SafeTensor = field(repr=False)

    def span(self) -> tuple[Path, int, int] | None:
        """The file, offset and length of the blocks' bytes (None off a file)."""
        return self.stored.span()

    def raw(self) -> np.ndarray:
        """The blocks, uint8 [N, K/G*block_bytes]."""
        return self.stored.data.reshape(self.stored.shape)

    def load(self) -> np.ndarray:
        """The tensor decoded to float32."""
        return qformats.dequantize(self.raw(), self.qformat, self.shape)

    @property
    def float_dtype(self) -> None:
        """Blocks are not plain numbers."""
        return None


def _block_tensors(config: dict[str, Any], tensors: dict[str, SafeTensor], folder: Path) -> None:
    """Replace the tensors config.json's graphllm_quantization names by BlockTensors (in place)."""
    spec = config.get(QUANT_KEY) or {}
    for name, dtype in (spec.get("dtypes") or {}).items():
        shape = tuple(spec.get("shapes", {}).get(name) or ())
        fmt = qformats.qformat(str(dtype))
        stored = tensors.get(name)
        if fmt is None or len(shape) != 2 or stored is None or stored.dtype != "U8" \
                or stored.shape != (shape[0], fmt.row_bytes(shape[1])):
            raise ModelLoadError(f"{folder}: {QUANT_KEY} entry for {name!r} ({dtype}, {list(shape)}) does not match "
                                 f"the stored tensor")
        tensors[name] = BlockTensor(name, fmt.name, shape, stored)


def _parse_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The header length and JSON header of a .safetensors file."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            (size,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 0 < size <= _MAX_HEADER:
                raise ModelLoadError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(size))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    return size, header


def read_safetensors(path: Path) -> dict[str, SafeTensor]:
    """The tensors of one .safetensors file, memory-mapped and checked against the file size."""
    size, header = _parse_header(path)
    buffer = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    tensors: dict[str, SafeTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, (begin, end), shape = info["dtype"], info["data_offsets"], tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: corrupt header entry for tensor {name!r}: {info!r}") from exc
        if dtype not in _DTYPES:
            raise ModelLoadError(f"{path}: tensor {name!r} has dtype {dtype}; supported: {', '.join(_DTYPES)}")
        start, stop = 8 + size + begin, 8 + size + end
        if stop > buffer.size or end - begin != int(np.prod(shape)) * _DTYPES[dtype][0].itemsize:
            raise ModelLoadError(f"{path}: tensor {name!r} lies outside the file or has a wrong size (truncated?)")
        tensors[name] = SafeTensor(name, dtype, shape, buffer[start:stop], path, start)
    return tensors


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: model.safetensors, or the shards named by its index."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index_path = folder / "model.safetensors.index.json"
    index = read_json(index_path, required=False)
    if index is None:
        raise ModelLoadError(
            f"{folder}: no model.safetensors or model.safetensors.index.json "
            "(only safetensors checkpoints are supported)"
        )
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError(f"{index_path}: lacks a non-empty 'weight_map' object")
    files = [folder / name for name in dict.fromkeys(weight_map.values())]
    for f in files:
        if not f.is_file():
            raise ModelLoadError(f"{index_path}: names the shard {f.name}, which is missing")
    return files


@dataclass
class HFModel:
    """An opened HF folder: config, lazy float32 weights, generation config and file type."""

    path: Path
    config: dict[str, Any]
    weights: TensorWeights
    generation_config: dict[str, Any]
    file_type: str


def open_hf_folder(folder: str | os.PathLike[str]) -> HFModel:
    """Open an HF model folder: config.json, safetensors weights (lazy), optional generation_config.json."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    tensors: dict[str, SafeTensor] = {}
    for f in _weight_files(folder):
        tensors.update(read_safetensors(f))
    _block_tensors(config, tensors, folder)
    generation_config = read_json(folder / "generation_config.json", required=False) or {}
    counts = Counter(t.qformat or _DTYPES[t.dtype][1] for t in tensors.values())
    file_type = f"safetensors:{counts.most_common(1)[0][0] if counts else 'empty'}"
    return HFModel(folder, config, TensorWeights(tensors), generation_config, file_type)
