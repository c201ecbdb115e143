"""fastllm custom model files run unchanged: the ftllm shim, raw op dicts on self.graph, config references,
tied embeddings, and examples/qwen2_fastllm.py equal to the built-in description."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.dsl.modelfile import load_model_file
from graphllm.dsl.textir import graph_difference
from graphllm.dsl.types import TensorType
from graphllm.errors import GraphBuildError
from graphllm.pipeline import build_graph
from graphllm.runtime.llm import LLM

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "qwen2_fastllm.py"
QWEN2 = ROOT / "tests" / "fixtures" / "tiny_qwen2"
CONFIG = json.loads((QWEN2 / "config.json").read_text())
TYPES = {k: TensorType(v.shape) for k, v in load_file(QWEN2 / "model.safetensors").items()}

# The example's Qwen2 written the way fastllm's own op methods record ops: raw dicts on self.graph,
# with constants and config references wrapped in fastllm's node dicts.
RAW = '''\
from ftllm.llm import ComputeGraph, FloatGraphNode, GraphNode, IntGraphNode
import math


class RawQwen2(ComputeGraph):
    def op(self, kind, **nodes):
        self.graph.append({"type": kind, "nodes": nodes})

    def build(self):
        weight, data, config = self.weight, self.data, self.config
        eps = FloatGraphNode({"name": "rms_norm_eps"})
        hd = config["hidden_size"] // config["num_attention_heads"]
        self.op("Embedding", input=data["inputIds"], weight=weight["model.embed_tokens.weight"],
                output=GraphNode("hiddenStates"))
        self.DataTypeAs(data["hiddenStates"], data["atype"])
        for i in range(config["num_hidden_layers"]):
            layer = weight["model.layers."][i]
            self.op("RMSNorm", input=data["hiddenStates"], weight=layer[".input_layernorm.weight"], eps=eps,
                    output=data["attenInput"])
            for x in "qkv":
                self.op("Linear", input=data["attenInput"], weight=GraphNode(f"model.layers.{i}.self_attn.{x}_proj.weight", "weight"),
                        bias=layer[f".self_attn.{x}_proj.bias"], output=data[x])
                self.op("ExpandHeads", input=data[x], headDim=IntGraphNode(float(hd)))
            for x in "qk":
                self.op("LlamaRotatePosition2D", input=data[x], positionIds=data["positionIds"], sin=data["sin"],
                        cos=data["cos"], rotaryDim=IntGraphNode(hd // 2))
            self.op("FusedAttention", q=data["q"], k=data["pastKey."][i], v=data["pastValue."][i], curk=data["k"],
                    curv=data["v"], original=data["attenInput"], mask=data["attentionMask"],
                    output=data["attenOutput"], seqLens=data["seqLens"], scale=FloatGraphNode(1.0 / math.sqrt(hd)),
                    maskType=IntGraphNode(0), unitLen=IntGraphNode(128))
            self.op("Linear", input=data["attenOutput"], weight=layer[".self_attn.o_proj.weight"], bias=None,
                    output=data["attenLastOutput"])
            self.op("AddTo", input0=data["hiddenStates"], input1=data["attenLastOutput"], alpha=FloatGraphNode(1))
            self.graph += [{"type": "RMSNorm", "nodes": {"input": data["hiddenStates"], "eps": eps,
                            "weight": layer[".post_attention_layernorm.weight"], "output": data["attenInput"]}}]
            self.Linear(data["attenInput"], layer[".mlp.gate_proj.weight"], layer[".mlp.gate_proj.bias"], data["w1"])
            self.Linear(data["attenInput"], layer[".mlp.up_proj.weight"], layer[".mlp.up_proj.bias"], data["w3"])
            self.Silu(data["w1"], data["w1"])
            self.MulTo(data["w1"], data["w3"])
            self.Linear(data["w1"], layer[".mlp.down_proj.weight"], layer[".mlp.down_proj.bias"], data["w2"])
            self.AddTo(data["hiddenStates"], data["w2"])
        self.SplitLastTokenStates(data["hiddenStates"], data["seqLens"], data["lastTokensStates"])
        self.RMSNorm(data["lastTokensStates"], weight["model.norm.weight"], config["rms_norm_eps"], data["lastTokensStates"])
        self.Linear(data["lastTokensStates"], weight["lm_head.weight"], weight["lm_head.bias"], data["logits"])


__model__ = RawQwen2
'''


def builtin() -> object:
    return build_graph(CONFIG, TYPES, passes=[])


def test_example_is_the_builtin_graph_and_matches_transformers(exact_kv):
    assert graph_difference(build_graph(CONFIG, TYPES, EXAMPLE, passes=[]), builtin(), locs=False) is None
    llm = LLM.load(QWEN2, custom=EXAMPLE, executor="reference", max_context=32, kv_dtype=exact_kv)
    exp = np.load(QWEN2 / "expected.npz")
    ids = exp["prompt2_ids"].tolist()
    np.testing.assert_allclose(llm.prefill(ids), exp["prompt2_prefill_logits"][-1], atol=1e-4, rtol=0)


def test_raw_op_dicts_record_like_method_calls(tmp_path):
    path = tmp_path / "raw.py"
    path.write_text(RAW)
    graph = build_graph(CONFIG, TYPES, path, passes=[])
    assert graph_difference(graph, builtin(), locs=False) is None
    lines = RAW.splitlines()
    linear = graph["%q"]["loc"]  # an op appended from the helper method: its line is the append
    assert linear.file == str(path) and "self.graph.append" in lines[linear.line - 1]
    norm = graph["%attenInput#1"]["loc"]
    assert "self.graph +=" in lines[norm.line - 1]


def write(tmp_path: Path, body: str) -> tuple[Path, int]:
    """A tiny model file whose build() runs `body` before a minimal head; returns it and the # HERE line."""
    text = textwrap.dedent('''\
        from ftllm.llm import ComputeGraph, FloatGraphNode, IntGraphNode

        class M(ComputeGraph):
            def build(self):
                weight, data, config = self.weight, self.data, self.config
                self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["h"])
        ''') + textwrap.indent(textwrap.dedent(body), " " * 8) + textwrap.dedent('''\
                self.SplitLastTokenStates(data["h"], data["seqLens"], data["last"])
                self.Linear(data["last"], weight["lm_head.weight"], None, data["logits"])

        __model__ = M
        ''')
    path = tmp_path / "m.py"
    path.write_text(text)
    marked = [i + 1 for i, line in enumerate(text.splitlines()) if "# HERE" in line]
    return path, (marked[0] if marked else 0)


