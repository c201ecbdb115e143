"""`graphllm run` and `graphllm chat` with --json-schema / --grammar: constrained output, one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

from graphllm.cli import main

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "w": {"enum": ["a", "b"]}},
          "required": ["n", "w"], "additionalProperties": False}
RUN = ["run", "-m", str(TINY), "--executor", "reference", "--temp", "1", "-n", "40", "hi"]


@pytest.fixture
def files(tmp_path) -> Path:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "yesno.lark").write_text('start: ("yes" | "no") "!"\n')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "broken.lark").write_text("start: (\n")
    return tmp_path


def test_run_json_schema_and_grammar(files, capsys):
    for seed in ("1", "2", "3"):
        assert main([*RUN, "--seed", seed, "--json-schema", str(files / "schema.json")]) == 0
        jsonschema.validate(json.loads(capsys.readouterr().out), SCHEMA)
        assert main([*RUN, "--seed", seed, "--grammar", str(files / "yesno.lark")]) == 0
        assert capsys.readouterr().out in ("yes!\n", "no!\n")


def test_chat_json_schema_constrains_every_reply(files, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n"))
    assert main(["chat", "-m", str(TINY), "--executor", "reference", "--seed", "1", "-n", "40",
                 "--json-schema", str(files / "schema.json")]) == 0
    replies = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(replies) == 2
    for reply in replies:
        jsonschema.validate(json.loads(reply), SCHEMA)


@pytest.mark.parametrize("flag, name, words", [
    ("--json-schema", "missing.json", "--json-schema: cannot read"),
    ("--json-schema", "broken.json", "is not valid JSON"),
    ("--json-schema", "list.json", "must hold a JSON schema (an object), got list"),
    ("--grammar", "missing.lark", "--grammar: cannot read"),
    ("--grammar", "broken.lark", "the lark grammar is invalid"),
])
def test_bad_files_are_one_line_errors(files, capsys, flag, name, words):
    assert main([*RUN, flag, str(files / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and words in err
