"""Broken custom model files: each error names the op or tensor and the user's file:line."""

import re
import json
import textwrap
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from graphllm.dsl.types import TensorType
from graphllm.errors import GraphBuildError
from graphllm.pipeline import build_graph

FIXTURE = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
CONFIG = json.loads((FIXTURE / "config.json").read_text())
TYPES = {k: TensorType(v.shape) for k, v in load_file(FIXTURE / "model.safetensors").items()}

HEADER = """\
from ftllm.llm import ComputeGraph
import math

class M(ComputeGraph):
    def build(self):
        weight, data, config = self.weight, self.data, self.config
        hd = config["hidden_size"] // config["num_attention_heads"]
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["h"])
"""
TAIL = """\
        self.SplitLastTokenStates(data["h"], data["seqLens"], data["last"])
        self.Linear(data["last"], weight["lm_head.weight"], weight["lm_head.bias"], data["logits"])

__model__ = M
"""


def write(tmp_path: Path, body: str, tail: str = TAIL, header: str = HEADER) -> tuple[Path, int]:
    """A model file with `body` between the header and tail; returns it and the line marked # BUG."""
    text = header + textwrap.indent(textwrap.dedent(body), " " * 8) + tail
    path = tmp_path / "model.py"
    path.write_text(text)
    bug = [i + 1 for i, line in enumerate(text.splitlines()) if "# BUG" in line]
    return path, (bug[0] if bug else 0)


def error_of(path: Path) -> str:
    with pytest.raises(GraphBuildError) as e:
        build_graph(CONFIG, TYPES, custom=path)
    return str(e.value)


def test_a_correct_file_builds(tmp_path):
    path, _ = write(tmp_path, "")
    g = build_graph(CONFIG, TYPES, custom=path)
    assert str(g[g.outputs["logits"]]["type"]) == "f32[B,320]"


def test_unknown_weight_names_tensor_line_and_suggestion(tmp_path):
    path, line = write(tmp_path, """
        self.RMSNorm(data["h"], weight["model.layers.0.input_layernorm.weigth"], 1e-5, data["h"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "model.layers.0.input_layernorm.weigth" in msg
    assert "not in the checkpoint" in msg and "model.layers.0.input_layernorm.weight" in msg


def test_data_read_before_written(tmp_path):
    path, line = write(tmp_path, """
        self.AddTo(data["h"], data["residual"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "'residual'" in msg and "read before" in msg


def test_shape_mismatch_names_op_ports_and_line(tmp_path):
    path, line = write(tmp_path, """
        self.Linear(data["h"], weight["model.layers.0.mlp.down_proj.weight"], weight[""], data["x"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "Linear" in msg and "down_proj" in msg and "[64,128]" in msg


def test_wrong_port_kind(tmp_path):
    path, line = write(tmp_path, """
        self.RMSNorm(data["h"], data["h"], 1e-5, data["h"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "RMSNorm" in msg and "'weight' expects weight[...]" in msg


def test_bad_head_dim(tmp_path):
    path, line = write(tmp_path, """
        self.ExpandHead(data["h"], 7)  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "ExpandHead" in msg and "not a multiple of 7" in msg


def test_missing_config_key(tmp_path):
    path, line = write(tmp_path, """
        eps = config["rms_norm_epsilon"]  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "rms_norm_epsilon" in msg and "rms_norm_eps" in msg


def test_exception_inside_build_points_at_line(tmp_path):
    path, line = write(tmp_path, """
        n = config["hidden_size"] // 0  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "ZeroDivisionError" in msg


def test_unknown_op_method(tmp_path):
    path, line = write(tmp_path, """
        self.LayerNormm(data["h"], data["h"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "LayerNormm" in msg


def test_attention_cache_port_needs_cache_handle(tmp_path):
    path, line = write(tmp_path, """
        self.ExpandHead(data["h"], hd)
        self.FusedAttention(data["h"], data["h"], data["h"], data["h"], data["h"], data["h"],  # BUG
                            data["attentionMask"], data["o"], data["seqLens"], 1.0)
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "pastKey" in msg


def test_too_many_arguments(tmp_path):
    path, line = write(tmp_path, """
        self.Silu(data["h"], data["h"], data["h"])  # BUG
    """)
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "Silu takes 2 arguments" in msg


def test_missing_logits(tmp_path):
    path, _ = write(tmp_path, "", tail="\n__model__ = M\n")
    msg = error_of(path)
    assert str(path) in msg and "never writes data['logits']" in msg


def test_logits_must_be_per_sequence(tmp_path):
    path, _ = write(tmp_path, "", tail="""\
        self.Linear(data["h"], weight["lm_head.weight"], weight[""], data["logits"])

__model__ = M
""")
    msg = error_of(path)
    assert "SplitLastTokenStates" in msg and "[T,320]" in msg


def test_missing_dunder_model(tmp_path):
    path, _ = write(tmp_path, "", tail="")
    assert "__model__" in error_of(path)


def test_dunder_model_not_a_computegraph(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("class M:\n    pass\n__model__ = M\n")
    assert "must be a ComputeGraph subclass" in error_of(path)


def test_syntax_error_names_line(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from ftllm.llm import ComputeGraph\nclass M(ComputeGraph):\n    def build(self)\n        pass\n")
    msg = error_of(path)
    assert f"{path}:3" in msg and "syntax error" in msg


def test_import_error_names_line(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import math\nimport not_a_module_xyz\n")
    msg = error_of(path)
    assert f"{path}:2" in msg and "not_a_module_xyz" in msg


def test_missing_file():
    with pytest.raises(GraphBuildError, match="does not exist"):
        build_graph(CONFIG, TYPES, custom="/nonexistent/model.py")


def test_max_positions_defaults_from_config_with_a_note(tmp_path):
    path, _ = write(tmp_path, "")
    notes = []
    g = build_graph(CONFIG, TYPES, custom=path, notes=notes)
    assert g.config["max_positions"] == CONFIG["max_position_embeddings"]
    assert any("max_positions" in n for n in notes)


def test_a_missing_projection_is_named_not_reported_as_a_shape_clash(tmp_path):
    path, line = write(tmp_path, """
        self.Linear(data["h"], weight["model.layers.0.mlp.down_prj.weight"], None, data["h"])  # BUG
    """)
    msg = error_of(path)
    assert f"note: {path}:{line}: tensor 'model.layers.0.mlp.down_prj.weight' is missing from the checkpoint" in msg
    assert "read the embedding table instead" in msg


@pytest.mark.parametrize("key, value, message", [
    ("num_attention_heads", 8, "config (num_attention_heads * head_dim, hidden_size) = (128, 64) contradicts the checkpoint"),
    ("intermediate_size", 100, "config (intermediate_size, hidden_size) = (100, 64) contradicts the checkpoint"),
    ("vocab_size", 10, "model.embed_tokens.weight is [320, 64]"),
    ("num_hidden_layers", 1, "config num_hidden_layers = 1 contradicts the checkpoint, which has 2 layers"),
])
def test_a_config_that_contradicts_the_weights_names_the_value(key, value, message):
    from graphllm.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        build_graph({**CONFIG, key: value}, TYPES)
