"""Warm starts (runtime/starts.py): a model's second start opens its build without tracing the graph or reading the
model, computes exactly what the cold start computes, and anything damaged or changed makes the start cold again
(one warning where something was damaged), in a temporary GRAPHLLM_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from graphllm.plan import graph_key
from graphllm.runtime import llm as llm_module
from graphllm.runtime.llm import LLM

FIXTURES = Path(__file__).parents[1] / "fixtures"
GGUF = FIXTURES / "gguf" / "tiny_llama3.Q8_0.gguf"
GEMMA = FIXTURES / "gguf" / "tiny_gemma2.Q8_0.gguf"  # its norms are stored as 1 + w: derived weights
HF_FOLDER = FIXTURES / "tiny_llama"  # safetensors
PROMPT = [1, 5, 9, 2, 7, 3]
TEXT = "Hello there, how are you?"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GRAPHLLM_HOME for this test."""
    folder = tmp_path / "home"
    monkeypatch.setenv("GRAPHLLM_HOME", str(folder))
    return folder


def records(home: Path) -> list[Path]:
    """The warm-start records in a home."""
    return sorted(p for p in (home / "starts").iterdir() if not p.name.startswith(".")) if (home / "starts").exists() else []


def logits(llm: LLM) -> np.ndarray:
    """A prefill's and two decodes' logits."""
    out = [llm.step(PROMPT, range(len(PROMPT)), [len(PROMPT)], [0])[0]]
    for i in range(2):
        out.append(llm.decode(int(out[-1].argmax()), len(PROMPT) + i))
    return np.stack(out)


@pytest.mark.parametrize("model", [GGUF, GEMMA, HF_FOLDER], ids=["gguf", "gguf_derived_norms", "hf_folder"])
def test_the_second_start_is_warm_and_computes_the_same(home: Path, model: Path) -> None:
    cold = LLM.load(model, max_context=32)
    assert cold.model is not None and len(records(home)) == 1
    warm = LLM.load(model, max_context=32)
    assert warm._model is None and warm._graph is None  # nothing of the model read, no graph built
    np.testing.assert_array_equal(logits(warm), logits(cold))
    assert warm.tokenizer.encode(TEXT) == cold.tokenizer.encode(TEXT)
    ids = cold.tokenizer.encode(TEXT)
    assert warm.tokenizer.decode(ids) == cold.tokenizer.decode(ids)
    assert warm.tokenizer.eos_token_ids == cold.tokenizer.eos_token_ids
    assert warm.tokenizer.bos_token_id == cold.tokenizer.bos_token_id
    assert warm.tokenizer.chat_template == cold.tokenizer.chat_template
    assert (warm.config, warm.generation_config, warm.file_type, warm.model_path, warm.notes, warm.kv_dtype) == \
        (cold.config, cold.generation_config, cold.file_type, cold.model_path, cold.notes, cold.kv_dtype)
    assert warm.kv_bytes_per_position() == cold.kv_bytes_per_position()
    assert warm.complete(TEXT).text == cold.complete(TEXT).text
    assert graph_key(warm.graph) == graph_key(cold.graph)  # built on first use, the same graph
    assert len(records(home)) == 1


def test_other_flags_or_a_changed_model_file_start_cold(home: Path, tmp_path: Path) -> None:
    model = Path(shutil.copy(GGUF, tmp_path / "model.gguf"))
    LLM.load(model, max_context=32)
    LLM.load(model, max_context=32, kv_dtype="float32")
    assert len(records(home)) == 2
    LLM.load(model, max_context=64, threads=1)  # another thread count: its own record (tuned knobs depend on it)
    before = len(records(home))
    LLM.load(model, max_context=64)  # context and slots are the executor's, not the start's
    assert len(records(home)) == before
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    cold = LLM.load(model, max_context=32)
    assert cold._model is not None and len(records(home)) == before + 1


def test_a_damaged_record_is_removed_and_the_start_is_cold(home: Path) -> None:
    expected = logits(LLM.load(GGUF, max_context=32))
    (record,) = records(home)
    data = json.loads((record / "start.json").read_text())
    data["build"] = "elsewhere"
    (record / "start.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"the warm-start record .* is unusable \(it does not match its checksum\); "
                                         r"starting cold"):
        llm = LLM.load(GGUF, max_context=32)
    assert llm._model is not None
    np.testing.assert_array_equal(logits(llm), expected)
    assert records(home) == [record] and LLM.load(GGUF, max_context=32)._model is None  # recorded again


