"""GGUF loading: own block decoders vs gguf's, HF renaming, Q/K un-permutation, config, errors."""

from __future__ import annotations

from pathlib import Path

import json
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from graphllm.errors import ConfigError, ModelLoadError
from graphllm.io.gguf import build_config, dequantize_raw, hf_tensor_name, open_gguf, unpermute_rows

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, VOCAB = 64, 4, 2, 96, 2, 40
HEAD_DIM = HIDDEN // HEADS

# GGUF layer tensor -> (HF suffix, shape, GGML type used in the synthetic file)
LAYER_TENSORS = {
    "attn_q": ("self_attn.q_proj", (HIDDEN, HIDDEN), QT.F32),
    "attn_k": ("self_attn.k_proj", (KV_HEADS * HEAD_DIM, HIDDEN), QT.F16),
    "attn_v": ("self_attn.v_proj", (KV_HEADS * HEAD_DIM, HIDDEN), QT.Q4_1),
    "attn_output": ("self_attn.o_proj", (HIDDEN, HIDDEN), QT.Q4_0),
    "ffn_gate": ("mlp.gate_proj", (FFN, HIDDEN), QT.Q8_0),
    "ffn_up": ("mlp.up_proj", (FFN, HIDDEN), QT.BF16),
    "ffn_down": ("mlp.down_proj", (HIDDEN, FFN), QT.Q4_1),
    "attn_norm": ("input_layernorm", (HIDDEN,), QT.F32),
    "ffn_norm": ("post_attention_layernorm", (HIDDEN,), QT.F32),
}


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> GGUF rows)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random HF-layout weights, with exactly representable values (multiples of 1/64) for F16/BF16."""
    rng = np.random.default_rng(seed)

    def rand(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.integers(-64, 64, size=shape) / 64).astype(np.float32)

    w = {"model.embed_tokens.weight": rand((VOCAB, HIDDEN)), "model.norm.weight": rand((HIDDEN,)),
         "lm_head.weight": rand((VOCAB, HIDDEN))}
    for i in range(LAYERS):
        for suffix, shape, _ in LAYER_TENSORS.values():
            w[f"model.layers.{i}.{suffix}.weight"] = rand(shape)
        if arch == "qwen2":
            for proj, n in (("q_proj", HIDDEN), ("k_proj", KV_HEADS * HEAD_DIM), ("v_proj", KV_HEADS * HEAD_DIM)):
                w[f"model.layers.{i}.self_attn.{proj}.bias"] = rand((n,))
    return w


def write_gguf(path: Path, arch: str = "llama", tied: bool = True, drop: tuple[str, ...] = (),
               types: dict[str, QT] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny llama/qwen2 GGUF the way llama.cpp's converter would; return the HF weights it holds."""
    weights = hf_weights(arch, seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    types = {**{k: v[2] for k, v in LAYER_TENSORS.items()}, **(types or {})}
    entries: list[tuple[str, str, QT]] = [
        ("token_embd.weight", "model.embed_tokens.weight", QT.Q8_0),
        ("output_norm.weight", "model.norm.weight", QT.F32),
    ]
    if not tied:
        entries.append(("output.weight", "lm_head.weight", QT.Q8_0))
    for i in range(LAYERS):
        for short, (suffix, _, _) in LAYER_TENSORS.items():
            entries.append((f"blk.{i}.{short}.weight", f"model.layers.{i}.{suffix}.weight", types[short]))
        if arch == "qwen2":
            for short, proj in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
                entries.append((f"blk.{i}.{short}.bias", f"model.layers.{i}.self_attn.{proj}.bias", QT.F32))
    for gname, hname, qtype in entries:
        if gname in drop:
            continue
        w = weights[hname]
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            w = converter_permute(w, HEADS if ".attn_q." in gname else KV_HEADS)
        if qtype == QT.F32:
            writer.add_tensor(gname, w)
        elif qtype == QT.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        elif qtype == QT.Q8_1:  # no quantizer anywhere: zero blocks of the right size
            n_bytes = w.shape[-1] // 32 * gguf.GGML_QUANT_SIZES[qtype][1]
            writer.add_tensor(gname, np.zeros((w.shape[0], n_bytes), np.uint8), raw_dtype=qtype)
        else:
            writer.add_tensor(gname, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if tied:
        del weights["lm_head.weight"]
    return weights


# ---------------------------------------------------------------- decoders
def _random_blocks(qtype: QT, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random raw blocks whose fp16/bf16 fields are finite (random bytes elsewhere)."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    if qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
        n_scales = 2 if qtype == QT.Q4_1 else 1
        scales = rng.standard_normal((n_blocks, n_scales)).astype(np.float16)
        scales[:4] = [[0.0] * n_scales, [-0.0] * n_scales, [6e-8] * n_scales, [65504.0] * n_scales]  # edge values
        raw[:, : 2 * n_scales] = scales.view(np.uint8)
    elif qtype == QT.F16:
        raw = rng.standard_normal((n_blocks, 1)).astype(np.float16).view(np.uint8)
    elif qtype == QT.BF16:
        top = rng.standard_normal((n_blocks, 1)).astype(np.float32).view(np.uint32) >> 16
        raw = top.astype(np.uint16).view(np.uint8)
    elif qtype == QT.F32:
        raw = rng.standard_normal((n_blocks, 1)).astype(np.float32).view(np.uint8)
    return raw


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.F16, QT.BF16, QT.F32])
def test_decoders_bit_exact_on_synthetic_blocks(qtype: QT) -> None:
    rng = np.random.default_rng(int(qtype))
    n_blocks = 40_000 if qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1) else 4096  # crosses the decode chunk size
    raw = _random_blocks(qtype, n_blocks, rng)
    block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
    rows = raw.reshape(40 if n_blocks == 40_000 else 64, -1)  # [rows, row_bytes]
    ours = dequantize_raw(rows, qtype)
    ref = gguf.quants.dequantize(rows, qtype)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.size == n_blocks * block_elems
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_decoders_bit_exact_on_real_file(smollm2_model) -> None:
    seen = set()
    for t in smollm2_model.weights.tensors.values():
        ours = dequantize_raw(t.data, t.ggml_type)
        ref = gguf.quants.dequantize(t.data, t.ggml_type)
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), t.gguf_name
        seen.add(t.ggml_type)
    assert seen == {QT.Q8_0, QT.Q4_1, QT.F32}


