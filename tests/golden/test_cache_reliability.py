"""The build cache and artifacts survive damage and concurrency: real damage to a real cache entry of the tiny
Llama in a temporary GRAPHLLM_HOME, two real processes on an empty cache, artifacts that find their model,
and `compile -o` that never loses a user's file (CLI cases run as subprocesses)."""

from __future__ import annotations

import dataclasses
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphllm.io.cache import read_checked_json
from graphllm.plan import read_build
from graphllm.runtime.executor import _load_packed
from graphllm.runtime.llm import LLM

FIXTURE = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
RUN = ["Hello", "-n", "6", "--ignore-eos"]
TMP = ".graphllm-tmp-"


def cli(home: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`graphllm ARGS` in a fresh process with GRAPHLLM_HOME=home."""
    env = dict(os.environ, GRAPHLLM_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "graphllm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def warnings_of(r: subprocess.CompletedProcess) -> list[str]:
    """The warning lines a command printed."""
    return [line for line in r.stderr.splitlines() if line.startswith("warning:")]


def entry(home: Path) -> Path:
    """The one build in a home's cache."""
    (folder,) = (p for p in (home / "builds").iterdir() if not p.name.startswith("."))
    return folder


def leftovers(folder: Path) -> list[Path]:
    """Temporary folders of graphllm's left in a folder."""
    return list(folder.glob(f"{TMP}*"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home whose cache holds the tiny Llama's build, and the text the reference executor writes."""
    home = tmp_path_factory.mktemp("built") / "home"
    first = cli(home, "run", "-m", FIXTURE, *RUN)
    assert first.returncode == 0 and "compiled " in first.stderr, first.stderr
    reference = cli(home, "run", "-m", FIXTURE, *RUN, "--executor", "reference")
    assert reference.returncode == 0 and reference.stdout == first.stdout
    return home, reference.stdout


@pytest.fixture
def home(built: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the built home, to damage."""
    return Path(shutil.copytree(built[0], tmp_path / "home", symlinks=True))


def _truncate_library(folder: Path) -> None:
    (folder / "kernels.so").write_bytes((folder / "kernels.so").read_bytes()[:1000])


def _plan_list(folder: Path) -> None:
    (folder / "plan.json").write_text("[1]")


def _plan_random_bytes(folder: Path) -> None:
    (folder / "plan.json").write_bytes(np.random.default_rng(0).bytes(5000))


def _library_without_driver(folder: Path) -> None:
    """An intact library, checksum recorded, as an older graphllm exported it: no step driver linked in."""
    from graphllm.codegen.build import build_module
    from graphllm.codegen.kernels.cpu.linear import linear_kernels
    from graphllm.io.cache import FileSum
    from graphllm.plan import Plan

    build_module(linear_kernels(32, 16, bias=False, name="old")).export_library(str(folder / "kernels.so"))
    dataclasses.replace(Plan.load(folder), library=FileSum.of(folder / "kernels.so")).save(folder)


@pytest.mark.parametrize("damage, reason", [
    (_truncate_library, r"\(kernels.so is 1000 bytes, \d+ were written\)"),
    (_library_without_driver, r"\(the kernel library has no step driver \(an older graphllm built it\)\)"),
    (_plan_list, r"\(not a graphllm plan \(no format version\)\)"),
    (_plan_random_bytes, r"\(not a graphllm plan \(UnicodeDecodeError: "),
], ids=["truncated_library", "library_without_driver", "plan_list", "plan_random_bytes"])
def test_a_damaged_entry_is_rebuilt_whole(home: Path, built: tuple[Path, str], tmp_path: Path, damage, reason) -> None:
    """One warning line, a rebuilt entry (unknown files in it gone, nothing outside it touched), the right text."""
    folder = entry(home)
    damage(folder)
    (folder / "stray.txt").write_text("left by someone")
    outside = tmp_path / "users_folder"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (folder / "link").symlink_to(outside)
    r = cli(home, "run", "-m", FIXTURE, *RUN)
    assert r.returncode == 0, r.stderr
    (warning,) = warnings_of(r)
    assert warning.startswith(f"warning: the cached build {folder} is unusable (")
    assert warning.endswith("); rebuilding it")
    assert re.search(reason, warning), warning
    assert "compiled " in r.stderr and r.stdout == built[1]
    assert read_build(folder).library is not None
    assert sorted(p.name for p in folder.iterdir()) == ["kernels.so", "packed", "plan.json"]
    assert (outside / "keep.txt").read_text() == "mine"
    assert not leftovers(home / "builds")


def test_a_bogus_target_file_is_detected_again(home: Path, built: tuple[Path, str]) -> None:
    """A target file whose mtriple was changed (its checksum no longer matches) is never handed to LLVM."""
    (target,) = (home / "targets").glob("*.json")
    data = json.loads(target.read_text())
    data["target"]["mtriple"] = "bogus-unknown-nowhere"
    target.write_text(json.dumps(data))
    r = cli(home, "run", "-m", FIXTURE, *RUN, "-v")
    assert r.returncode == 0, r.stderr
    assert warnings_of(r) == [f"warning: the remembered target {target} is damaged (it does not match its checksum); "
                              f"detecting this CPU again"]
    assert "note: loaded the build" in r.stderr and r.stdout == built[1]  # the same target: the same build
    assert read_checked_json(target.read_text())["target"]["mtriple"] != "bogus-unknown-nowhere"
    target.write_bytes(b"\x00\xff" * 50)
    r = cli(home, "run", "-m", FIXTURE, *RUN)
    assert r.returncode == 0 and r.stdout == built[1], r.stderr
    (warning,) = warnings_of(r)
    assert warning.startswith(f"warning: the remembered target {target} is damaged")


def test_a_damaged_packed_weight_is_packed_again(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 KB overwritten inside a packed weight: one warning, packed again, logits equal to the reference's."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(home))
    victim = max(entry(home).glob("packed/*/*.npy"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[4096:8192] = bytes(4096)
    victim.write_bytes(data)
    with pytest.warns(UserWarning, match=r"^1 packed weight\(s\) in .* were damaged \(\w+\.npy does not match the "
                                         r"checksum recorded when it was written\); packed them again$"):
        llm = LLM.load(FIXTURE, max_context=32)
    ids = [5, 9, 33, 2, 71]
    reference = LLM.load(FIXTURE, executor="reference", max_context=32)
    np.testing.assert_allclose(llm.step(ids, range(5), [5], [0]), reference.step(ids, range(5), [5], [0]),
                               atol=1e-4, rtol=0)
    assert _load_packed(victim).nbytes > 8192  # written again, with a matching checksum


def test_two_processes_on_an_empty_cache_compile_once(tmp_path: Path) -> None:
    """Both succeed with the same text; the second waits for the first's build and loads it; no temp folder left."""
    home = tmp_path / "home"
    env = dict(os.environ, GRAPHLLM_HOME=str(home))
    procs = [subprocess.Popen([sys.executable, "-m", "graphllm.cli", "run", "-m", str(FIXTURE), *RUN, "-v"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    (a_out, a_err), (b_out, b_err) = results
    assert a_out == b_out
    assert sorted(["compiled " in a_err, "compiled " in b_err]) == [False, True], (a_err, b_err)
    assert "note: loaded the build" in (b_err if "compiled " in a_err else a_err)
    assert not warnings_of(subprocess.CompletedProcess([], 0, a_out, a_err + b_err))
    assert len(list((home / "builds").iterdir())) == 1 and not leftovers(home / "builds")


def test_an_artifact_runs_the_model_it_was_compiled_for(tmp_path: Path, built: tuple[Path, str]) -> None:
    """compile -m then run --artifact without -m uses that model; changed or moved, the message names it."""
    home, model, art = tmp_path / "home", tmp_path / "model", tmp_path / "art"
    shutil.copytree(FIXTURE, model)
    r = cli(home, "compile", "-m", model, "-o", art)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'run it with: graphllm run --artifact {art} "PROMPT"'
    ran = cli(home, "run", "--artifact", art, *RUN)
    assert ran.returncode == 0 and "compiled" not in ran.stderr and ran.stdout == built[1], ran.stderr
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # same shapes, other numbers
    weights.write_bytes(data)
    changed = cli(home, "run", "--artifact", art, *RUN)
    assert changed.returncode == 2 and changed.stderr == (
        f"error: the build in {art} was compiled for {model}, which has changed since: pass the model with -m, "
        f"or recompile it with `graphllm compile`\n")
    model.rename(tmp_path / "moved")
    moved = cli(home, "run", "--artifact", art, *RUN)
    assert moved.returncode == 2 and moved.stderr == (
        f"error: the build in {art} was compiled for {model}, which is not there any more: pass the model with -m, "
        f"or recompile it with `graphllm compile`\n")
    given = cli(home, "run", "--artifact", art, "-m", tmp_path / "moved", *RUN)
    assert given.returncode == 0 and given.stdout, given.stderr


def test_an_ir_artifact_without_a_model_asks_for_one(tmp_path: Path) -> None:
    """compile --ir without -m records no model: run --artifact then needs -m, and says so."""
    home, ir, art = tmp_path / "home", tmp_path / "g.ir", tmp_path / "art"
    assert cli(home, "dump", "-m", FIXTURE, "-o", ir).returncode == 0
    r = cli(home, "compile", "--ir", ir, "-o", art)
    assert r.returncode == 0 and r.stdout.strip() == f'run it with: graphllm run --artifact {art} -m MODEL "PROMPT"'
    assert read_build(art).model is None
    ran = cli(home, "run", "--artifact", art, *RUN)
    assert ran.returncode == 2 and ran.stderr == (
        f"error: the build in {art} was compiled from a text IR without a model: pass the model with -m\n")
    assert cli(home, "run", "--artifact", art, "-m", FIXTURE, *RUN).returncode == 0


def _user_files(folder: Path) -> dict[str, str]:
    """Some files of the user's, written into folder; returns {relative path: content}."""
    files = {"notes.txt": "my notes", "data/table.csv": "a,b\n1,2\n", "model.gguf": "not really a model"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def _intact(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).read_text() == text for name, text in files.items())


@pytest.mark.parametrize("into_cwd", [False, True], ids=["folder", "dot"])
def test_compile_output_never_loses_a_user_file(tmp_path: Path, into_cwd: bool) -> None:
    """-o DIR (or -o . inside it) holding user files: refused, and with --force the artifact goes beside them."""
    out = tmp_path / "work"
    out.mkdir()
    files = _user_files(out)
    target, cwd = (".", out) if into_cwd else (out, None)
    refused = cli(tmp_path / "home", "compile", "-m", FIXTURE, "-o", target, cwd=cwd)
    assert refused.returncode == 2 and "holds files graphllm did not write (data, model.gguf, notes.txt)" in refused.stderr
    assert _intact(out, files) and sorted(p.name for p in out.iterdir()) == ["data", "model.gguf", "notes.txt"]
    forced = cli(tmp_path / "home", "compile", "-m", FIXTURE, "-o", target, "--force", cwd=cwd)
    assert forced.returncode == 0, forced.stderr
    assert _intact(out, files) and read_build(out).model is not None
    assert not leftovers(out) and not leftovers(tmp_path)


def test_compile_onto_a_file_leaves_no_temp_folder(tmp_path: Path) -> None:
    """-o naming an existing file: a one-line error, the file intact, no temporary folder beside it."""
    path = tmp_path / "art"
    path.write_text("a file of mine")
    r = cli(tmp_path / "home", "compile", "-m", FIXTURE, "-o", path)
    assert r.returncode == 2 and r.stderr == f"error: {path} is a file, not a folder: give -o a new or empty folder\n"
    assert path.read_text() == "a file of mine" and not leftovers(tmp_path)
