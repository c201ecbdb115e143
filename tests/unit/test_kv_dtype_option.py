"""--kv-dtype end to end: the attention nodes' kvDtype attribute, the graph and build cache keys, the text IR, the
plan's steps, the executors' caches, the KV size in bytes, and one-line errors for a bad value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.codegen.compile import compile_graph, make_plan
from graphllm.dsl.ops import KV_DTYPES, get_spec
from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.textir import parse_graph, print_graph
from graphllm.dsl.types import TensorType
from graphllm.errors import GraphBuildError, GraphLLMError
from graphllm.passes.kv_dtype import DEFAULT_KV_DTYPE, graph_kv_dtype, kv_bytes_per_position, kv_dtype_name
from graphllm.passes.verify import verify
from graphllm.dsl.graph import Graph
from graphllm.pipeline import Built, GraphOptions, build, build_graph
from graphllm.plan import KVCacheArg, Plan
from graphllm.runtime.builds import cache_key
from graphllm.runtime.executor import CompiledExecutor

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_llama"
CONFIG = json.loads((FIXTURE / "config.json").read_text())
WEIGHTS = load_file(FIXTURE / "model.safetensors")
TYPES = {k: TensorType(v.shape) for k, v in WEIGHTS.items()}


@pytest.fixture(scope="module")
def built() -> dict[str, Built]:
    """The tiny Llama built with each KV dtype (graph and weights)."""
    return {dtype: build(FIXTURE, GraphOptions(kv_dtype=dtype)) for dtype in KV_DTYPES}


@pytest.fixture(scope="module")
def graphs(built: dict[str, Built]) -> dict[str, Graph]:
    """The tiny Llama's optimised graph with each KV dtype."""
    return {dtype: b.graph for dtype, b in built.items()}


def _attention_nodes(graph) -> list[str]:
    return [n for n in graph.order() if get_spec(graph[n]["op"]) and get_spec(graph[n]["op"]).kv_shape]


@pytest.mark.parametrize("value,name", [("f16", "float16"), ("float16", "float16"), ("f32", "float32"),
                                        ("float32", "float32")])
def test_names_are_accepted(value: str, name: str) -> None:
    assert kv_dtype_name(value) == name


@pytest.mark.parametrize("value", ["bf16", "float64", "q8_0", ""])
def test_a_bad_value_is_a_one_line_error(value: str) -> None:
    with pytest.raises(GraphLLMError) as e:
        kv_dtype_name(value)
    assert "\n" not in str(e.value) and repr(value) in str(e.value) and "f16" in str(e.value)


def test_every_attention_node_carries_the_dtype(graphs) -> None:
    """Each cache-owning node (QKVAttention after fusion) has kvDtype; the default build has the default."""
    for dtype, graph in graphs.items():
        nodes = _attention_nodes(graph)
        assert nodes and {graph[n]["attrs"]["kvDtype"] for n in nodes} == {dtype}
        assert graph_kv_dtype(graph) == dtype
    assert graph_kv_dtype(build_graph(CONFIG, TYPES)) == DEFAULT_KV_DTYPE == "float16"


def test_the_dtype_is_part_of_the_graph_and_build_keys(graphs) -> None:
    """Two KV dtypes never share a build: the graph (hence the build cache key) differs."""
    target = {"kind": "llvm", "mcpu": "x86-64-v3"}
    keys = {cache_key(g, target) for g in graphs.values()}
    assert len(keys) == 2


def test_the_text_ir_writes_and_reads_it(graphs) -> None:
    text = print_graph(graphs["float16"])
    assert text.count('kvDtype="float16"') == CONFIG["num_hidden_layers"]
    parsed = verify(parse_graph(text))
    assert graph_kv_dtype(parsed) == "float16"


def test_an_ir_without_the_attribute_keeps_a_float32_cache(graphs) -> None:
    """IR written before kvDtype existed had float32 caches: the float16 default does not change how it reads."""
    text = print_graph(graphs["float16"]).replace(', kvDtype="float16"', "")
    assert "kvDtype" not in text
    assert graph_kv_dtype(verify(parse_graph(text))) == "float32"


def test_an_unknown_dtype_in_the_graph_fails_verify(graphs) -> None:
    """An IR edited to an unsupported kvDtype is a build error naming the attribute."""
    text = print_graph(graphs["float16"]).replace("float16", "bfloat16", 1)
    with pytest.raises(GraphBuildError, match="kvDtype 'bfloat16' must be one of float16, float32"):
        verify(parse_graph(text))


