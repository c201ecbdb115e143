"""The pass manager: registry, default pipeline, --print-ir-after-all files, `after`, unknown passes."""

import pytest

from graphllm.dsl.graph import Graph
from graphllm.dsl.textir import graphs_equal, parse_graph, print_graph
from graphllm.errors import GraphLLMError
from graphllm.passes import manager
from graphllm.passes.manager import DEFAULT_PIPELINE, PASSES, register_pass, run_passes
from graphllm.passes.verify import verify

IR = """\
graph {
  config {"max_positions": 16, "hidden_size": 8, "num_attention_heads": 2}
  input $inputIds
  weight @emb : f32[32,8]
  %h = Embedding(input=$inputIds, weight=@emb)
  %h#1 = Mul(input=%h) {v=2.0}
  input $seqLens
  %last = SplitLastTokenStates(input=%h#1, seqLens=$seqLens)
  %logits = Linear(input=%last, weight=@emb)
  output logits = %logits
}
"""


def double_mul(graph: Graph) -> Graph:
    """A toy pass: every Mul constant doubled (returns a new graph)."""
    g = graph.copy()
    for n in g.nodes_of("Mul"):
        g[n]["attrs"]["v"] *= 2
    return g


@pytest.fixture
def toy_pass(monkeypatch):
    monkeypatch.setattr(manager, "PASSES", dict(PASSES))
    register_pass("double_mul")(double_mul)
    return "double_mul"


def test_verify_is_registered_and_the_default_pipeline():
    assert PASSES["verify"] is verify and DEFAULT_PIPELINE[0] == "verify"
    g = parse_graph(IR)
    out = run_passes(g)
    assert str(out["%logits"]["type"]) == "f32[B,32]" and g["%logits"]["type"] is None


def test_print_ir_after_all_writes_one_file_per_pass(tmp_path, toy_pass):
    g = parse_graph(IR)
    out = run_passes(g, ["verify", toy_pass, toy_pass], print_ir_after_all=tmp_path / "ir")
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["00_input.ir", "01_verify.ir", "02_double_mul.ir", "03_double_mul.ir"]
    texts = [(tmp_path / "ir" / f).read_text() for f in files]
    assert graphs_equal(parse_graph(texts[0]), g) and graphs_equal(parse_graph(texts[3]), out)
    assert "{v=2.0}" in texts[1] and "{v=4.0}" in texts[2] and "{v=8.0}" in texts[3]
    assert ": f32[T,8] = Mul" not in texts[0] and ": f32[T,8] = Mul" in texts[1]


def test_after_stops_after_the_named_pass(tmp_path, toy_pass):
    g = parse_graph(IR)
    out = run_passes(g, ["verify", toy_pass, "verify"], after=toy_pass, print_ir_after_all=tmp_path)
    assert out["%h#1"]["attrs"] == {"v": 4.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_input.ir", "01_verify.ir", "02_double_mul.ir"]
    assert print_graph(run_passes(g, after="input")) == print_graph(g)
    assert run_passes(g, after="verify")["%h"]["type"] is not None


def test_unknown_passes_are_errors_listing_the_known_ones(toy_pass):
    g = parse_graph(IR)
    with pytest.raises(GraphLLMError, match=r"unknown pass 'fold' \(known passes: verify, dce, cse, .*double_mul\)"):
        run_passes(g, ["verify", "fold"])
    with pytest.raises(GraphLLMError, match="unknown pass 'fold'"):
        run_passes(g, after="fold")
    with pytest.raises(GraphLLMError, match=r"'double_mul' is not in the pipeline \(verify, dce, "):
        run_passes(g, after=toy_pass)


def test_pass_names_are_unique(toy_pass):
    for name in (toy_pass, "input"):
        with pytest.raises(ValueError, match="taken"):
            register_pass(name)(double_mul)