def error_of(path: Path) -> str:
    with pytest.raises(GraphBuildError) as e:
        build_graph(CONFIG, TYPES, path)
    return str(e.value)


def test_unknown_raw_op_type_names_the_line(tmp_path):
    path, line = write(tmp_path, '''
        self.graph.append({"type": "RMSNrom", "nodes": {"input": data["h"]}})  # HERE
    ''')
    msg = error_of(path)
    assert f"{path}:{line}" in msg and "unknown op type 'RMSNrom'" in msg and "RMSNorm" in msg


@pytest.mark.parametrize("op, needle", [
    ('"not a dict"', "expects an op dict"),
    ('{"type": "Silu", "nodes": {"input": data["h"], "outptu": data["h"]}}', "no parameter 'outptu'"),
    ('{"type": "Silu", "nodes": [data["h"]]}', "'nodes' must be a dict"),
    ('{"type": "Mul", "nodes": {"input": data["h"], "v": {"name": "no_such_key", "type": "config.float"}, '
     '"output": data["h"]}}', "config key 'no_such_key'"),
])
def test_malformed_raw_ops_name_the_line(tmp_path, op, needle):
    path, line = write(tmp_path, f"self.graph.append({op})  # HERE\n")
    msg = error_of(path)
    assert f"{path}:{line}" in msg and needle in msg


