"""`graphllm check` on the real SmolLM2-135M-Instruct: the built-in Llama file passes with the default
tolerance against transformers (on the GGUF's float32 re-expansion and on the GGUF itself) and against
the built-in description; a quantizing --dtype is judged on KL and tokens."""

from pathlib import Path

import pytest

from graphllm.cli import main
from graphllm.tools.check import Tolerance, check_model

LLAMA = Path(__file__).parents[2] / "graphllm" / "models" / "llama.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_f32(smollm2_gguf, tmp_path_factory) -> Path:
    """The GGUF re-expanded to a float32 HF folder (config, safetensors, tokenizer)."""
    out = tmp_path_factory.mktemp("smollm2") / "f32"
    assert main(["export", "-m", str(smollm2_gguf), "--dtype", "float32", "-o", str(out)]) == 0
    return out


def _transformers() -> None:
    """Skip without transformers' extra."""
    for name in ("torch", "transformers", "accelerate"):
        pytest.importorskip(name, reason=f"needs {name}: pip install 'graphllm[check]'")


def test_float32_folder_matches_transformers_layer_by_layer(smollm2_f32, capsys):
    _transformers()
    report = check_model(str(smollm2_f32), LLAMA, against="transformers", tokens=3)
    print("\n".join(report.lines()))
    assert report.ok, report.lines()
    assert len([s for s in report.stats if s[0] == 1]) == 29  # the 30th layer's output is the head's input
    assert all(s.worst.rel < Tolerance().rtol / 20 for s in report.stats.values()), report.lines()
    assert [s.token for s in report.steps] == [s.custom_token for s in report.steps]


def test_float32_folder_matches_the_builtin_description(smollm2_f32):
    report = check_model(str(smollm2_f32), LLAMA, tokens=1)
    assert report.ok and report.stats[(1, 29)].worst.abs == 0, report.lines()


def test_gguf_matches_transformers_dequantized_weights(smollm2_gguf):
    _transformers()
    pytest.importorskip("gguf")
    report = check_model(str(smollm2_gguf), LLAMA, against="transformers", tokens=1)
    assert report.judged and report.ok, report.lines()


def test_quantized_dtype_reports_kl_and_tokens_against_transformers(smollm2_gguf):
    _transformers()
    report = check_model(str(smollm2_gguf), LLAMA, against="transformers", tokens=2, dtype="int8")
    assert not report.judged and report.ok, report.lines()
    assert 0 < max(s.kl for s in report.steps) < 0.01 and report.stats[(1, 9)].worst.abs > 1e-3
