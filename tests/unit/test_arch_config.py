"""ArchConfig: each fixture family's typed fields, fallbacks noted exactly once, bad values as one-line
ConfigErrors naming the key and value, and the reserved inputs / RoPE tables read from the same parse."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.dsl.arch import ArchConfig, Rope, context_limit
from graphllm.dsl.inputs import input_types, rope_tables
from graphllm.dsl.types import TensorType
from graphllm.errors import ConfigError
from graphllm.pipeline import build_graph

FIXTURES = Path(__file__).parents[1] / "fixtures"


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


# family -> (model_type, head_dim, rms eps, rotated pairs, windows, attention scale, softcaps, activation)
EXPECTED = {
    "tiny_llama": ("llama", 16, 1e-5, 8, (None, None), 16 ** -0.5, (None, None), "silu"),
    "tiny_qwen2": ("qwen2", 16, 1e-5, 8, (None, None), 16 ** -0.5, (None, None), "silu"),
    "tiny_qwen3": ("qwen3", 32, 1e-6, 16, (None, None), 32 ** -0.5, (None, None), "silu"),
    "tiny_mistral": ("mistral", 16, 1e-5, 8, (4, 4), 16 ** -0.5, (None, None), "silu"),
    "tiny_phi3": ("phi3", 16, 1e-5, 4, (None, None), 16 ** -0.5, (None, None), "silu"),
    "tiny_gemma2": ("gemma2", 16, 1e-6, 8, (4, None), 24 ** -0.5, (6.0, 3.0), "gelu_pytorch_tanh"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_families(name):
    notes = []
    arch = ArchConfig.from_config(fixture_config(name), notes)
    model_type, head_dim, eps, pairs, windows, scale, caps, act = EXPECTED[name]
    assert (arch.model_type, arch.hidden_size, arch.intermediate_size, arch.num_layers) == (model_type, 64, 128, 2)
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.vocab_size) == (4, 2, head_dim, 320)
    assert (arch.rms_norm_eps, arch.max_positions, arch.rope) == (eps, 256, Rope(pairs, 10000.0))
    assert (arch.windows, arch.attn_scale, (arch.attn_softcap, arch.final_softcap)) == (windows, scale, caps)
    assert arch.hidden_act == act and notes == []


def test_family_rules_for_layer_types():
    gemma = {k: v for k, v in fixture_config("tiny_gemma2").items() if k != "layer_types"}
    assert ArchConfig.from_config({**gemma, "num_hidden_layers": 3}).windows == (4, None, 4)
    qwen2 = {k: v for k, v in fixture_config("tiny_qwen2").items() if k != "layer_types"}
    sliding = {**qwen2, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}
    assert ArchConfig.from_config(sliding).windows == (None, 8)
    assert ArchConfig.from_config({**sliding, "use_sliding_window": False}).windows == (None, None)


@pytest.mark.parametrize("drop, says", [
    ("rope_theta", "config has no rope_theta: using 10000"),
    ("num_key_value_heads", "config has no num_key_value_heads: using num_attention_heads = 4"),
])
def test_a_fallback_is_one_note(drop, says):
    config = {k: v for k, v in fixture_config("tiny_qwen2").items() if k != drop}
    notes = []
    ArchConfig.from_config(config, notes)
    assert notes == [says]


def test_a_built_in_model_notes_a_fallback_once():
    """The graph's config is parsed again by verify and the reference; only the trace notes."""
    config = {k: v for k, v in fixture_config("tiny_qwen2").items() if k != "rope_theta"}
    types = {k: TensorType(v.shape) for k, v in load_file(FIXTURES / "tiny_qwen2" / "model.safetensors").items()}
    notes = []
    graph = build_graph(config, types, notes=notes)
    assert notes == ["config has no rope_theta: using 10000"]
    assert graph.config["max_positions"] == 256  # a built-in takes the config's limit without a note


def test_context_limit():
    assert context_limit({"max_positions": 16, "max_position_embeddings": 256}) == 16
    notes = []
    assert context_limit({"seq_length": 32}, notes) == 32
    assert notes == ["max_positions not set by the model file: using config seq_length = 32"]
    with pytest.raises(ConfigError, match="no max_positions, max_position_embeddings or seq_length"):
        context_limit({})


