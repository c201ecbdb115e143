"""The typed plan: save/load round trip, clear errors for another version or a malformed file, and
an artifact loaded and run by the runtime without any code generator or TVM compiler module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graphllm.codegen.compile import compile_graph, make_plan
from graphllm.dsl.reference import ReferenceExecutor
from graphllm.dsl.types import TensorType
from graphllm.errors import ModelLoadError
from graphllm.io.cache import FileSum, checked_json_text
from graphllm.plan import (LIB_FILE, PLAN_FILE, PLAN_VERSION, DamagedBuild, ExtraArg, HostStep, KVCacheArg, PackedWeightValue, Plan, Step,
                           ValueArg, WeightValue, read_build)
from graphllm.pipeline import build_graph

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_llama"
CONFIG = json.loads((FIXTURE / "config.json").read_text())
WEIGHTS = load_file(FIXTURE / "model.safetensors")
TYPES = {k: TensorType(v.shape) for k, v in WEIGHTS.items()}

# No Linear: no weight needs a packer, so nothing outside the runtime is needed to load it.
NO_PACK_MODEL = """\
from graphllm.dsl.graph import ComputeGraph

class M(ComputeGraph):
    def build(self):
        data, weight, config = self.data, self.weight, self.config
        config["max_positions"] = config["max_position_embeddings"]
        eps = config["rms_norm_eps"]
        self.Embedding(data["inputIds"], weight["model.embed_tokens.weight"], data["h"])
        self.RMSNorm(data["h"], weight["model.layers.0.input_layernorm.weight"], eps, data["n"])
        self.SplitLastTokenStates(data["n"], data["seqLens"], data["last"])
        self.RMSNorm(data["last"], weight["model.norm.weight"], eps, data["logits"])

