"""HF folders: config.json, safetensors (f32/f16/bf16, shards), generation_config.json, and load_model's dispatch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors
from safetensors.numpy import save_file

from graphllm.errors import ConfigError, ModelLoadError
from graphllm.io.hf import open_hf_folder
from graphllm.io.loader import load_model

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8}


def write_raw_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file from raw bytes (numpy cannot hold bf16, so the safetensors package cannot write it)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def bf16_bytes(x: np.ndarray) -> bytes:
    """The bf16 encoding of float32 values (their top 16 bits)."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def make_folder(folder: Path, weights: dict[str, np.ndarray] | None = None, config: dict | None = None) -> Path:
    """An HF folder with config.json and model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    save_file(weights or {"a.weight": np.ones((2, 3), np.float32)}, str(folder / "model.safetensors"))
    return folder


def test_f32_f16_bf16(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((4, 6)).astype(np.float32)
    f16 = rng.standard_normal((3, 2)).astype(np.float16)
    bf = (rng.integers(-255, 256, size=(5, 7)) / 64).astype(np.float32)  # 8 significant bits: exact in bf16
    tmp_path.joinpath("config.json").write_text(json.dumps(CONFIG))
    write_raw_safetensors(tmp_path / "model.safetensors", {
        "f32": ("F32", f32.shape, f32.tobytes()),
        "f16": ("F16", f16.shape, f16.tobytes()),
        "bf16": ("BF16", bf.shape, bf16_bytes(bf)),
    })
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), "numpy") as f:  # a valid file
        assert set(f.keys()) == {"f32", "f16", "bf16"}
    model = open_hf_folder(tmp_path)
    assert np.array_equal(model.weights["f32"], f32)
    assert np.array_equal(model.weights["f16"], f16.astype(np.float32))
    assert np.array_equal(model.weights["bf16"], bf)
    assert all(model.weights[k].dtype == np.float32 for k in model.weights)
    assert model.config == CONFIG and model.generation_config == {}
    assert model.file_type == "safetensors:float32"


def test_bf16_file_type_and_special_values(tmp_path: Path) -> None:
    values = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 1e-40], np.float32)
    tmp_path.joinpath("config.json").write_text("{}")
    write_raw_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", (7,), bf16_bytes(values))})
    model = open_hf_folder(tmp_path)
    got = model.weights["w"]
    assert np.array_equal(got.view(np.uint32), (values.view(np.uint32) >> 16) << 16)
    assert model.file_type == "safetensors:bfloat16"


def test_sharded_checkpoint(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text(json.dumps(CONFIG))
    save_file({"a": np.full((2,), 1.0, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": np.full((3,), 2.0, np.float16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    tmp_path.joinpath("model.safetensors.index.json").write_text(json.dumps(index))
    weights = open_hf_folder(tmp_path).weights
    assert sorted(weights) == ["a", "b"] and len(weights) == 2
    assert np.array_equal(weights["b"], np.full((3,), 2.0, np.float32))
    assert "a" in weights and "c" not in weights
    with pytest.raises(KeyError):
        weights["c"]


def test_missing_shard(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text("{}")
    tmp_path.joinpath("model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(ModelLoadError, match="gone.safetensors"):
        open_hf_folder(tmp_path)


def test_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "config.json").write_text('{\n  "hidden_size": 8,\n  "x": ,\n}')
    with pytest.raises(ConfigError, match=r"config\.json: malformed JSON at line 3"):
        open_hf_folder(tmp_path)


def test_generation_config_optional_and_checked(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    assert open_hf_folder(tmp_path).generation_config == {"eos_token_id": [2, 3]}
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"generation_config\.json: malformed JSON at line 1"):
        open_hf_folder(tmp_path)


def test_missing_weights(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        open_hf_folder(tmp_path)


def test_unsupported_dtype_and_truncation(tmp_path: Path) -> None:
    make_folder(tmp_path, {"ids": np.arange(4, dtype=np.int64)})
    with pytest.raises(ModelLoadError, match="'ids' has dtype I64"):
        open_hf_folder(tmp_path)
    make_folder(tmp_path, {"w": np.ones((64, 64), np.float32)})
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="'w' lies outside the file"):
        open_hf_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        open_hf_folder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}")
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        open_hf_folder(tmp_path)


# ---------------------------------------------------------------- load_model dispatch
def test_load_model_hf_folder(tmp_path: Path) -> None:
    make_folder(tmp_path, {"model.norm.weight": np.ones((8,), np.float32)})
    model = load_model(tmp_path)
    assert model.path == tmp_path and model.file_type == "safetensors:float32"
    assert model.tokenizer is None  # no tokenizer.json in this folder
    assert np.array_equal(model.weights["model.norm.weight"], np.ones(8, np.float32))


def test_load_model_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"absent.*no such file or folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty: the folder is empty"):
        load_model(tmp_path / "empty")
    (tmp_path / "noconf").mkdir()
    (tmp_path / "noconf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"noconf: the folder has no config\.json"):
        load_model(tmp_path / "noconf")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"model\.bin: unknown model file kind"):
        load_model(tmp_path / "model.bin")