def test_decoder_values_follow_the_block_layout() -> None:
    d, m = np.float16(0.5), np.float16(-1.0)
    qs = np.arange(16, dtype=np.uint8) | (np.arange(16, dtype=np.uint8)[::-1] << 4)  # low 0..15, high 15..0
    q4_1 = np.concatenate([np.array([d]).view(np.uint8), np.array([m]).view(np.uint8), qs])[None]
    expected = np.concatenate([np.arange(16), np.arange(16)[::-1]]) * 0.5 - 1.0
    assert np.array_equal(dequantize_raw(q4_1, QT.Q4_1)[0], expected.astype(np.float32))
    q4_0 = np.concatenate([np.array([d]).view(np.uint8), qs])[None]
    assert np.array_equal(dequantize_raw(q4_0, QT.Q4_0)[0], ((expected + 1.0) - 4.0).astype(np.float32))
    q8 = np.concatenate([np.array([d]).view(np.uint8), np.arange(-16, 16, dtype=np.int8).view(np.uint8)])[None]
    assert np.array_equal(dequantize_raw(q8, QT.Q8_0)[0], np.arange(-16, 16, dtype=np.float32) * 0.5)


def test_unsupported_types_fall_back_to_gguf(tmp_path: Path) -> None:
    w = write_gguf(tmp_path / "m.gguf", types={"ffn_up": QT.MXFP4})
    model = open_gguf(tmp_path / "m.gguf")
    name = "model.layers.0.mlp.up_proj.weight"
    assert model.tensors[name].ggml_type == QT.MXFP4
    assert np.allclose(model.weights[name], w[name], atol=0.25)  # 4-bit floats (e2m1) with a shared exponent


# ---------------------------------------------------------------- names, permutation, config
def test_hf_names() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert hf_tensor_name("rope_freqs.weight") == "rope_freqs.weight"


def test_unpermute_inverts_the_converter() -> None:
    w = np.arange(48 * 3).reshape(48, 3)
    for n_head in (1, 2, 3, 4, 6):
        assert np.array_equal(converter_permute(w, n_head)[unpermute_rows(48, n_head)], w)


