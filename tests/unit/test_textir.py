"""Text IR: print -> parse gives an equal graph (fixtures, built-in Llama at SmolLM2 size, every attr
type, odd names and paths), hand-written IR parses and verifies, and parse errors name line:column."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.dsl.graph import ComputeGraph, Graph, SourceLoc, trace
from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import graph_difference, graphs_equal, parse_graph, print_graph
from graphllm.dsl.types import TensorType
from graphllm.errors import GraphBuildError
from graphllm.models import builtin_model
from graphllm.passes.verify import verify

FIXTURES = Path(__file__).parents[1] / "fixtures"

SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "head_dim": 64,
    "rms_norm_eps": 1e-05, "rope_theta": 100000, "vocab_size": 49152, "max_position_embeddings": 8192,
    "tie_word_embeddings": True, "rope_scaling": None, "torch_dtype": "bfloat16",
}


def smollm2_weight_types() -> dict[str, TensorType]:
    """Fake weight shapes of SmolLM2-135M (tied embeddings: no lm_head.weight)."""
    c = SMOLLM2_CONFIG
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["head_dim"]
    types = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        types.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                      p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                      p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                      p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                      p + "mlp.down_proj.weight": (h, f)})
    return {k: TensorType(v) for k, v in types.items()}


def fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    return json.loads((FIXTURES / name / "config.json").read_text()), load_file(FIXTURES / name / "model.safetensors")


def traced(name: str) -> Graph:
    config, weights = fixture(name)
    return trace(builtin_model(config), config, {k: TensorType(v.shape) for k, v in weights.items()})


def assert_round_trip(g: Graph) -> Graph:
    text = print_graph(g)
    back = parse_graph(text)
    assert graph_difference(g, back) is None
    assert print_graph(back) == text
    return back


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("verified", [False, True], ids=["before_verify", "after_verify"])
def test_fixture_graphs_round_trip(name, verified):
    g = traced(name)
    g = verify(g) if verified else g
    typed = {n for n in g.order() if g[n]["type"] is not None and g[n]["op"] != "Weight"}
    assert bool(typed) == verified
    assert_round_trip(g)


@pytest.mark.parametrize("verified", [False, True], ids=["before_verify", "after_verify"])
def test_builtin_llama_at_smollm2_size_round_trips(verified):
    g = trace(builtin_model(SMOLLM2_CONFIG), SMOLLM2_CONFIG, smollm2_weight_types())
    g = verify(g) if verified else g
    back = assert_round_trip(g)
    assert len(back) == len(g) > 30 * 20
    assert back[back.outputs["logits"]]["type"] == (TensorType(("B", 49152)) if verified else None)


def test_parsed_graph_computes_the_same_logits():
    config, weights = fixture("tiny_qwen2")
    g = verify(traced("tiny_qwen2"))
    back = parse_graph(print_graph(g))
    args = ([5, 9, 30, 2], range(4), [4], [0])
    expected = ReferenceExecutor(g, weights, max_context=16).run(*args)
    np.testing.assert_array_equal(ReferenceExecutor(back, weights, max_context=16).run(*args), expected)


class Tiny(ComputeGraph):
    def build(self):
        data, weight = self.data, self.weight
        self.Embedding(data["inputIds"], weight["emb"], data["h"])
        self.RMSNorm(data["h"], weight["norm"], 1e-06, data["h"])
        self.Print(data["h"])
        self.SplitLastTokenStates(data["h"], data["seqLens"], data["last"])
        self.Linear(data["last"], weight["emb"], None, data["logits"])


HAND_WRITTEN = """\
# a hand-written test graph: comments and blank lines are allowed