__model__ = M
"""


@pytest.fixture(scope="module")
def plan() -> Plan:
    """The plan of the tiny Llama (kernels lowered, not built), one step given knobs."""
    graph = build_graph(CONFIG, TYPES)
    made, _ = make_plan(graph, {"kind": "llvm", "mcpu": "x86-64-v3"})
    steps = list(made.steps)
    first = next(i for i, s in enumerate(steps) if isinstance(s, Step))
    steps[first] = replace(steps[first], knobs={"tile": 6, "split": [2, 4]})
    return replace(made, steps=tuple(steps))


def test_plan_is_typed(plan: Plan) -> None:
    """Packed weights name their source weight and layout; caches and extras are argument kinds."""
    packed = [v for v in plan.values.values() if isinstance(v, PackedWeightValue)]
    assert packed and all(isinstance(plan.values[p.source], WeightValue) and p.layout for p in packed)
    args = [a for s in plan.kernel_steps for a in s.args]
    assert {KVCacheArg("key"), KVCacheArg("value"), ExtraArg("positions"), ExtraArg("last_rows")} <= set(args)
    assert all(isinstance(a, (ValueArg, ExtraArg, KVCacheArg)) for a in args)
    attention = [s for s in plan.kernel_steps if KVCacheArg("key") in s.args]
    default_kv = "float16"
    assert attention and all(s.layer is not None and s.kv_shape and s.kv_dtype == default_kv for s in attention)


def test_plan_round_trip(plan: Plan, tmp_path: Path) -> None:
    """save -> load gives an equal plan, knobs included."""
    plan.save(tmp_path)
    loaded = Plan.load(tmp_path)
    assert loaded == plan
    assert loaded.kernel_steps[0].knobs == {"tile": 6, "split": [2, 4]}


def test_host_steps_round_trip(tmp_path: Path) -> None:
    """A host op (Print) keeps its ports and location."""
    path = tmp_path / "m.py"
    path.write_text(NO_PACK_MODEL.replace('eps, data["n"])', 'eps, data["n"])\n        self.Print(data["n"])'))
    made, _ = make_plan(build_graph(CONFIG, TYPES, custom=path), {"kind": "llvm"})
    hosts = [s for s in made.steps if isinstance(s, HostStep)]
    assert [h.op for h in hosts] == ["Print"] and "m.py" in hosts[0].loc
    made.save(tmp_path)
    assert Plan.load(tmp_path) == made


def test_another_version_is_a_clear_error(plan: Plan, tmp_path: Path) -> None:
    """A plan of another format version names the file and both versions."""
    data = plan.to_json()
    data["version"] = PLAN_VERSION - 1
    (tmp_path / PLAN_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError) as e:
        Plan.load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / PLAN_FILE) in msg and f"format {PLAN_VERSION - 1}" in msg and f"format {PLAN_VERSION}" in msg


@pytest.mark.parametrize("corrupt", [
    lambda d: "{not json",
    lambda d: json.dumps([1, 2]),
    lambda d: checked_json_text({k: v for k, v in d.items() if k != "steps"}),
    lambda d: checked_json_text({**d, "steps": [{**d["steps"][0], "kind": "gpu"}]}),
    lambda d: checked_json_text({**d, "steps": [{**d["steps"][0], "args": [{"extra": "nonsense"}]}]}),
    lambda d: checked_json_text({**d, "steps": [{**d["steps"][0], "args": [{"value": "%nowhere"}]}]}),
    lambda d: checked_json_text({**d, "values": {**d["values"], "%x": {"kind": "buffer", "type": "x99[T,4]"}}}),
    lambda d: checked_json_text({**d, "library": {"size": "big"}}),
    lambda d: json.dumps(d),
], ids=["not_json", "not_object", "no_steps", "step_kind", "extra_name", "dangling_value", "bad_type", "bad_library",
        "no_checksum"])
def test_malformed_plan_is_a_clear_error(plan: Plan, tmp_path: Path, corrupt) -> None:
    """A malformed plan file (written with a valid checksum, to reach the parser) or one without a checksum is a
    ModelLoadError naming the file, never a KeyError or a traceback."""
    (tmp_path / PLAN_FILE).write_text(corrupt(plan.to_json()))
    with pytest.raises(ModelLoadError, match=str(tmp_path / PLAN_FILE)):
        Plan.load(tmp_path)


def test_a_damaged_plan_names_its_checksum(plan: Plan, tmp_path: Path) -> None:
    """A plan edited after it was written is refused for its checksum, before its content is trusted."""
    (tmp_path / PLAN_FILE).write_text(checked_json_text(plan.to_json()).replace('"output": "', '"output": "%', 1))
    with pytest.raises(DamagedBuild, match="the plan is damaged: it does not match its checksum"):
        Plan.load(tmp_path)


def test_the_library_is_checked_before_it_is_opened(tmp_path: Path) -> None:
    """The plan records the library's size and sha256; a changed library is refused by read_build."""
    model = tmp_path / "m.py"
    model.write_text(NO_PACK_MODEL)
    artifact = compile_graph(build_graph(CONFIG, TYPES, custom=model), tmp_path / "artifact", show_progress=False)
    plan = read_build(artifact)
    assert plan.library == FileSum.of(artifact / LIB_FILE) and plan.model is None
    lib = bytearray((artifact / LIB_FILE).read_bytes())
    lib[-100] ^= 1
    (artifact / LIB_FILE).write_bytes(lib)
    with pytest.raises(DamagedBuild, match=f"{artifact}: {LIB_FILE} does not match the checksum "
                                           f"recorded when it was written; recompile it"):
        read_build(artifact)
    (artifact / LIB_FILE).write_bytes(lib[:1000])
    with pytest.raises(DamagedBuild, match=f"{LIB_FILE} is 1000 bytes, {len(lib)} were written"):
        read_build(artifact)


def test_runtime_loads_an_artifact_without_codegen_or_tvm(tmp_path: Path) -> None:
    """A fresh process loads and runs a compiled artifact importing no graphllm.codegen module and no `tvm`."""
    model = tmp_path / "m.py"
    model.write_text(NO_PACK_MODEL)
    graph = build_graph(CONFIG, TYPES, custom=model)
    artifact = compile_graph(graph, tmp_path / "artifact", show_progress=False)
    ids = [5, 9, 33, 2]
    expected = ReferenceExecutor(graph, WEIGHTS, max_context=16).run(ids, range(4), [4], [0])
    code = f"""
        import sys
        import numpy as np
        from safetensors.numpy import load_file
        from graphllm.runtime.executor import CompiledExecutor
        weights = load_file({str(FIXTURE / "model.safetensors")!r})
        ex = CompiledExecutor({str(artifact)!r}, weights, max_context=16)
        np.save({str(tmp_path / "out.npy")!r}, ex.run({ids}, range(4), [4], [0]))
        print(sorted(m for m in sys.modules if m.startswith("graphllm.codegen") or m == "tvm" or m.startswith("tvm.")))
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5, rtol=0)
