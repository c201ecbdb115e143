"""`graphllm chat`: interactive chat with the model's chat template (also fastllm's `python -m graphllm.chat`)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ..runtime.sampling import CHAT_MAX_TOKENS, SamplingParams
from .common import add_model_args, add_sampling_args, load_llm, run_main, sampling_from_args, text_arg

HELP = "commands: /reset clears the conversation, /exit quits"


def chat_loop(llm, params: SamplingParams, *, system: str | None = None, stdin: TextIO | None = None,
              stdout: TextIO | None = None) -> int:
    """Read user turns, stream replies; the KV cache keeps the conversation's prefix between turns."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty()
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print(HELP, file=sys.stderr)
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = _read_line(stdin)
        if line is None:
            print("error: that line is not valid UTF-8; type it again", file=sys.stderr)
            continue
        if not line:
            return 0
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            return 0
        if text.strip() == "/reset":
            messages = messages[:1] if system else []
            stdout.write("(conversation cleared)\n")
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        reply = []
        for chunk in llm.stream(prompt, params):
            reply.append(chunk.text)
            stdout.write(chunk.text)
            stdout.flush()
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def _read_line(stdin: TextIO) -> str | None:
    """One line of input ('' at the end), or None when its bytes are not UTF-8 (the session goes on)."""
    if not hasattr(stdin, "buffer"):
        return stdin.readline()
    try:
        return stdin.buffer.readline().decode("utf-8")
    except UnicodeDecodeError:
        return None


def add_chat_args(p: argparse.ArgumentParser) -> None:
    """Model and sampling flags plus the system message."""
    p.add_argument("--system", default=None, type=text_arg, help="system message")
    add_model_args(p)
    add_sampling_args(p, max_tokens=CHAT_MAX_TOKENS)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `chat` to the subcommands."""
    p = sub.add_parser("chat", help="interactive chat (/reset clears history, /exit quits)")
    add_chat_args(p)
    p.set_defaults(func=chat)


def chat(a: argparse.Namespace) -> int:
    """Load the model and chat on stdin/stdout."""
    params = sampling_from_args(a)
    return chat_loop(load_llm(a), params, system=a.system)


def main(argv: list[str] | None = None) -> int:
    """fastllm-style entry point: -p/--path MODEL, -t THREADS, --custom FILE."""
    parser = argparse.ArgumentParser(prog="python -m graphllm.chat", description="Chat with a model.")
    add_chat_args(parser)
    a = parser.parse_args(argv)
    return run_main(lambda: chat(a))
