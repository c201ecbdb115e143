"""`graphllm export` (quantized weights written once, loaded as blocks) and `graphllm eval`."""

import re
from pathlib import Path

import numpy as np
import pytest

from graphllm.cli import main
from graphllm.runtime.llm import LLM

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
TEXT = ("The quick brown fox jumps over the lazy dog. It was a sunny day and the children played in the park.\n"
        "The capital of France is Paris. Water boils at one hundred degrees.\n")


@pytest.mark.parametrize("dtype", ["int8", "int4g32", "int4g16"])
def test_export_then_load_equals_quantizing_at_load(tmp_path, dtype, capsys):
    out = tmp_path / "q"
    assert main(["export", "-m", str(TINY), "--dtype", dtype, "-o", str(out)]) == 0
    exported = LLM.load(out, executor="reference", max_context=32)
    direct = LLM.load(TINY, executor="reference", dtype=dtype, max_context=32)
    kinds = {exported.graph[n]["type"].dtype for n in exported.graph.nodes_of("Weight")}
    assert kinds == {"float32", direct.graph[next(n for n in direct.graph.nodes_of("Weight")
                                                  if direct.graph[n]["type"].quantized)]["type"].dtype}
    ids = [5, 9, 33, 100, 2]
    np.testing.assert_array_equal(exported.step(ids, range(5), [5], [0]), direct.step(ids, range(5), [5], [0]))
    assert exported.tokenizer.encode("Hello there") == direct.tokenizer.encode("Hello there")
    assert main(["export", "-m", str(TINY), "--dtype", dtype, "-o", str(out)]) == 2  # never overwrites
    assert "--force" in capsys.readouterr().err


def _numbers(text):
    return {k: float(v) for k, v in re.findall(r"^(perplexity|float32 ppl|mean KL)\s+([\d.]+)", text, re.M)}


def test_eval_reports_perplexity_and_kl(tmp_path, capsys, exact_kv):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    base = ["eval", "-m", str(TINY), "--text", str(text), "--window", "32", "--chunk", "16"]
    assert main(base + ["--executor", "reference", "--dtype", "int4g32"]) == 0
    q = _numbers(capsys.readouterr().out)
    assert q["perplexity"] > 1 and q["mean KL"] > 0 and q["float32 ppl"] > 1
    assert main(base + ["--executor", "reference", "--dtype", "int8"]) == 0
    q8 = _numbers(capsys.readouterr().out)
    assert 0 < q8["mean KL"] < q["mean KL"]  # 8-bit weights cost less than 4-bit
    assert q8["float32 ppl"] == q["float32 ppl"]
    # compiled: every position's logits in one step per chunk
    assert main(base + ["--dtype", "float32", "--kv-dtype", exact_kv]) == 0
    tvm = _numbers(capsys.readouterr().out)
    assert tvm["perplexity"] == pytest.approx(q["float32 ppl"], rel=1e-5)


def test_eval_missing_text_is_a_clear_error(capsys):
    assert main(["eval", "-m", str(TINY), "--text", "/nonexistent.txt"]) == 2
    assert "cannot read --text" in capsys.readouterr().err


def test_eval_reads_a_k_quant_file_in_its_blocks(tmp_path, capsys, exact_kv):
    """eval on a Q4_K_M file: perplexity of the file's blocks; its float32 reference is the same dequantized weights."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    kq = Path(__file__).parents[1] / "fixtures" / "gguf_kquant" / "tiny_llama_k.Q4_K_M.gguf"
    assert main(["eval", "-m", str(kq), "--text", str(text), "--window", "32", "--chunk", "16",
                 "--executor", "reference", "--kv-dtype", exact_kv]) == 0
    r = _numbers(capsys.readouterr().out)
    assert r["perplexity"] > 1 and r["perplexity"] == pytest.approx(r["float32 ppl"], rel=1e-4)
    assert r["mean KL"] < 1e-6
