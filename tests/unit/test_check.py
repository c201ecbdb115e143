"""`graphllm check`: a correct custom file matches the built-in description; a broken one is caught at
its first wrong node, named by file:line, with what differs from the reference."""

import sys
from pathlib import Path

import pytest

from graphllm.cli import main
from graphllm.tools.check import Tolerance, check_model
from graphllm.errors import GraphLLMError

ROOT = Path(__file__).parents[2]
EXAMPLE = (ROOT / "examples" / "qwen2_fastllm.py").read_text()
QWEN2 = str(ROOT / "tests" / "fixtures" / "tiny_qwen2")
FAMILIES = ["gemma2", "llama", "mistral", "phi3", "qwen2", "qwen3"]
# a decode-only bug: every layer's attention uses layer 0's KV cache. On the prompt each layer writes its
# keys before reading them, so the prompt matches; a decode step reads another layer's keys.
SHARED_CACHE = ('data["pastKey."][i], data["pastValue."][i], data["k"]',
                'data["pastKey."][0], data["pastValue."][0], data["k"]')

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
    report = check_model(QWEN2, model_file(tmp_path), tokens=2)
    assert report.ok and report.steps[0].logits.abs == 0.0 and len(report.steps) == 3
    assert [s for s in report.stats] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert all(s.compared > 0 and s.worst.abs == 0 and s.worst.cos == 1 for s in report.stats.values())
    lines = report.lines()
    assert lines[1].strip().startswith("layer 0:") and "matches the builtin reference" in lines[-1]
    assert "relative 0" in lines[1] and "top-1 agrees 3/3" in lines[-2]


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
    assert main(["check", "-m", QWEN2, "--custom", str(path), "--rtol", "0.5"]) == 0
    assert main(["check", "-m", QWEN2, "--custom", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:{line_of(path, new)}: RMSNorm" in out
    assert main(["check", "-m", QWEN2, "--custom", str(tmp_path / "missing.py")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_against_transformers_without_it_says_how_to_install(tmp_path, monkeypatch):
    for name in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError, as when not installed
    with pytest.raises(GraphLLMError, match=r"needs torch and transformers.*pip install 'graphllm\[check\]'"):
        check_model(QWEN2, model_file(tmp_path), against="transformers")


def test_the_check_extra_installs_what_transformers_needs():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'check = ["torch' in text and '"transformers' in text and '"accelerate' in text


def test_tokens_catch_a_decode_only_bug_at_its_line(tmp_path):
    path = model_file(tmp_path, *SHARED_CACHE, "shared_cache.py")
    assert check_model(QWEN2, path).ok  # the prompt alone cannot see it
    report = check_model(QWEN2, path, tokens=3)
    assert not report.ok and report.divergence.step == 1
    assert report.divergence.where.startswith(f"{path}:{line_of(path, 'self.FusedAttention(')}:")
    text = "\n".join(report.lines())
    assert "at decode step 1" in text and "use the KV cache of layer 0" in text, text


def test_quantized_dtype_is_judged_on_kl_and_tokens(tmp_path):
    report = check_model(QWEN2, model_file(tmp_path), dtype="int8", tokens=2)
    assert not report.judged and report.divergence is None and len(report.steps) == 3
    assert report.stats[(1, 0)].worst.abs > 0  # float32 reference, int8 custom
    text = "\n".join(report.lines())
    assert report.ok and "not judged" in text and "KL max" in text, text
    assert not check_model(QWEN2, model_file(tmp_path), dtype="int8", max_kl=0.0).ok


@pytest.mark.parametrize("family", FAMILIES)
def test_every_builtin_family_matches_transformers_with_the_defaults(family):
    pytest.importorskip("torch", reason="needs torch: pip install 'graphllm[check]'")
    pytest.importorskip("transformers", reason="needs transformers: pip install 'graphllm[check]'")
    model = str(ROOT / "tests" / "fixtures" / f"tiny_{family}")
    report = check_model(model, ROOT / "graphllm" / "models" / f"{family}.py", against="transformers", tokens=2)
    assert report.ok, report.lines()
    assert set(report.stats) == {(0, 0), (1, 0), (2, 0)}  # transformers normalizes the last layer's output
    assert all(s.worst.rel < Tolerance().rtol / 20 for s in report.stats.values()), report.lines()


@pytest.mark.parametrize("bug", sorted(BUGS) + ["shared_cache"])
def test_a_broken_file_diverges_from_transformers(tmp_path, bug):
    pytest.importorskip("torch", reason="needs torch: pip install 'graphllm[check]'")
    pytest.importorskip("transformers", reason="needs transformers: pip install 'graphllm[check]'")
    old, new = SHARED_CACHE if bug == "shared_cache" else BUGS[bug][:2]
    report = check_model(QWEN2, model_file(tmp_path, old, new, f"{bug}.py"), against="transformers", tokens=2)
    assert not report.ok and report.divergence.stage == (1, 0), report.lines()
    assert report.divergence.step == (1 if bug == "shared_cache" else 0)
    assert "AddTo -> 'hiddenStates'" in report.divergence.where
