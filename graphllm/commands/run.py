"""`graphllm run`: complete one prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys

from ..runtime.sampling import DEFAULT_MAX_TOKENS
from .common import add_model_args, add_sampling_args, load_llm, read_stdin_text, sampling_from_args, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    """Add `run` to the subcommands."""
    p = sub.add_parser("run", help="complete a prompt (greedy by default)")
    p.add_argument("prompt", nargs="?", default=None, type=text_arg, help="the prompt (default: read stdin)")
    p.add_argument("--chat-template", action="store_true", help="wrap the prompt as one user chat turn")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_model_args(p)
    add_sampling_args(p, max_tokens=DEFAULT_MAX_TOKENS)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Complete the prompt (argument or stdin)."""
    params = sampling_from_args(a)
    llm = load_llm(a)
    prompt = a.prompt if a.prompt is not None else read_stdin_text()
    if a.chat_template:
        prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    if a.echo:
        sys.stdout.write(prompt)
    for chunk in llm.stream(prompt, params):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
