"""Interactive chat; also `python -m graphllm.chat -t 2 -p PATH [--custom FILE]` as in fastllm's docs."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .runtime.sampling import SamplingParams

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
        line = stdin.readline()
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


def main(argv: list[str] | None = None) -> int:
    """fastllm-style entry point: -p/--path MODEL, -t THREADS, --custom FILE."""
    from .cli import add_model_args, add_sampling_args, load_llm, run_main, sampling_from_args

    parser = argparse.ArgumentParser(prog="python -m graphllm.chat", description="Chat with a model.")
    parser.add_argument("--system", default=None, help="system message")
    add_model_args(parser)
    add_sampling_args(parser, max_tokens=512)
    a = parser.parse_args(argv)
    return run_main(lambda: chat_loop(load_llm(a), sampling_from_args(a), system=a.system))


if __name__ == "__main__":
    sys.exit(main())
