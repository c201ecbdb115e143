"""`graphllm check`: a correct custom file matches the built-in description; a broken one is caught at
its first wrong node, named by file:line, with what differs from the reference."""

import sys
from pathlib import Path

import pytest

from graphllm.cli import main
from graphllm.tools.check import check_model
from graphllm.errors import GraphLLMError

ROOT = Path(__file__).parents[2]
EXAMPLE = (ROOT / "examples" / "qwen2_fastllm.py").read_text()
QWEN2 = str(ROOT / "tests" / "fixtures" / "tiny_qwen2")

# bug name -> (line of the example to change, its replacement, the line the divergence is reported at
# (None: the changed line), words the report must contain)
BUGS = {
    "wrong_weight": ('layer[".mlp.up_proj.weight"], layer[".mlp.up_proj.bias"], data["w3"])',
                     'layer[".mlp.gate_proj.weight"], layer[".mlp.up_proj.bias"], data["w3"])', None,
                     ["reads weight 'model.layers.0.mlp.gate_proj.weight' here", "up_proj"]),
    "missing_rope": ('self.LlamaRotatePosition2D(data["k"], data["positionIds"], data["sin"], data["cos"], head_dim // 2)',
                     'pass', 'self.FusedAttention(', ["'curk' reads data['k'] from ExpandHead", "LlamaRotatePosition2D"]),
    "wrong_eps": ('self.RMSNorm(data["hiddenStates"], layer[".post_attention_layernorm.weight"], eps, data["attenInput"])',
                  'self.RMSNorm(data["hiddenStates"], layer[".post_attention_layernorm.weight"], 1e-2, data["attenInput"])',
                  None, ["eps=0.01 here, 1e-05 in the reference"]),
    "swapped_attention_ports": ('data["pastValue."][i], data["k"], data["v"],', 'data["pastValue."][i], data["v"], data["k"],',
                                None, ["'curk' reads data['v']", "'curv' reads data['k']"]),
    "swapped_residual_ports": ('self.AddTo(data["hiddenStates"], data["attenLastOutput"])',
                               'self.AddTo(data["attenLastOutput"], data["hiddenStates"])', None,
                               ["extra write", "equals the reference's data['hiddenStates'] from AddTo", "swapped ports"]),
}


def model_file(tmp_path: Path, old: str = "", new: str = "", name: str = "m.py") -> Path:
    path = tmp_path / name
    assert old in EXAMPLE
    path.write_text(EXAMPLE.replace(old, new, 1))
    return path


def line_of(path: Path, text: str) -> int:
    return next(i + 1 for i, line in enumerate(path.read_text().splitlines()) if text in line)


def test_a_correct_file_matches_stage_by_stage(tmp_path):
    report = check_model(QWEN2, model_file(tmp_path))
    assert report.ok and report.logits_diff == 0.0
    assert [s for s in report.stats] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert all(s.compared > 0 and s.max_diff == 0 for s in report.stats.values())
    lines = report.lines()
    assert lines[1].strip().startswith("layer 0:") and "matches the builtin reference" in lines[-1]


def test_renamed_values_and_other_op_orders_still_match(tmp_path):
    text = EXAMPLE
    for old, new in [('"hiddenStates"', '"h"'), ('"attenInput"', '"x"'), ('data["q"]', 'data["query"]'),
                     ('self.Silu(data["w1"], data["w1"])', 'self.Silu(data["w1"], data["act"])'),
                     ('self.MulTo(data["w1"], data["w3"])', 'self.MulTo(data["act"], data["w3"])'),
                     ('self.Linear(data["w1"], ', 'self.Linear(data["act"], ')]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "renamed.py"
    path.write_text(text)
    report = check_model(QWEN2, path)
    assert report.ok and report.stats[(1, 0)].compared > 10


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_a_broken_file_is_caught_at_its_first_wrong_node(tmp_path, bug):
    old, new, reported, words = BUGS[bug]
    path = model_file(tmp_path, old, new, f"{bug}.py")
    report = check_model(QWEN2, path)
    assert not report.ok and report.divergence is not None
    line = line_of(path, reported or new)
    assert report.divergence.where.startswith(f"{path}:{line}:"), report.lines()
    text = "\n".join(report.lines())
    assert report.divergence.stage == (1, 0) and "layer 0" in text and "<- diverges" in text
    for word in words:
        assert word in text, text


def test_cli_exit_status_and_output(tmp_path, capsys):
    assert main(["check", "-m", QWEN2, "--custom", str(model_file(tmp_path)), "--prompt", "Hello there"]) == 0
    assert "matches" in capsys.readouterr().out
    old, new, _, _ = BUGS["wrong_eps"]
    path = model_file(tmp_path, old, new, "bad.py")
    assert main(["check", "-m", QWEN2, "--custom", str(path), "--tol", "0.5"]) == 0  # within a loose tolerance
    assert main(["check", "-m", QWEN2, "--custom", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:{line_of(path, new)}: RMSNorm" in out
    assert main(["check", "-m", QWEN2, "--custom", str(tmp_path / "missing.py")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_against_transformers_without_it_says_how_to_install(tmp_path, monkeypatch):
    for name in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError, as when not installed
    with pytest.raises(GraphLLMError, match="pip install torch transformers"):
        check_model(QWEN2, model_file(tmp_path), against="transformers")


def test_against_transformers_layer_by_layer(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    good = check_model(QWEN2, model_file(tmp_path), against="transformers")
    assert good.ok and set(good.stats) == {(0, 0), (1, 0), (2, 0)}  # transformers normalizes the last layer's output
    old, new, _, _ = BUGS["wrong_eps"]
    bad = check_model(QWEN2, model_file(tmp_path, old, new, "bad.py"), against="transformers")
    assert bad.divergence.stage == (1, 0) and "AddTo -> 'hiddenStates'" in bad.divergence.where
