"""Writing generated folders (compile -o, export -o) never loses a user's file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphllm.errors import GraphLLMError
from graphllm.io.output import FolderKind, output_folder

KIND = FolderKind("artifact", frozenset({"plan.json", "kernels.so", "packed"}), "plan.json")


def write(out: Path, version: str, force: bool = False) -> None:
    with output_folder(out, KIND, force=force) as tmp:
        (tmp / "plan.json").write_text(version)
        (tmp / "kernels.so").write_text(version)


def no_temp_left(parent: Path) -> bool:
    return not [p for p in parent.rglob(".graphllm-tmp-*")]


def test_a_new_folder_and_an_empty_one(tmp_path: Path):
    write(tmp_path / "a" / "b", "1")
    assert (tmp_path / "a" / "b" / "plan.json").read_text() == "1"
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "1")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["kernels.so", "plan.json"]
    assert no_temp_left(tmp_path)


def test_an_earlier_write_is_replaced_whole(tmp_path: Path):
    out = tmp_path / "art"
    write(out, "1")
    (out / "packed").mkdir()
    (out / "packed" / "w.npy").write_text("old")
    write(out, "2")
    assert sorted(p.name for p in out.iterdir()) == ["kernels.so", "plan.json"]
    assert (out / "plan.json").read_text() == "2" and no_temp_left(tmp_path)


def test_a_user_folder_is_refused_and_then_written_beside_with_force(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(GraphLLMError, match=r"holds files graphllm did not write \(notes.txt, sub\).*--force"):
        write(out, "1")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"] and no_temp_left(tmp_path)
    write(out, "1", force=True)
    write(out, "2", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["kernels.so", "notes.txt", "plan.json", "sub"]
    assert (out / "notes.txt").read_text() == "precious" and (out / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert (out / "plan.json").read_text() == "2" and no_temp_left(tmp_path)


def test_a_lone_file_with_an_owned_name_is_the_users(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "kernels.so").write_text("the user's own library")  # no plan.json: not an artifact
    with pytest.raises(GraphLLMError, match="did not write"):
        write(out, "1")
    assert (out / "kernels.so").read_text() == "the user's own library"


def test_the_current_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "report.docx").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraphLLMError, match="did not write"):
        write(Path("."), "1")
    write(Path("."), "1", force=True)
    assert sorted(os.listdir(tmp_path)) == ["kernels.so", "plan.json", "report.docx"] and no_temp_left(tmp_path)


def test_a_file_is_refused_and_a_failed_write_leaves_nothing(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(GraphLLMError, match="is a file, not a folder"):
        write(tmp_path / "f", "1")
    assert (tmp_path / "f").read_text() == "x"
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "new", KIND, force=False) as tmp:
            (tmp / "plan.json").write_text("half")
            raise RuntimeError("the compiler failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_kind_that_does_not_replace_needs_force(tmp_path: Path):
    kind = FolderKind("export", frozenset({"config.json"}), "config.json", replaces=False)
    for force, text in ((False, "1"), (True, "2")):
        if force:
            with pytest.raises(GraphLLMError, match="holds an earlier export; pass --force to replace it"):
                with output_folder(tmp_path / "e", kind, force=False):
                    pass
        with output_folder(tmp_path / "e", kind, force=force) as tmp:
            (tmp / "config.json").write_text(text)
    assert (tmp_path / "e" / "config.json").read_text() == "2" and no_temp_left(tmp_path)