def test_a_well_formed_record_of_the_wrong_shape_is_removed(home: Path) -> None:
    """A record whose checksum matches but whose fields are not a start's (another graphllm's, hand-made)."""
    from graphllm.io.cache import read_checked_json, write_checked_json

    LLM.load(GGUF, max_context=32)
    (record,) = records(home)
    data = read_checked_json((record / "start.json").read_text())
    del data["weights"]
    data["config"] = {}
    write_checked_json(record / "start.json", data)
    with pytest.warns(UserWarning, match=r"is unusable \(malformed: weights\); starting cold"):
        assert LLM.load(GGUF, max_context=32)._model is not None
    assert records(home) == [record] and LLM.load(GGUF, max_context=32)._model is None


def test_a_damaged_tokenizer_copy_falls_back_to_the_models(home: Path) -> None:
    cold = LLM.load(GGUF, max_context=32)
    (record,) = records(home)
    (record / "tokenizer.json").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match=r"its tokenizer cannot be read: .*; reading the model's") as caught:
        again = LLM.load(GGUF, max_context=32)  # read before the weights: the start is cold, and recorded again
    assert len(caught) == 1 and again._model is not None
    assert again.tokenizer.encode(TEXT) == cold.tokenizer.encode(TEXT)
    assert records(home) == [record]
    (record / "tokenizer.json").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match=r"its tokenizer cannot be read") as caught:
        lazy = LLM.load(GGUF, max_context=32, tokenizer=False)  # warm; the copy is read (and found damaged) now
        assert lazy.tokenizer.encode(TEXT) == cold.tokenizer.encode(TEXT)
        assert lazy.tokenizer.decode([5, 6]) == cold.tokenizer.decode([5, 6])
    assert len(caught) == 1 and records(home) == []


def test_a_tokenizer_left_unread_is_read_when_first_used(home: Path) -> None:
    """LLM.load(tokenizer=False), as bench loads: a warm start reads no tokenizer until one is asked for."""
    cold = LLM.load(GGUF, max_context=32)
    warm = LLM.load(GGUF, max_context=32, tokenizer=False)
    assert warm._tokenizer is llm_module._UNREAD
    np.testing.assert_array_equal(logits(warm), logits(cold))
    assert warm.complete(TEXT).text == cold.complete(TEXT).text  # reads it now
    assert warm.tokenizer.encode(TEXT) == cold.tokenizer.encode(TEXT)


def test_a_removed_build_or_damaged_packed_weight_is_mended_by_a_cold_start(home: Path) -> None:
    expected = logits(LLM.load(GGUF, max_context=32))
    (build,) = (home / "builds").iterdir()
    shutil.rmtree(build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llm = LLM.load(GGUF, max_context=32)  # the build is compiled again, quietly
    assert llm._model is not None and build.is_dir()
    np.testing.assert_array_equal(logits(llm), expected)
    victim = max(build.glob("packed/*/*.npy"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-4096:] = bytes(4096)
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"packed weight\(s\) .* were damaged"):
        llm = LLM.load(GGUF, max_context=32)
    np.testing.assert_array_equal(logits(llm), expected)


def test_a_warm_run_imports_neither_the_graph_nor_the_model_reader(home: Path) -> None:
    """Two greedy `graphllm run`s: the same text; the second process never imports the graph (networkx), the model
    readers, the IR and template parsers, the server's asyncio, tvm_ffi's Python package, OpenSSL (hashlib),
    numpy.random or importlib.metadata: what a warm start leaves out of the process's memory."""
    script = ("import sys; from graphllm.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(m for m in ('networkx', 'gguf', 'lark', 'jinja2', 'asyncio', 'safetensors', 'tvm_ffi', "
              "'_hashlib', 'numpy.random', 'importlib.metadata') if m in sys.modules), file=sys.stderr); sys.exit(code)")
    args = [sys.executable, "-c", script, "run", "-m", str(GGUF), "Hello", "-n", "5", "--ignore-eos", "-c", "32"]
    env = dict(os.environ, GRAPHLLM_HOME=str(home))
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    second = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert second.stdout == first.stdout
    assert "'networkx'" in first.stderr.splitlines()[-1]
    assert second.stderr.splitlines()[-1] == "[]", second.stderr