def test_the_plan_carries_the_dtype_and_round_trips(graphs, tmp_path: Path) -> None:
    for dtype, graph in graphs.items():
        plan, _ = make_plan(graph, {"kind": "llvm", "mcpu": "x86-64-v3"})
        cache_steps = [s for s in plan.kernel_steps if KVCacheArg("key") in s.args]
        assert cache_steps and {s.kv_dtype for s in cache_steps} == {dtype}
        plan.save(tmp_path)
        assert Plan.load(tmp_path) == plan


def test_kv_bytes_follow_the_element_size(graphs) -> None:
    """float16 halves the bytes a position takes: layers x 2 (k, v) x kv heads x head dim x itemsize."""
    heads = CONFIG["num_key_value_heads"]
    dim = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
    layers = CONFIG["num_hidden_layers"]
    assert kv_bytes_per_position(graphs["float32"]) == layers * 2 * heads * dim * 4
    assert kv_bytes_per_position(graphs["float16"]) * 2 == kv_bytes_per_position(graphs["float32"])


def test_the_reference_executor_stores_the_dtype(built) -> None:
    """The reference's caches have the graph's dtype; the float16 cache holds the float32 one's values rounded."""
    runs = {}
    for dtype, b in built.items():
        ref = ReferenceExecutor(b.graph, b.weights, max_context=16)
        assert {c.dtype for pair in ref.caches.values() for c in pair} == {np.dtype(dtype)}
        logits = ref.run([5, 9, 30, 2], range(4), [4], [0])
        runs[dtype] = (ref, logits)
    k16, k32 = runs["float16"][0].caches[0][0], runs["float32"][0].caches[0][0]
    np.testing.assert_array_equal(k16, k32.astype(np.float16))  # layer 0's keys see no earlier rounding
    np.testing.assert_allclose(runs["float16"][1], runs["float32"][1], atol=5e-3 * np.abs(runs["float32"][1]).max())


def test_the_compiled_executor_allocates_the_dtype(built, tmp_path: Path) -> None:
    """An artifact compiled with float16 caches gets float16 caches, and computes what the reference does."""
    graph, weights = built["float16"].graph, built["float16"].weights
    artifact = compile_graph(graph, tmp_path / "art", show_progress=False)
    ex = CompiledExecutor(artifact, weights, max_context=16)
    assert ex.caches and {c.dtype for pair in ex.caches.values() for c in pair} == {np.dtype("float16")}
    ref = ReferenceExecutor(graph, weights, max_context=16)
    for step in ([5, 9, 30, 2], range(4), [4], [0]), ([7], [4], [1], [0]):
        np.testing.assert_allclose(ex.run(*step), ref.run(*step), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ex.caches[0][1][0, :5], ref.caches[0][1][0, :5])  # layer 0's values: same rounding


def test_the_ir_path_refuses_the_flag(graphs, tmp_path: Path) -> None:
    """An IR file fixes the graph, kvDtype included: --kv-dtype with --ir is a one-line error."""
    ir = tmp_path / "g.ir"
    ir.write_text(print_graph(graphs["float32"]))
    with pytest.raises(GraphLLMError, match="drop --kv-dtype"):
        build(None, GraphOptions(ir=ir, kv_dtype="f16"), need_model=False)


def test_the_cli_flag_reaches_the_graph_and_rejects_bad_values(tmp_path: Path) -> None:
    """`graphllm dump --kv-dtype f32` writes float32 attention nodes; a bad value is one error line, exit 2."""
    env_code = [sys.executable, "-m", "graphllm.cli", "dump", "-m", str(FIXTURE)]
    done = subprocess.run([*env_code, "--kv-dtype", "f32"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "kvDtype" in done.stdout and "float16" not in done.stdout
    bad = subprocess.run([*env_code, "--kv-dtype", "int8"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines()[-1] == ("graphllm dump: error: argument --kv-dtype: unknown KV-cache dtype "
                                                   "'int8' (use f16, float16, f32 or float32)")


def test_eval_measures_the_float16_cache_against_float32(tmp_path: Path, capsys) -> None:
    """`eval --dtype float32 --kv-dtype f16`: the float32 reference keeps a float32 cache, so the KL is the cache's."""
    from graphllm.cli import main

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. It was a sunny day in the park.\n" * 3)
    base = ["eval", "-m", str(FIXTURE), "--text", str(text), "--window", "16", "--chunk", "8", "--executor",
            "reference", "--dtype", "float32"]
    assert main([*base, "--kv-dtype", "f16"]) == 0
    out = capsys.readouterr().out
    assert "--kv-dtype float16" in out
    kl = float(next(line for line in out.splitlines() if line.startswith("mean KL")).split()[2])
    assert 0 < kl < 1e-4
    assert main([*base, "--kv-dtype", "f32"]) == 0
    assert "mean KL" not in capsys.readouterr().out  # float32 weights and cache: nothing to compare against
