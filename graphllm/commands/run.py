"""`graphllm run`: complete one prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys

from ..runtime.sampling import DEFAULT_MAX_TOKENS
from .common import (add_command, add_model_args, add_sampling_args, escaped, load_llm, read_stdin_text,
                     sampling_from_args, text_arg)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `run` to the subcommands."""
    p = add_command(sub, "run", "complete a prompt, streaming the text (greedy by default)")
    p.add_argument("prompt", nargs="?", default=None, type=text_arg,
                   help="the prompt, escapes such as \\n processed (default: read stdin, taken as it is)")
    p.add_argument("--chat-template", action="store_true", help="wrap the prompt as one user chat turn")
    p.add_argument("--system", default=None, type=text_arg,
                   help="a system message: the prompt becomes a chat of it and one user turn (default: none)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_model_args(p)
    add_sampling_args(p, max_tokens=DEFAULT_MAX_TOKENS)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Complete the prompt (argument or stdin)."""
    params = sampling_from_args(a)
    llm = load_llm(a)
    prompt = escaped(a, a.prompt) if a.prompt is not None else read_stdin_text()
    system = escaped(a, a.system)
    if a.chat_template or system is not None:
        turns = [{"role": "system", "content": system}] if system is not None else []
        prompt = llm.tokenizer.apply_chat_template([*turns, {"role": "user", "content": prompt}])
    if a.echo:
        sys.stdout.write(prompt)
    for chunk in llm.stream(prompt, params):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
