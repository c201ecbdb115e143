"""`graphllm dump` in-process on the tiny fixture: every format, --after, --print-ir-after-all, -o/--force,
--custom, and load_ir (what `graphllm compile --ir FILE` reads); a quantized model's dump compiled and run
through the CLI."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from graphllm.commands.common import run_main
from graphllm.dsl.serialize import graph_from_json
from graphllm.dsl.textir import graph_difference, parse_graph
from graphllm.dsl.types import TensorType
from graphllm.commands.dump import register as add_dump_parser
from graphllm.pipeline import load_ir
from graphllm.errors import GraphBuildError, GraphLLMError
from graphllm.pipeline import build_graph

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"


def dump(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="graphllm")
    add_dump_parser(parser.add_subparsers())
    a = parser.parse_args(["dump", "-m", str(TINY), *args])
    return run_main(lambda: a.func(a))


@pytest.fixture(scope="module")
def graph():
    config = json.loads((TINY / "config.json").read_text())
    types = {k: TensorType(v.shape) for k, v in load_file(TINY / "model.safetensors").items()}
    return build_graph(config, types)


def test_text_to_stdout_is_the_verified_graph(capsys, graph):
    assert dump() == 0
    out = capsys.readouterr().out
    assert out.startswith("graph llama {\n") and "= QKVAttention(" in out
    assert graph_difference(parse_graph(out), graph) is None


def test_json_and_dot(capsys, graph):
    assert dump("--format", "json") == 0
    assert graph_difference(graph_from_json(json.loads(capsys.readouterr().out)), graph) is None
    assert dump("--format", "dot", "--after", "input") == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph graphllm {") and 'label="RMSNorm\\n%attenInput"' in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_svg_to_a_file(tmp_path, capsys):
    assert dump("--format", "svg", "-o", str(tmp_path / "g.svg")) == 0
    svg = (tmp_path / "g.svg").read_bytes()
    assert b"<svg" in svg and b"QKVAttention" in svg and b"f32[T,64]" in svg


def test_svg_needs_an_output_file(capsys):
    assert dump("--format", "svg") == 2
    assert "-o FILE.svg" in capsys.readouterr().err


def test_output_file_is_never_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "g.ir"
    out.write_text("mine")
    assert dump("-o", str(out)) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine"
    assert dump("-o", str(out), "--force") == 0
    assert out.read_text().startswith("graph llama {")


def test_print_ir_after_all_and_after(tmp_path, capsys, graph):
    ir_dir = tmp_path / "ir"
    assert dump("--print-ir-after-all", str(ir_dir), "--after", "verify", "-o", str(tmp_path / "g.ir")) == 0
    assert sorted(p.name for p in ir_dir.iterdir()) == ["00_input.ir", "01_verify.ir"]
    assert (ir_dir / "01_verify.ir").read_text() == (tmp_path / "g.ir").read_text()
    assert dump("--print-ir-after-all", str(ir_dir)) == 2
    assert "already holds .ir files" in capsys.readouterr().err
    assert dump("--after", "fold") == 2
    assert "unknown pass 'fold' (known passes: verify" in capsys.readouterr().err


def test_custom_model_file(tmp_path, capsys):
    custom = tmp_path / "m.py"
    custom.write_text("from graphllm.models.llama import LlamaModel\n\n"
                      "class M(LlamaModel):\n"
                      "    def build(self):\n"
                      "        super().build()\n"
                      "        self.Print(self.data['logits'])\n\n"
                      "__model__ = M\n")
    assert dump("--custom", str(custom)) == 0
    out = capsys.readouterr().out
    assert f"= Print(input=%logits)  @ {custom}:6" in out


def test_load_ir_reads_a_dump_and_checks_its_types(tmp_path, capsys, graph):
    path = tmp_path / "g.ir"
    assert dump("-o", str(path)) == 0
    assert graph_difference(load_ir(path), graph) is None
    text = path.read_text()
    untyped = tmp_path / "untyped.ir"
    untyped.write_text(text.replace(" : f32[T,64] = ", " = "))
    assert graph_difference(load_ir(untyped), graph) is None
    broken = tmp_path / "broken.ir"
    broken.write_text(text.replace("%attenOutput : f32[T,64]", "%attenOutput : f32[T,32]", 1))
    with pytest.raises(GraphBuildError, match=r"broken.ir: .*llama.py:\d+: QKVAttention -> 'attenOutput' \(%attenOutput\): "
                                              r"the IR says f32\[T,32\] but its inputs give f32\[T,64\]"):
        load_ir(broken)
    with pytest.raises(GraphBuildError, match=r"broken2.ir:\d+:\d+: "):
        (tmp_path / "broken2.ir").write_text(text.replace("= FusedLinear(", "= FusedLinear((", 1))
        load_ir(tmp_path / "broken2.ir")
    with pytest.raises(GraphLLMError, match="cannot read the IR file"):
        load_ir(tmp_path / "missing.ir")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GRAPHLLM_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return r


def test_a_quantized_dump_compiles_and_runs(tmp_path):
    """dump --dtype int4 -> compile --ir -> run --artifact: the text the reference executor writes."""
    home, ir, artifact = tmp_path / "home", tmp_path / "g.ir", tmp_path / "art"
    _cli(home, "dump", "-m", str(TINY), "--dtype", "int4", "-o", str(ir))
    assert " : q4_1[128,64] = Weight() {" in ir.read_text()
    _cli(home, "compile", "--ir", str(ir), "-m", str(TINY), "-o", str(artifact))
    prompt = ["-m", str(TINY), "--dtype", "int4", "Hello", "-n", "8", "--ignore-eos"]
    compiled = _cli(home, "run", "--artifact", str(artifact), *prompt)
    assert "compiled" not in compiled.stderr
    assert compiled.stdout == _cli(home, "run", "--executor", "reference", *prompt).stdout


def test_compile_ir_refuses_flags_that_would_be_ignored(tmp_path, capsys):
    from graphllm.cli import main

    assert dump("-o", str(tmp_path / "g.ir")) == 0
    assert main(["compile", "--ir", str(tmp_path / "g.ir"), "--dtype", "int4", "-o", str(tmp_path / "art")]) == 2
    assert "the IR file is compiled as written: drop --dtype" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_dump_dtype_shows_the_quantized_graph(capsys):
    assert dump("--dtype", "int4g16") == 0
    out = capsys.readouterr().out
    assert "q4_1g16[" in out and "= FusedLinear(" in out


@pytest.mark.parametrize("fmt", ["text", "dot", "json", "svg"])
def test_layers_draws_a_slice_in_every_format(fmt, tmp_path, capsys):
    if fmt == "svg" and shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed")
    out = tmp_path / f"slice.{fmt}"
    assert dump("--format", fmt, "--layers", "1", "-o", str(out)) == 0
    whole = tmp_path / f"whole.{fmt}"
    assert dump("--format", fmt, "-o", str(whole)) == 0
    text, full = out.read_text(), whole.read_text()
    assert "model.layers.1.mlp.down_proj.weight" in text and "model.layers.0." not in text
    assert "embed_tokens" not in text and "lm_head" not in text and len(text) < len(full)


def test_layers_keeps_what_connects_them(capsys):
    assert dump("--layers", "0-1") == 0
    sliced = capsys.readouterr().out
    assert "model.layers.0.self_attn" in sliced and "model.layers.1.mlp" in sliced
    assert "%hiddenStates#1 :" in sliced  # the embedding's output, which layer 0 reads, drawn without its inputs
    assert "@model.embed_tokens.weight" not in sliced


@pytest.mark.parametrize("value, message", [("5", "--layers 5: the model has layers 0-1"),
                                            ("2-1", "expected a layer N or a range A-B"),
                                            ("a", "expected a layer N or a range A-B")])
def test_layers_out_of_range_or_malformed(value, message, capsys):
    with pytest.raises(SystemExit) if message.startswith("expected") else nullcontext():
        assert dump("--layers", value) == 2
    assert message in capsys.readouterr().err