graph tiny {
  config {"max_positions": 16, "hidden_size": 8, "num_attention_heads": 2}
  input $inputIds
  weight @emb : f32[32,8]
  %h = Embedding(input=$inputIds, weight=@emb)   # the embedding
  weight @norm : f32[8]
  %h#1 = RMSNorm(input=%h, weight=@norm) {eps=1e-06}

  !Print#1 = Print(input=%h#1)
  input $seqLens
  %last = SplitLastTokenStates(input=%h#1, seqLens=$seqLens)
  %logits = Linear(input=%last, weight=@emb)
  output logits = %logits
}
"""


def test_hand_written_ir_parses_verifies_and_equals_the_traced_model():
    g = parse_graph(HAND_WRITTEN)
    config = {"max_positions": 16, "hidden_size": 8, "num_attention_heads": 2}
    expected = trace(Tiny, config, {"emb": TensorType((32, 8)), "norm": TensorType((8,))})
    assert graph_difference(g, expected, locs=False) is None
    assert not graphs_equal(g, expected)  # the traced one has source locations
    v = verify(g)
    assert str(v[v.outputs["logits"]]["type"]) == "f32[B,32]" and str(v["%h#1"]["type"]) == "f32[T,8]"
    assert v["!Print#1"]["name"] == "" and v["%h#1"]["name"] == "h" and v["$inputIds"]["attrs"] == {"name": "inputIds"}
    assert_round_trip(v)


ATTRS = {
    "i": 3, "neg": -7, "big": 2 ** 70, "zero_f": 0.0, "minus_zero": -0.0, "one_f": 1.0, "eps": 1e-05,
    "scale": 0.125, "third": 1 / 3, "huge": 1e300, "tiny": 5e-324, "inf": math.inf, "ninf": -math.inf,
    "nan": math.nan, "t": True, "f": False, "none": None, "s": "tanh", "empty": "",
    "odd": 'quote " back \\ newline \n tab \t # not a comment, unicode é ∑', "list": [1, 2.5, "x", [True, None], []],
    "weird key!": 1, "name": "attr keys may be keywords", "only_none": [None], "empties": [[None], {}, [], {"k": None}],
    "recipe": {"op": "Add", "attrs": {"v": 1.0}, "inputs": {"input": {"op": "Mul", "attrs": {}, "inputs": {"a": "w"}}}},
}


def test_attrs_of_every_type_round_trip_exactly():
    g = Graph({"rope_scaling": None, "eps": 1e-05, "nested": {"a": [1, 2.0]}})
    g.add("$x", "Input", {"name": "x"}, name="x")
    g.add("%y", "Mul", dict(ATTRS), name="y", inputs={"input": "$x"})
    back = assert_round_trip(g)
    attrs = back["%y"]["attrs"]
    assert list(attrs) == list(ATTRS)
    for key, value in ATTRS.items():
        assert type(attrs[key]) is type(value) and repr(attrs[key]) == repr(value), key
    text = print_graph(g)
    assert "eps=1e-05" in text and "scale=0.125" in text and "one_f=1.0" in text and "i=3," in text


def test_graphs_equal_sees_every_difference():
    g = parse_graph(HAND_WRITTEN)
    assert graphs_equal(g, parse_graph(HAND_WRITTEN))
    edits = {
        "an int attr that became a float": ("eps=1e-06", "eps=1e-06, k=1.0"),
        "a port": ("seqLens=$seqLens", "seqlens=$seqLens"),
        "a type": ("@norm : f32[8]", "@norm : f16[8]"),
        "a name": ("%last = SplitLastTokenStates(input=%h#1, seqLens=$seqLens)",
                   "%last = SplitLastTokenStates(input=%h#1, seqLens=$seqLens) name \"other\""),
        "a group": ("{eps=1e-06}", "{eps=1e-06} group norms"),
        "a loc": ("{eps=1e-06}", "{eps=1e-06} @ m.py:3"),
        "the config": ('"hidden_size": 8', '"hidden_size": 8.0'),
        "an output": ("output logits = %logits", "output logits = %last"),
        "an edge": ("%logits = Linear(input=%last, weight=@emb)", "%logits = Linear(input=%h#1, weight=@emb)"),
    }
    for what, (old, new) in edits.items():
        assert old in HAND_WRITTEN, what
        other = parse_graph(HAND_WRITTEN.replace(old, new))
        assert not graphs_equal(g, other), what
    with_int = parse_graph(HAND_WRITTEN.replace("{eps=1e-06}", "{eps=1e-06, k=1}"))
    with_float = parse_graph(HAND_WRITTEN.replace("{eps=1e-06}", "{eps=1e-06, k=1.0}"))
    assert "k" in graph_difference(with_int, with_float)
    moved = parse_graph(HAND_WRITTEN.replace("{eps=1e-06}", "{eps=1e-06} @ m.py:3"))
    assert graphs_equal(g, moved, locs=False)


def test_odd_ids_names_paths_groups_and_untyped_nodes_round_trip():
    g = Graph({"model_type": "my model"})
    g.add("$x", "Input", {"name": "x"}, name="x", type=TensorType(("T", 4)))
    g.add("@w", "Weight", {"name": "w"}, name="w", type=TensorType((4, 4), "bfloat16"), loc=SourceLoc("C:\\models\\a b.py", 1))
    g.add("%a b", "Linear", {}, name="a b", inputs={"input": "$x", "weight": "@w"},
          loc=SourceLoc("/tmp/dir with spaces/m:odd#file.py", 12))
    g.add("%q#2", "Silu", {}, name="not q", inputs={"input": "%a b"}, loc=SourceLoc('we"ird é.py', 3))
    g["%q#2"]["group"] = "fused 0"
    g.add("%mine", "Silu", {}, name="mine", inputs={"input": "%q#2"}, loc=SourceLoc("a:b:c.py", 40))
    g["%mine"]["group"] = "mlp0"
    g.add("plain", "MyOp", {"k": 1}, name="", inputs={"first": "%mine", "extra port": "$x", "input": "%a b"})
    g.add("$y", "Input", {"name": "x"}, name="y")  # attrs that do not match the short form
    g.add("!Exit#9", "Exit", {}, loc=SourceLoc("/tmp/a#b.py", 5))
    g.outputs.update({"logits": "plain", "second out": "%mine"})
    back = assert_round_trip(g)
    assert back["%q#2"]["group"] == "fused 0" and "group" not in back["$x"]
    assert back["%a b"]["loc"] == SourceLoc("/tmp/dir with spaces/m:odd#file.py", 12)
    assert back["%mine"]["loc"] == SourceLoc("a:b:c.py", 40)
    text = print_graph(g)
    assert "graph \"my model\" {" in text and "@ a:b:c.py:40" in text and "@ /tmp/a#b.py:5" in text and "group mlp0" in text
    assert '"%a b" = Linear(' in text and "name \"not q\"" in text


def test_print_refuses_attr_values_it_cannot_parse_back():
    g = Graph()
    g.add("%y", "Split", {"axes": (0, 1)}, name="y")
    with pytest.raises(TypeError, match="tuple"):
        print_graph(g)


BAD = [
    ("graph {\n  input $x\n  %y = Silu(input=$x\n}\n", "3:21", "unexpected end of line; expected \")\""),
    ("graph {\n  %y = Silu(input=$x)\n}\n", "2:19", "$x is used before it is defined"),
    ("graph {\n  input $x\n  input $x\n}\n", "3:9", "$x is defined twice"),
    ("graph {\n  input $x : q8[T]\n}\n", "2:14", "bad type q8[T]: unknown dtype 'q8' (dtypes: f32, f16"),
    ("graph {\n  weight @w : q4_1g3[4,6]\n}\n", "2:15", "bad type q4_1g3[4,6]: group size 3 of q4_1g3 must be even"),
    ("graph {\n  weight @w : q4_1g32[4,64]\n}\n", "2:15", "the block format q4_1g32 is spelled q4_1 ("),
    ("graph {\n  input $x\n  %y = Silu(input=$x) {a={k=1, k=2}}\n}\n", "3:32", "key 'k' given twice"),
    ("graph {\n  input $x ;\n}\n", "2:12", "unexpected character ';'"),
    ("graph {\n  input $x\n", "2:11", "unexpected end of text"),
    ("graph {\n  input $x\n  %y = Silu(input=$x) {a=1, a=2}\n}\n", "3:29", "attr 'a' given twice"),
    ("graph {\n  input $x\n  %y = Silu(input=$x, input=$x)\n}\n", "3:23", "port 'input' given twice"),
    ('graph {\n  config {"a": }\n}\n', "2:10", "bad config JSON"),
    ("graph {\n  config {}\n  config {}\n}\n", "3:10", "two config lines"),
    ('graph {\n  input "\\q"\n}\n', "2:9", "bad string"),
    ("graph {\n  output logits = %z\n}\n", "2:19", "%z is used before it is defined"),
    ("graph {\n  input $x\n  output a = $x\n  output a = $x\n}\n", "4:10", "output 'a' is given twice"),
    ("graph {\n  input $x\n  %y = Silu(input=$x) {a=%x}\n}\n", "3:26", "unexpected '%x'; expected \"[\""),
    ("", "1:1", "unexpected end of text; expected \"graph\""),
]


@pytest.mark.parametrize("text,where,message", BAD, ids=[b[2][:30] for b in BAD])
def test_parse_errors_name_line_and_column(text, where, message):
    with pytest.raises(GraphBuildError) as e:
        parse_graph(text, source="case.ir")
    assert str(e.value).startswith(f"case.ir:{where}: ") and message in str(e.value)
