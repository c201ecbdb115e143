"""Graph's rewrite helpers (set_input(s), replace_uses, drop_unused, reorder), and that passes use only them."""

import re
from pathlib import Path

import pytest

import graphllm.passes
from graphllm.dsl.graph import INPUT_OP, WEIGHT_OP, Graph


def chain() -> Graph:
    """$x -> %a = Silu($x) -> %b = AddTo(%a, @w) -> %c = Silu(%b), output %c."""
    g = Graph()
    g.add("$x", INPUT_OP, {"name": "x"})
    g.add("@w", WEIGHT_OP, {"name": "w"})
    g.add("%a", "Silu", inputs={"input": "$x"})
    g.add("%b", "AddTo", inputs={"input0": "%a", "input1": "@w"})
    g.add("%c", "Silu", inputs={"input": "%b"})
    g.outputs["out"] = "%c"
    return g


def test_set_input_replaces_the_port_and_none_cuts_it():
    g = chain()
    g.set_input("%b", "input1", "$x")
    assert g.inputs("%b") == {"input0": "%a", "input1": "$x"}
    assert g.users("@w") == [] and ("%b", "input1") in g.users("$x")
    g.set_input("%b", "input1", None)
    assert g.inputs("%b") == {"input0": "%a"}
    g.set_input("%b", "input1", None)  # cutting an unconnected port is a no-op
    assert g.inputs("%b") == {"input0": "%a"}


def test_set_inputs_makes_the_node_read_exactly_those():
    g = chain()
    g.set_inputs("%b", {"input0": "$x"})
    assert g.inputs("%b") == {"input0": "$x"}
    assert g.users("%a") == [] and g.users("@w") == []


def test_replace_uses_moves_readers_and_outputs():
    g = chain()
    g.add("%d", "Silu", inputs={"input": "%c"})
    g.replace_uses("%c", "%b")
    assert g.users("%c") == [] and "%c" in g
    assert g.inputs("%d") == {"input": "%b"} and g.outputs == {"out": "%b"}


def test_a_node_reading_one_value_on_two_ports_is_rewired_on_both():
    g = chain()
    g.add("%e", "AddTo", inputs={"input0": "%a", "input1": "%a"})
    g.replace_uses("%a", "$x")
    assert g.inputs("%e") == {"input0": "$x", "input1": "$x"} and g.users("%a") == []


def test_is_used_counts_readers_outputs_and_side_effects():
    g = chain()
    g.add("!p", "Print", inputs={"input": "%a"})
    g.add("%dead", "Silu", inputs={"input": "$x"})
    assert g.is_used("%a") and g.is_used("%c") and g.is_used("!p")
    assert not g.is_used("%dead")


def test_drop_unused_is_transitive_and_keeps_what_is_still_read():
    g = chain()
    g.add("%d1", "Silu", inputs={"input": "%a"})
    g.add("%d2", "AddTo", inputs={"input0": "%d1", "input1": "@w"})
    g.drop_unused(["%d2"])
    assert "%d2" not in g and "%d1" not in g
    assert "%a" in g and "@w" in g  # still read by %b
    g.drop_unused(["%a", "%b"])  # used: nothing happens
    assert len(g) == 5


def test_drop_unused_keeps_side_effects_and_outputs():
    g = chain()
    g.add("%p_in", "Silu", inputs={"input": "$x"})
    g.add("!p", "Print", inputs={"input": "%p_in"})
    g.drop_unused(list(g.order()))
    assert set(g.nx) == {"$x", "@w", "%a", "%b", "%c", "%p_in", "!p"}


def test_reorder_places_nodes_before_their_anchor_first_mention_wins():
    g = chain()
    g.add("@w2", WEIGHT_OP, {"name": "w2"})  # inserted last
    g.set_input("%b", "input1", "@w2")
    g.drop_unused(["@w"])
    order = ["$x", "%a", "@w", "%b", "%c"]  # @w is gone: skipped
    g.reorder(order, {"%b": ["@w2", "%a"], "%c": ["@w2"]})  # %a and @w2 keep their first places
    assert list(g.nx) == ["$x", "%a", "@w2", "%b", "%c"]
    assert g.inputs("%b") == {"input0": "%a", "input1": "@w2"} and g.outputs == {"out": "%c"}


def test_reorder_refuses_an_order_that_leaves_a_node_out():
    g = chain()
    with pytest.raises(ValueError, match="1 node"):
        g.reorder(["$x", "%a", "%b", "%c"])


def test_reorder_is_linear():
    g = Graph()
    g.add("n0", INPUT_OP, {"name": "x"})
    n = 20000
    for i in range(1, n):
        g.add(f"n{i}", "Silu", inputs={"input": f"n{i - 1}"})
    order = list(g.nx)
    g.reorder(order + order, {f"n{i}": [f"n{i - 1}"] for i in range(1, n)})  # quadratic would take minutes
    assert list(g.nx) == order


def test_no_pass_edits_networkx_directly():
    """Passes rewrite graphs through Graph's helpers only (DESIGN.md, Contracts)."""
    folder = Path(graphllm.passes.__file__).parent
    offenders = [f"{p.name}:{i}" for p in sorted(folder.glob("*.py"))
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"\.nx\b|networkx", line)]
    assert offenders == []
