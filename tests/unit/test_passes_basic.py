"""dce and cse: structure changes as expected and the reference executor computes the same logits."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.types import TensorType
from graphllm.passes.cse import cse
from graphllm.passes.dce import dce
from graphllm.pipeline import build_graph

FIXTURE = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
CONFIG = json.loads((FIXTURE / "config.json").read_text())
WEIGHTS = load_file(FIXTURE / "model.safetensors")
TYPES = {k: TensorType(v.shape) for k, v in WEIGHTS.items()}

MODEL = """\
from graphllm.models.llama import LlamaModel

class M(LlamaModel):
    def build(self):
        super().build()
        data, weight = self.data, self.weight
        self.Silu(data["lastTokensStates"], data["unused"])          # dead
        self.Linear(data["attenInput"], weight["model.layers.1.mlp.gate_proj.weight"], weight[""], data["g2"])
        self.Print(data["g2"])                                          # keeps g2 alive
        self.Mul(data["logits"], 1.0, data["a"])                       # two identical computations
        self.Mul(data["logits"], 1.0, data["b"])
        self.AddTo(data["a"], data["b"])
        self.Mul(data["a"], 0.5, data["logits"])

__model__ = M
"""


def logits(graph):
    ex = ReferenceExecutor(graph, WEIGHTS, max_context=32)
    return ex.run([5, 9, 30, 2], range(4), [4], [0])


def test_dce_and_cse_keep_the_result(tmp_path, capsys):
    path = tmp_path / "m.py"
    path.write_text(MODEL)
    g = build_graph(CONFIG, TYPES, custom=path, passes=["verify"])
    before = logits(g)
    g2 = cse(dce(g))
    np.testing.assert_allclose(logits(g2), before, rtol=0, atol=0)
    ops = [g2[n]["op"] for n in g2.order()]
    assert "%unused" not in g2 and "%unused" in g
    printed = g2.inputs(next(g2.nodes_of("Print")))["input"]
    assert ops.count("Print") == 1 and g2[printed]["op"] == "Linear" and "%g2" not in g2  # same as layer 1's w1
    assert ops.count("Mul") == len([n for n in g.order() if g[n]["op"] == "Mul"]) - 1
    assert "[Print] w1" in capsys.readouterr().err
