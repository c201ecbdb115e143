"""DOT export (labels, weights in grey, groups as clusters, edge types) and SVG rendering via Graphviz."""

import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from graphllm.dsl import dot
from graphllm.dsl.dot import render_svg, to_dot
from graphllm.dsl.textir import parse_graph
from graphllm.errors import GraphLLMError

IR = """\
graph {
  config {"max_positions": 16, "hidden_size": 8, "num_attention_heads": 2}
  input $inputIds : i32[T]
  weight @emb : f32[32,8]
  %h : f32[T,8] = Embedding(input=$inputIds, weight=@emb)
  %g : f32[T,8] = Silu(input=%h) group "mlp 0"
  %h#1 : f32[T,8] = MulTo(input0=%h, input1=%g) group "mlp 0"
  !Print#1 = Print(input=%h#1)
  input $seqLens : i32[B]
  %last : f32[B,8] = SplitLastTokenStates(input=%h#1, seqLens=$seqLens)  @ "my \\"model\\".py":7
  %logits : f32[B,32] = Linear(input=%last, weight=@emb)
  output logits = %logits
}
"""


def test_dot_labels_weights_clusters_and_edge_types():
    text = to_dot(parse_graph(IR))
    assert text.startswith("digraph graphllm {") and text.rstrip().endswith("}")
    assert re.search(r'label="Embedding\\n%h".*fillcolor=white', text)
    assert re.search(r'label="emb".*color=gray60.*fontsize=8', text)  # weights small and grey
    assert re.search(r'label="Print\\n!Print#1".*dashed', text)  # side effects dashed
    cluster = text[text.index('subgraph "cluster_mlp 0" {'):]
    cluster = cluster[:cluster.index("  }")]
    assert 'label="mlp 0"' in cluster and "Silu" in cluster and "MulTo" in cluster and "Embedding" not in cluster
    assert text.count("subgraph") == 1
    assert 'label="f32[T,8]"' in text and 'label="f32[32,8]", tooltip="weight", color=gray70' in text
    assert 'tooltip="%last at my \\"model\\".py:7"' in text
    assert re.search(r'out0 \[label="logits"', text)
    assert text.count(" -> ") == len(parse_graph(IR).nx.edges) + 1


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_svg_draws_the_cluster_and_the_edge_shapes():
    svg = render_svg(to_dot(parse_graph(IR)))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = [t.text for t in root.iter() if t.tag.endswith("text")]
    assert "mlp 0" in texts and "f32[T,8]" in texts and "Embedding" in texts
    assert any(g.get("class") == "cluster" for g in root.iter() if g.tag.endswith("g"))


def test_missing_graphviz_says_how_to_install(monkeypatch):
    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    with pytest.raises(GraphLLMError, match="apt-get install graphviz"):
        render_svg("digraph {}")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_bad_dot_text_is_a_clear_error():
    with pytest.raises(GraphLLMError, match="dot -Tsvg"):
        render_svg("digraph { a -> }")