def test_rope_scalings_and_tables():
    base = {"hidden_size": 8, "num_attention_heads": 2, "max_positions": 16}
    assert Rope.from_config({**base, "rope_scaling": {"type": "linear", "factor": 2.0}}).factor == 2.0
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    assert Rope.from_config({**base, "rope_scaling": llama3}) == Rope(2, 10000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    assert Rope.from_config({**base, "rotary_dim": 2}).pairs == 1
    assert input_types(base)["sin"] == TensorType((16, 2), "float32")
    tables = rope_tables(base)
    sin, cos = tables["sin"], tables["cos"]
    assert sin.shape == cos.shape == (16, 2) and sin.dtype == np.float32
    assert np.allclose(sin[3], np.sin(3 * 10000.0 ** -(np.arange(0, 4, 2) / 4)))
    assert tables["sinLocal"] is sin and tables["cosLocal"] is cos  # one rope: the local inputs alias it
    factors = rope_tables({**base, "rope_freq_factors": [1.0, 4.0]})["sin"]
    assert np.allclose(factors[3], np.sin(3 * 10000.0 ** -(np.arange(0, 4, 2) / 4) / [1.0, 4.0]))


def test_gemma3_local_and_global_ropes():
    legacy = {"model_type": "gemma3_text", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 4,
              "intermediate_size": 8, "rms_norm_eps": 1e-6, "max_positions": 16, "rope_theta": 1e6,
              "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
              "sliding_window": 4, "sliding_window_pattern": 2}
    nested = {k: v for k, v in legacy.items() if not k.startswith("rope")} | {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    for config in (legacy, nested):
        arch = ArchConfig.from_config(config)
        assert arch.rope == Rope(2, 1e6, "linear", 8.0) and arch.local_rope == Rope(2, 1e4)
        assert arch.windows == (4, None, 4, None) and arch.local_layers == (True, False, True, False)
        assert [arch.rope_inputs(i) for i in (0, 1)] == [("sinLocal", "cosLocal"), ("sin", "cos")]
        tables = rope_tables(config)
        assert np.allclose(tables["sinLocal"][3], np.sin(3 * 1e4 ** -(np.arange(0, 4, 2) / 4)))
        assert np.allclose(tables["sin"][3], np.sin(3 * 1e6 ** -(np.arange(0, 4, 2) / 4) / 8))


BAD = [
    ({"hidden_size": 65}, "config hidden_size = 65 is not divisible by num_attention_heads = 4"),
    ({"num_attention_heads": 0}, "config num_attention_heads = 0: expected an integer >= 1"),
    ({"intermediate_size": -128}, "config intermediate_size = -128: expected an integer >= 1"),
    ({"num_hidden_layers": 1.5}, "config num_hidden_layers = 1.5: expected an integer >= 1"),
    ({"num_key_value_heads": 3}, "config num_attention_heads = 4 is not a multiple of num_key_value_heads = 3"),
    ({"rms_norm_eps": "1e-5"}, "config rms_norm_eps = '1e-5': expected a number > 0"),
    ({"max_position_embeddings": -1}, "config max_position_embeddings = -1: expected an integer >= 1"),
    ({"rope_theta": 0}, "config rope_theta = 0: expected a number > 0"),
    ({"partial_rotary_factor": 2.0}, "config rotates 32 dimensions of heads of 16: expected 2 to 16"),
    ({"rope_scaling": {"rope_type": "yarn"}}, "rope_scaling type 'yarn' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "config rope_scaling has no 'low_freq_factor'"),
    ({"use_sliding_window": True, "sliding_window": -4}, "config sliding_window = -4: expected an integer >= 1"),
    ({"use_sliding_window": True, "sliding_window": 4, "layer_types": ["full_attention"]},
     "config layer_types = ['full_attention']: expected 2 of sliding_attention, full_attention"),
    ({"hidden_size": None}, "config has no 'hidden_size'"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_values_are_one_line_config_errors(change, message):
    with pytest.raises(ConfigError) as e:
        ArchConfig.from_config({**fixture_config("tiny_qwen2"), **change})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_built_in_model_reports_a_bad_config_as_config_error():
    config = {**fixture_config("tiny_llama"), "num_attention_heads": 0}
    with pytest.raises(ConfigError, match="num_attention_heads = 0"):
        build_graph(config, {})
