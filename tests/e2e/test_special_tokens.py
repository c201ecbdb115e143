"""Special tokens (<|endoftext|>, ...) are left out of generated text unless asked for (`--special`)."""

from __future__ import annotations

from pathlib import Path

from graphllm.cli import main

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
# hot sampling over the tiny model's 320 tokens: this seed samples <|endoftext|> among its 200
ARGS = ["run", "-m", str(TINY), "Hi", "-n", "200", "--ignore-eos", "--temperature", "50", "--seed", "0",
        "--executor", "reference"]


def test_run_skips_special_tokens_unless_special(capsys):
    assert main(ARGS) == 0
    plain = capsys.readouterr().out
    assert main([*ARGS, "--special"]) == 0
    special = capsys.readouterr().out
    assert "<|endoftext|>" not in plain and "<|endoftext|>" in special
    assert special.replace("<|endoftext|>", "").replace("<|im_start|>", "").replace("<|im_end|>", "") == plain