def test_config_references_and_constants_resolve_as_in_fastllm(tmp_path):
    path, _ = write(tmp_path, '''
        config["nested"] = {"scale": {"value": 2.5}}
        self.Mul(data["h"], {"name": "nested.scale.value"}, data["h"])  # a bare dict is a config reference
        self.graph.append({"type": "Mul", "nodes": {"input": data["h"], "v": FloatGraphNode(0.0), "output": data["h"]}})
        self.graph.append({"type": "Repeat", "nodes": {"input": data["h"], "axis": IntGraphNode(1),
                           "repeatTimes": IntGraphNode({"name": "rms_norm_eps"}), "output": data["r"]}})
        self.graph.append({"type": "Repeat", "nodes": {"input": data["h"], "axis": IntGraphNode(1),
                           "repeatTimes": IntGraphNode({"name": "num_hidden_layers"}), "output": data["r"]}})
        self.Add(data["h"], FloatGraphNode({"name": "rope_theta"}), data["h"])
        self.Add(data["h"], FloatGraphNode(3), data["h"])
    ''')
    with pytest.raises(GraphBuildError, match="repeat dim 64 0 times"):  # config.int truncates 1e-5 to 0, like atoi
        build_graph(CONFIG, TYPES, path)
    text = path.read_text().replace('"repeatTimes": IntGraphNode({"name": "rms_norm_eps"})', '"repeatTimes": 1')
    path.write_text(text)
    g = build_graph(CONFIG, TYPES, path, passes=[])
    attrs = [(g[n]["op"], g[n]["attrs"]) for n in g.order() if g[n]["op"] in ("Mul", "Add", "Repeat")]
    assert attrs == [("Mul", {"v": 2.5}), ("Mul", {"v": 0.0}), ("Repeat", {"axis": 1, "repeatTimes": 1}),
                     ("Repeat", {"axis": 1, "repeatTimes": 2}), ("Add", {"v": 10000.0}), ("Add", {"v": 3.0})]


def test_append_outside_build_is_an_error():
    from graphllm.dsl.graph import ComputeGraph

    with pytest.raises(GraphBuildError, match="only inside build"):
        ComputeGraph().graph.append({"type": "Exit"})


def test_absent_linear_weight_reads_the_embedding_as_in_fastllm(tmp_path):
    path, _ = write(tmp_path, '''
        self.SplitLastTokenStates(data["h"], data["seqLens"], data["x"])
        self.Linear(data["x"], weight["output.weight"], None, data["y"])  # not in the checkpoint
    ''')
    notes = []
    g = build_graph(CONFIG, TYPES, path, notes, passes=[])
    assert g.inputs("%y")["weight"] == g.inputs("%logits")["weight"] == "@model.embed_tokens.weight"
    assert len(notes) == 2 and "'output.weight' is not in the checkpoint" in notes[0]  # lm_head: no note


def test_the_real_ftllm_package_is_not_used(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "ftllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "llm.py").write_text("class ComputeGraph:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("ftllm", "ftllm.llm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import ftllm.llm as real

    model = load_model_file(EXAMPLE)
    from graphllm.dsl.graph import ComputeGraph

    assert issubclass(model, ComputeGraph) and not issubclass(model, real.ComputeGraph)
    assert sys.modules["ftllm.llm"] is real  # restored after the import


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, input=stdin,
                          timeout=300, env=env, cwd=ROOT)


def test_cli_run_and_fastllm_style_chat_take_the_custom_file():
    run = ["graphllm.cli", "run", "-m", str(QWEN2), "Hello", "-n", "6", "--ignore-eos", "--executor", "reference"]
    custom, plain = _run(*run, "--custom", str(EXAMPLE)), _run(*run)
    assert custom.returncode == 0 and custom.stdout == plain.stdout, custom.stderr
    chat = _run("graphllm.chat", "-t", "2", "-p", str(QWEN2), "--custom", str(EXAMPLE), "--executor", "reference",
                "-n", "4", "--ignore-eos", stdin="hi\n/exit\n")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
