"""GGUF architectures beyond llama/qwen2: per-architecture tensor names, Gemma's stored 1 + w norms, Gemma 3's
and Llama 3's RoPE metadata, llama.cpp's defaults, and the rope scaling graphllm refuses."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.dsl.arch import ArchConfig
from graphllm.errors import ModelLoadError
from graphllm.io.gguf import build_config, hf_tensor_name, open_gguf

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_tensor_names_follow_the_architecture():
    assert hf_tensor_name("blk.1.ffn_norm.weight", "llama") == "model.layers.1.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.1.ffn_norm.weight", "gemma2") == "model.layers.1.pre_feedforward_layernorm.weight"
    assert hf_tensor_name("blk.1.post_attention_norm.weight", "gemma3") == \
        "model.layers.1.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.0.post_ffw_norm.weight", "gemma3") == "model.layers.0.post_feedforward_layernorm.weight"
    assert hf_tensor_name("blk.0.attn_k_norm.weight", "qwen3") == "model.layers.0.self_attn.k_norm.weight"
    assert hf_tensor_name("blk.0.attn_qkv.weight", "phi3") == "model.layers.0.self_attn.qkv_proj.weight"
    assert hf_tensor_name("blk.0.ffn_up.weight", "phi3") == "model.layers.0.mlp.gate_up_proj.weight"


def test_gemma_norms_are_read_back_as_the_checkpoint_holds_them():
    model = open_gguf(FIXTURES / "gguf" / "tiny_gemma3.F32.gguf")
    hf = load_file(FIXTURES / "tiny_gemma3" / "model.safetensors")
    for name in ("model.norm.weight", "model.layers.0.self_attn.q_norm.weight",
                 "model.layers.1.post_feedforward_layernorm.weight"):
        assert model.tensors[name].float_dtype is None  # never handed over as stored (1 + w)
        np.testing.assert_allclose(model.weights[name], hf[name], atol=1e-6, rtol=0)
    assert model.tensors["model.layers.0.self_attn.q_proj.weight"].float_dtype == "float32"
    arch = ArchConfig.from_config(model.config)
    assert (arch.windows, arch.local_layers, arch.local_rope.theta, arch.rope.scaling) == \
        ((4, None), (True, False), 10000.0, "linear")


def test_llama3_rope_factors_tensor_becomes_the_rope_frequency_divisors():
    model = open_gguf(FIXTURES / "gguf" / "tiny_llama3.Q8_0.gguf")
    factors = ArchConfig.from_config(model.config).rope.freq_factors
    assert factors == tuple(float(f) for f in model.weights["rope_freqs.weight"])
    assert factors[0] == 1.0 and factors[-1] == 8.0  # high frequencies kept, low ones divided by the factor


def write_metadata(path: Path, arch: str, layers: int, extra_tensor: str | None = None) -> None:
    """A GGUF of `arch` with llama.cpp's required metadata only, and at most one (unsupported) tensor."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_key_length(32)
    writer.add_layer_norm_rms_eps(1e-6)
    if extra_tensor:
        writer.add_tensor(extra_tensor, np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gemma3_defaults_are_llama_cpps(tmp_path: Path):
    write_metadata(tmp_path / "g.gguf", "gemma3", 62)
    config = build_config(gguf.GGUFReader(str(tmp_path / "g.gguf")).fields, set(), tmp_path / "g.gguf")
    assert config["sliding_window_pattern"] == 6 and config["rope_local_base_freq"] == 10000.0
    assert config["query_pre_attn_scalar"] == 16  # the 27B's rule: hidden / heads, not head_dim
    assert config["model_type"] == "gemma3_text" and config["hidden_act"] == "gelu_pytorch_tanh"
    write_metadata(tmp_path / "s.gguf", "gemma3", 26)
    small = build_config(gguf.GGUFReader(str(tmp_path / "s.gguf")).fields, set(), tmp_path / "s.gguf")
    assert "query_pre_attn_scalar" not in small  # head_dim, ArchConfig's default


def test_longrope_is_refused_by_name(tmp_path: Path):
    write_metadata(tmp_path / "p.gguf", "phi3", 2, "rope_factors_long.weight")
    with pytest.raises(ModelLoadError, match=r"rope_factors_long\.weight.*LongRoPE .* is not supported"):
        open_gguf(tmp_path / "p.gguf")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path):
    write_metadata(tmp_path / "x.gguf", "falcon", 2)
    with pytest.raises(ModelLoadError, match="'falcon' is not supported .*gemma2, gemma3, llama, phi3, qwen2, qwen3"):
        open_gguf(tmp_path / "x.gguf")