def test_synthetic_llama_weights_equal_hf(tmp_path: Path) -> None:
    hf = write_gguf(tmp_path / "m.gguf", tied=False)
    model = open_gguf(tmp_path / "m.gguf")
    assert set(model.weights) == set(hf)
    assert len(model.weights) == len(hf)
    for name, ref in hf.items():
        got = model.weights[name]
        assert got.dtype == np.float32 and got.shape == ref.shape, name
        qtype = model.tensors[name].ggml_type
        if qtype in (QT.F32, QT.F16, QT.BF16):  # lossless for these values: un-permutation is exact
            assert np.array_equal(got, ref), name
        else:  # quantized: close to HF (a wrong row order would be far off)
            assert np.abs(got - ref).max() <= (0.02 if qtype == QT.Q8_0 else 0.15), name
    q = model.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert (q.gguf_name, q.n_head, q.ggml_type, q.shape) == ("blk.0.attn_q.weight", HEADS, QT.F32, (HIDDEN, HIDDEN))
    assert model.tensors["model.layers.1.self_attn.k_proj.weight"].n_head == KV_HEADS
    assert model.tensors["model.layers.0.self_attn.v_proj.weight"].n_head is None
    v = model.tensors["model.layers.0.self_attn.v_proj.weight"]
    assert (v.block_size, v.type_size) == (32, 20) and v.raw().shape == (KV_HEADS * HEAD_DIM, HIDDEN // 32 * 20)
    assert np.array_equal(dequantize_raw(q.raw(), q.ggml_type), hf["model.layers.0.self_attn.q_proj.weight"])


def test_synthetic_config(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    model = open_gguf(tmp_path / "m.gguf")
    assert model.config == {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "vocab_size": VOCAB,
        "tie_word_embeddings": True, "attention_bias": False, "head_dim": HEAD_DIM,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    assert model.file_type == "gguf:Q4_1"


def test_tied_embeddings(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tied.gguf", tied=True)
    write_gguf(tmp_path / "untied.gguf", tied=False)
    tied, untied = open_gguf(tmp_path / "tied.gguf"), open_gguf(tmp_path / "untied.gguf")
    assert tied.config["tie_word_embeddings"] and "lm_head.weight" not in tied.weights
    assert not untied.config["tie_word_embeddings"] and "lm_head.weight" in untied.weights


def test_qwen2_is_not_permuted_and_has_biases(tmp_path: Path) -> None:
    hf = write_gguf(tmp_path / "q.gguf", arch="qwen2")
    model = open_gguf(tmp_path / "q.gguf")
    assert model.config["model_type"] == "qwen2" and model.config["architectures"] == ["Qwen2ForCausalLM"]
    assert model.config["attention_bias"]
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.bias"):
        assert model.tensors[name].n_head is None
        assert np.array_equal(model.weights[name], hf[name])


def test_weights_mapping_semantics(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    weights = open_gguf(tmp_path / "m.gguf").weights
    with pytest.raises(KeyError):
        weights["model.layers.9.mlp.up_proj.weight"]
    assert "model.norm.weight" in weights and "nope" not in weights
    first = weights["model.norm.weight"]
    assert first is not weights["model.norm.weight"]  # no cache: executors read each weight once
    assert np.array_equal(first, weights["model.norm.weight"])
    assert weights.get("nope") is None


# ---------------------------------------------------------------- errors
def test_unknown_arch(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"architecture 'mamba' is not supported"):
        open_gguf(tmp_path / "x.gguf")


def test_missing_metadata(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    writer.add_head_count(4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"llama\.embedding_length"):
        open_gguf(tmp_path / "x.gguf")


def write_metadata(path: Path, heads: int) -> None:
    """A llama GGUF with the required metadata only (no head_count_kv, no rope.freq_base) and no tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_metadata_defaults_are_left_to_arch_config(tmp_path: Path) -> None:
    write_metadata(tmp_path / "x.gguf", HEADS)
    config = build_config(gguf.GGUFReader(str(tmp_path / "x.gguf")).fields, set(), tmp_path / "x.gguf")
    assert "num_key_value_heads" not in config and "rope_theta" not in config
    with pytest.raises(ModelLoadError, match=r"lacks the tensor 'token_embd\.weight'"):
        open_gguf(tmp_path / "x.gguf")


def test_bad_metadata_value_names_file_and_key(tmp_path: Path) -> None:
    write_metadata(tmp_path / "x.gguf", 5)
    with pytest.raises(ConfigError, match=r"x\.gguf: GGUF metadata: config hidden_size = 64 is not divisible by "
                                          r"num_attention_heads = 5"):
        open_gguf(tmp_path / "x.gguf")


def test_missing_tensor(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", drop=("blk.1.ffn_down.weight",))
    with pytest.raises(ModelLoadError, match=r"blk\.1\.ffn_down\.weight.*model\.layers\.1\.mlp\.down_proj\.weight"):
        open_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("keep", [0, 3, 100, 2000, -500])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    write_gguf(tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[:keep])
    with pytest.raises(ModelLoadError, match=r"t\.gguf: (not a GGUF file|the GGUF file is truncated|not a valid GGUF)") as e:
        open_gguf(tmp_path / "t.gguf")
    assert "reshape" not in str(e.value) and "dtype" not in str(e.value)  # no numpy internals


def test_not_a_gguf_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "t.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match=r"not a GGUF file \(it starts with b'PK\\x03\\x04'"):
        open_gguf(tmp_path / "t.gguf")
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        open_gguf(tmp_path / "absent.gguf")


def test_undecodable_tensor_type(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", types={"ffn_up": QT.Q8_1})
    with pytest.raises(ModelLoadError, match=r"'blk\.0\.ffn_up\.weight' has GGML type Q8_1"):
        open_gguf(tmp_path / "m.gguf")


# ---------------------------------------------------------------- the real model
def test_real_model_config_and_names(smollm2_model) -> None:
    config = smollm2_model.config
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (576, 1536, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (49152, 8192)
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0
    assert config["tie_word_embeddings"] and (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert smollm2_model.file_type == "gguf:Q4_1"
    assert len(smollm2_model.weights) == 272 and "lm_head.weight" not in smollm2_model.weights
    assert smollm2_model.weights.tensors["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)


def test_real_model_full_load_via_loader(smollm2_model, smollm2_gguf: Path) -> None:
    model = smollm2_model
    assert model.file_type == "gguf:Q4_1" and model.path == smollm2_gguf
    assert model.generation_config == {"eos_token_id": [2], "bos_token_id": 1}
    shapes = {name: model.weights[name].shape for name in model.weights}
    assert all(model.weights[name].dtype == np.float32 for name in model.weights)
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)
    assert shapes["model.norm.weight"] == (576,)
    assert model.tokenizer.encode("The capital of France is") == [504, 3575, 282, 4649, 314]


def test_header_index_cache_is_used_and_invalidated(tmp_path: Path, monkeypatch) -> None:
    from graphllm.io import gguf as gguf_loader

    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path / "home"))
    write_gguf(tmp_path / "m.gguf")
    first = open_gguf(tmp_path / "m.gguf")
    assert list((tmp_path / "home" / "gguf-index").iterdir())
    monkeypatch.setattr(gguf_loader, "_read", lambda path: pytest.fail("parsed again despite the index"))
    again = open_gguf(tmp_path / "m.gguf")
    assert again.config == first.config
    assert np.array_equal(again.weights["model.norm.weight"], first.weights["model.norm.weight"])
    (tmp_path / "m.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:100])  # a changed file is re-read
    monkeypatch.undo()
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelLoadError):
        open_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("damage", [b"", b"[1]", b"\x80\x04\x95 a pickle", b'{"version": 1, "checksum": "0", "payload": "[]"}'])
def test_a_damaged_header_index_is_rebuilt_never_unpickled(tmp_path: Path, monkeypatch, damage: bytes) -> None:
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path / "home"))
    write_gguf(tmp_path / "m.gguf")
    first = open_gguf(tmp_path / "m.gguf")
    [index] = (tmp_path / "home" / "gguf-index").iterdir()
    assert index.suffix == ".json" and json.loads(index.read_text())["version"] == 1
    index.write_bytes(damage)
    with pytest.warns(UserWarning, match="rebuilding it"):
        again = open_gguf(tmp_path / "m.gguf")
    assert again.config == first.config
    assert json.loads(index.read_text())["checksum"]  # written anew
