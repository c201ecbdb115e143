"""The TVM-compiled executor: same logits as the reference executor and transformers; builds cached."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphllm.plan import Plan
from graphllm.runtime.llm import LLM

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOL = 1e-4


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen2"])
def pair(request, exact_kv):
    folder = FIXTURES / request.param
    return (LLM.load(folder, executor="tvm", max_context=160, num_slots=2, kv_dtype=exact_kv),
            np.load(folder / "expected.npz"))


def test_compiled_matches_transformers_prefill_and_decode(pair):
    llm, exp = pair
    for p in range(3):
        ids = exp[f"prompt{p}_ids"].tolist()
        logits = llm.prefill(ids, slot=0)
        position = len(ids)
        for k, expected in enumerate(exp[f"prompt{p}_step_logits"]):
            np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0, err_msg=f"prompt {p} step {k}")
            token = int(exp[f"prompt{p}_new_tokens"][k])
            logits = llm.decode(token, position, slot=0)
            position += 1


@pytest.mark.parametrize("tokens", [1, 7, 128, 150])
def test_compiled_equals_reference_at_token_counts(pair, tokens):
    llm, _ = pair
    ref = LLM.load(llm.model.path, executor="reference", max_context=160, kv_dtype=llm.kv_dtype)
    ids = (np.arange(tokens) * 37 % 300 + 3).tolist()
    np.testing.assert_allclose(llm.step(ids, range(tokens), [tokens], [1]),
                               ref.step(ids, range(tokens), [tokens], [0]), atol=TOL, rtol=0)


def test_compiled_batched_sequences(pair):
    llm, exp = pair
    a, b = exp["prompt1_ids"].tolist(), exp["prompt2_ids"].tolist()
    out = llm.step(a + b, list(range(len(a))) + list(range(len(b))), [len(a), len(b)], [0, 1])
    np.testing.assert_allclose(out[0], exp["prompt1_prefill_logits"][-1], atol=TOL, rtol=0)
    np.testing.assert_allclose(out[1], exp["prompt2_prefill_logits"][-1], atol=TOL, rtol=0)


def _run(home, *args):
    env = dict(os.environ, GRAPHLLM_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "graphllm.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_a_first_start_in_a_terminal_shows_the_compile_progress(tmp_path):
    """In a terminal the compile shows a live line (kernel k of n), then one line saying it compiled."""
    import pexpect

    env = dict(os.environ, GRAPHLLM_HOME=str(tmp_path / "home"))
    child = pexpect.spawn(sys.executable, ["-m", "graphllm.cli", "run", "-m", str(FIXTURES / "tiny_llama"), "Hi",
                                           "-n", "2"], env=env, encoding="utf-8", timeout=600)
    child.expect(r"lowering kernel \d+ of \d+ \(\w+\)")  # the display is refreshed at most every 0.1 s
    child.expect(r"compiled \d+ kernels in [\d.]+ s -> ")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "note:" not in child.before


def test_artifact_round_trip_and_cache(tmp_path):
    home = tmp_path / "home"
    model = str(FIXTURES / "tiny_llama")
    out = tmp_path / "artifact"
    r = _run(home, "compile", "-m", model, "-o", str(out))
    assert r.returncode == 0, r.stderr
    plan = Plan.load(out)
    assert plan.target["kind"] == "llvm" and plan.graphllm and plan.tvm and plan.compile.kernels > 0
    args = ["run", "-m", model, "Hello", "-n", "8", "--ignore-eos"]
    from_artifact = _run(home, *args, "--artifact", str(out))
    assert from_artifact.returncode == 0, from_artifact.stderr
    assert "compiled" not in from_artifact.stderr
    first = _run(home, *args)
    one_line = re.fullmatch(r"compiled \d+ kernels in [\d.]+ s -> \S+\n", first.stderr)
    assert first.returncode == 0 and one_line, first.stderr  # one line, not a second note
    second = _run(home, *args)
    assert second.returncode == 0 and second.stderr == ""  # a cached start says nothing
    verbose = _run(home, *args, "-v")
    assert verbose.returncode == 0 and verbose.stderr.startswith("note: loaded the build from "), verbose.stderr
    reference = _run(home, *args, "--executor", "reference")
    assert from_artifact.stdout == first.stdout == second.stdout == reference.stdout
    # a corrupt cache entry is rebuilt, never a crash
    build = next((home / "builds").iterdir())
    (build / "plan.json").write_text("{not json")
    third = _run(home, *args)
    assert third.returncode == 0 and "rebuilding" in third.stderr and third.stdout == first.stdout
    (build / "kernels.so").write_bytes(b"garbage")
    fourth = _run(home, *args)
    assert fourth.returncode == 0 and "rebuilding" in fourth.stderr and fourth.stdout == first.stdout


def test_artifact_for_another_model_is_a_clear_error(tmp_path):
    out = tmp_path / "artifact"
    assert _run(tmp_path / "home", "compile", "-m", str(FIXTURES / "tiny_llama"), "-o", str(out)).returncode == 0
    r = _run(tmp_path / "home", "run", "-m", str(FIXTURES / "tiny_qwen2"), "x", "--artifact", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr == (
        f"error: the build in {out} was compiled for another model or other --dtype/--kv-dtype/--custom/--passes flags (its "
        f"model: {FIXTURES / 'tiny_llama'}); pass -m {FIXTURES / 'tiny_llama'} with the flags given to `graphllm "
        f"compile`, or recompile it with `graphllm compile` for this model\n")


def test_packed_weights_are_reused_on_the_next_start(tmp_path, monkeypatch):
    from graphllm import layouts

    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path))
    first = LLM.load(FIXTURES / "tiny_llama", max_context=32)
    ids = [5, 9, 33]
    expected = first.step(ids, range(3), [3], [0])
    assert list((tmp_path / "builds").glob("*/packed/*/*.npy"))
    monkeypatch.setattr(layouts, "PACKERS", {})  # a second start must not pack again
    again = LLM.load(FIXTURES / "tiny_llama", max_context=32)
    np.testing.assert_array_equal(again.step(ids, range(3), [3], [0]), expected)


@pytest.mark.parametrize("passes", [
    ["verify", "dce", "cse"],  # unfused: every op its own kernel
    ["verify", "dce", "cse", "merge_linears"],  # merged projections + Split copies, attention on separate q/k/v
    ["verify", "dce", "cse", "fuse_norm", "fuse_residual", "fuse_rope"],  # fusions without merging
], ids=["unfused", "merge_only", "fuse_without_merge"])
def test_partial_pipelines_compile_to_the_same_logits(passes, exact_kv):
    """The fused plan's logits equal the unfused plan's (and the reference's) with the passes on or off."""
    folder = FIXTURES / "tiny_qwen2"  # q/k/v biases: merged rows and biases
    exp = np.load(folder / "expected.npz")
    llm = LLM.load(folder, executor="tvm", max_context=64, passes=passes, kv_dtype=exact_kv)
    ids = exp["prompt1_ids"].tolist()
    logits = llm.prefill(ids, slot=0)
    np.testing.assert_allclose(logits, exp["prompt1_step_logits"][0], atol=TOL, rtol=0)
    logits = llm.decode(int(exp["prompt1_new_tokens"][0]), len(ids), slot=0)
    np.testing.assert_allclose(logits, exp["prompt1_step_logits"][1], atol=TOL, rtol=0)
