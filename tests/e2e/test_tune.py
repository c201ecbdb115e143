"""`graphllm tune` on the tiny Llama fixture: the database, its use by compile/run, resume, identity, export/import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphllm.cli import main
from graphllm.codegen.tuning import DB_FILE, TuningDB, tuned_knobs
from graphllm.plan import Plan
from graphllm.runtime.llm import LLM
from graphllm.tools.tune import driver
from graphllm.tools.tune.driver import TuneOptions, tune_model

MODEL = str(Path(__file__).parents[1] / "fixtures" / "tiny_llama")


def options(db: Path, **kw: Any) -> TuneOptions:
    """A fast tune: two candidates per kernel, few rounds, no comparison."""
    return TuneOptions(**{**dict(model=MODEL, threads=2, db=db, trials=2, rounds=2, step_rounds=1, compare_rounds=0,
                                 show_progress=False), **kw})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def tuned_db(home: Path) -> Path:
    """A database tuned for the fixture, with one kernel's knob set to a non-default value the test can see."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHLLM_HOME", str(home))
    db = home / "tuning"
    tune_model(options(db))
    data = TuningDB.load(db)
    attention = next(r for r in data.kernels.values() if r["op"] == "QKVAttention")
    attention["knobs"].update(key_block=16, key_unroll=2)
    data.save()
    yield db
    mp.undo()


def test_tune_writes_records_with_identity(tuned_db: Path) -> None:
    """Every tunable kernel has a record keyed by target, threads and versions; step knobs judged in context."""
    db = TuningDB.load(tuned_db)
    assert len(db.kernels) == 8
    record = next(r for r in db.kernels.values() if r["op"] == "FusedLinear")
    assert record["identity"]["threads"] == 2 and record["identity"]["target"]["kind"] == "llvm"
    assert record["judged"]["large_from"] == "step" and record["candidates"] <= 2
    assert record["kernel"].startswith("cpu:fusedlinear_")


def test_next_build_uses_tuned_knobs_and_equals_reference(tuned_db: Path, home: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """compile prints the note; the plan's steps record the tuned values; logits equal the reference executor's."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(home))
    assert main(["compile", "-m", MODEL, "-o", str(home / "art")]) == 0
    assert "note: using tuned knobs for 8 of 8 kernels from" in capsys.readouterr().err
    steps = [s for s in Plan.load(home / "art").kernel_steps if s.op == "QKVAttention" and s.knobs]
    assert steps and all(s.knobs["key_block"] == 16 and s.knobs["key_unroll"] == 2 for s in steps)
    llm = LLM.load(MODEL, threads=2, tuned=tuned_db, max_context=32)
    assert any(n.startswith("using tuned knobs for 8 of 8") for n in llm.notes)
    ref = LLM.load(MODEL, executor="reference", max_context=32)
    ids = [1, 5, 9, 33, 7, 2]
    np.testing.assert_allclose(llm.step(ids, range(6), [6], [0]), ref.step(ids, range(6), [6], [0]),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(llm.decode(4, 6), ref.decode(4, 6), rtol=1e-3, atol=1e-3)


def test_no_tuned_and_other_target_are_ignored(tuned_db: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--no-tuned builds the defaults; a record for another target or thread count never applies."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(home))
    assert main(["compile", "-m", MODEL, "-o", str(tmp_path / "plain"), "--no-tuned"]) == 0
    assert "using tuned knobs" not in capsys.readouterr().err
    assert all(s.knobs.get("key_block", 32) == 32 for s in Plan.load(tmp_path / "plain").kernel_steps)
    llm = LLM.load(MODEL, threads=2, max_context=32)
    graph, target = llm.graph, llm.executor.plan.target
    assert len(tuned_knobs(graph, target, 2, tuned_db).knobs) == 8
    assert tuned_knobs(graph, target, 1, tuned_db).knobs == {}
    data = json.loads((tuned_db / DB_FILE).read_text())
    for record in data["kernels"].values():
        record["identity"]["target"]["mcpu"] = "another-cpu"
    other = tmp_path / "other"
    other.mkdir()
    (other / DB_FILE).write_text(json.dumps(data))
    assert tuned_knobs(graph, target, 2, other).knobs == {}


def test_interrupted_tune_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after k kernels keeps their records; the rerun measures only the others."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path))
    measured: list[str] = []
    real = driver.search

    def stop_after_two(bench: Any, *args: Any) -> Any:
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append(bench.req.key())
        return real(bench, *args)
    monkeypatch.setattr(driver, "search", stop_after_two)
    db = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        tune_model(options(db, trials=1))
    assert len(TuningDB.load(db).kernels) == 2
    monkeypatch.setattr(driver, "search", real)
    result = tune_model(options(db, trials=1))
    assert len(result["measured"]) == 6 and not {m.split(":")[1] for m in result["measured"]} & set(measured)
    assert len(TuningDB.load(db).kernels) == 8


@pytest.mark.slow  # 33 s; the default run checks the random K-quant blocks themselves (tests/unit/test_qformats.py)
def test_tune_a_kquant_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """K-quant kernels (whose blocks only llama.cpp makes) are tuned on random blocks, and the build the tuned
    knobs make computes what the reference does."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path))
    model = str(Path(__file__).parents[1] / "fixtures" / "gguf_kquant" / "tiny_llama_k.Q4_K_M.gguf")
    result = tune_model(options(tmp_path / "db", model=model, trials=1))
    kinds = {r["kernel"].split("_")[0] for r in TuningDB.load(tmp_path / "db").kernels.values()}
    assert result["measured"] and "cpu:fusedlinear" in kinds
    tuned = LLM.load(model, max_context=32, tuned=tmp_path / "db", kv_dtype="float32")
    ref = LLM.load(model, max_context=32, executor="reference", kv_dtype="float32")
    ids = [1, 5, 9, 2]
    np.testing.assert_allclose(tuned.step(ids, range(4), [4], [0]), ref.step(ids, range(4), [4], [0]), atol=2e-4)


def test_export_import_report(tuned_db: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """--export then --import into an empty database gives the same records; --report lists them."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(home))
    out = tmp_path / "shared.json"
    assert main(["tune", "--db", str(tuned_db), "--export", str(out)]) == 0
    assert main(["tune", "--db", str(tmp_path / "copy"), "--import", str(out)]) == 0
    assert TuningDB.load(tmp_path / "copy").kernels == TuningDB.load(tuned_db).kernels
    capsys.readouterr()
    assert main(["tune", "--db", str(tmp_path / "copy"), "-t", "2", "--report", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["kernels"]) == 8 and all(k["speedup"] > 0 for k in report["kernels"])
    assert main(["tune", "--db", str(tmp_path / "copy"), "-t", "2", "--report"]) == 0
    assert "QKVAttention" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["tune", "--db", str(tmp_path / "copy"), "--import", str(tmp_path / "bad.json")]) == 2
