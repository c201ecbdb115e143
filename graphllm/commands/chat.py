"""`graphllm chat`: interactive chat with the model's chat template (also fastllm's `python -m graphllm.chat`).

In a terminal, lines are edited with readline and kept in GRAPHLLM_HOME/chat_history across sessions. Ctrl-C
during a reply stops it (the partial reply stays in the conversation, marked ``"interrupted": true`` in /save
files) and returns to the prompt; Ctrl-C at the prompt exits with status 130, as llama-cli does, and Ctrl-D
with 0. When the conversation outgrows the context, the oldest turns are dropped (the system message stays).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

from ..errors import GraphLLMError
from ..io.download import graphllm_home
from ..runtime.sampling import CHAT_MAX_TOKENS, CHAT_SAMPLING, SamplingParams, chat_sampling
from .common import (HelpFormatter, add_command, add_model_args, add_sampling_args, escaped, load_llm, run_main,
                     sampling_from_args, text_arg)

HISTORY_FILE = "chat_history"  # in GRAPHLLM_HOME
HISTORY_LENGTH = 1000  # lines kept in it
ROLES = ("system", "user", "assistant")
HELP = """commands:
  /help          this list
  /system TEXT   set the system message (the conversation is kept); /system alone shows it
  /save FILE     write the conversation as JSON (a list of {"role", "content"} messages)
  /load FILE     read a conversation written by /save
  /reset         clear the conversation (the system message stays)
  /exit          quit (also Ctrl-D; Ctrl-C stops a reply, and at the prompt quits)"""


def dim(text: str, stream: TextIO) -> str:
    """``text`` in the terminal's dim style when ``stream`` is a terminal."""
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


class Chat:
    """A conversation with the model: its messages and the commands that act on them."""

    def __init__(self, llm: Any, params: SamplingParams, system: str | None, stdout: TextIO) -> None:
        self.llm = llm
        self.params = params
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self.stdout = stdout

    def note(self, text: str) -> None:
        """One dim line on stderr."""
        print(dim(text, sys.stderr), file=sys.stderr, flush=True)

    def command(self, text: str) -> bool:
        """Run a /command; False when it ends the session."""
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            print(HELP, file=self.stdout)
        elif name == "/reset":
            self.messages = [m for m in self.messages if m["role"] == "system"]
            print("(conversation cleared)", file=self.stdout)
        elif name == "/system":
            self.system(arg)
        elif name in ("/save", "/load") and not arg:
            self.note(f"{name} needs a file name: {name} FILE")
        elif name == "/save":
            try:
                Path(arg).write_text(json.dumps(self.messages, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            except OSError as e:
                raise GraphLLMError(f"cannot write {arg}: {e.strerror or e}") from None
            self.note(f"saved {len(self.messages)} messages to {arg}")
        elif name == "/load":
            self.messages = read_conversation(Path(arg))
            self.note(f"loaded {len(self.messages)} messages from {arg}")
        else:
            self.note(f"unknown command {name}; /help lists the commands (start the line with a space to send it)")
        return True

    def system(self, text: str) -> None:
        """Set the system message (shown when ``text`` is empty)."""
        rest = [m for m in self.messages if m["role"] != "system"]
        if not text:
            current = next((m["content"] for m in self.messages if m["role"] == "system"), None)
            print(f"system: {current}" if current else "(no system message)", file=self.stdout)
            return
        self.messages = [{"role": "system", "content": text}, *rest]
        print("(system message set)", file=self.stdout)

    def fit(self) -> list[int]:
        """The prompt's ids, the oldest turns dropped (said on stderr) until it leaves room for a reply."""
        ctx = self.llm.max_context
        room = max(1, min(self.params.max_tokens or ctx, ctx // 4))
        dropped = 0
        while True:
            prompt = self.llm.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
            ids = self.llm.encode_prompt(prompt)
            first = next((i for i, m in enumerate(self.messages[:-1]) if m["role"] != "system"), None)
            if len(ids) + room <= ctx or first is None:
                break
            del self.messages[first]
            dropped += 1
        if dropped:
            self.note(f"(the conversation outgrew the {ctx}-token context: dropped the {dropped} oldest messages)")
        return ids

    def reply(self, text: str) -> None:
        """Send a user turn and stream the reply; Ctrl-C stops it, the partial reply is kept (marked)."""
        self.messages.append({"role": "user", "content": text})
        ids = self.fit()
        if len(ids) >= self.llm.max_context:
            self.messages.pop()
            raise GraphLLMError(f"that message alone ({len(ids)} tokens) does not fit the {self.llm.max_context}-token "
                                f"context; shorten it or raise --max-context")
        reply: list[str] = []
        tokens = 0
        start = time.perf_counter()
        first = start
        with sigint_flag() as interrupted, contextlib.closing(self.llm.stream(ids, self.params)) as chunks:
            for chunk in chunks:
                if interrupted.is_set():
                    break
                if tokens == 0:
                    first = time.perf_counter()
                tokens += chunk.token is not None
                reply.append(chunk.text)
                self.stdout.write(chunk.text)
                self.stdout.flush()
        self.stdout.write("\n")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply)}
        if interrupted.is_set():
            message["interrupted"] = True
            self.note("(reply interrupted)")
        self.messages.append(message)
        end = time.perf_counter()
        rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
        self.note(f"{tokens} tokens, {rate:.1f} tokens/s (first token after {first - start:.2f} s, "
                  f"prompt {len(ids)} tokens)")


@contextlib.contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """Within the block Ctrl-C sets the yielded flag instead of raising (the engine is never interrupted mid-step)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def read_conversation(path: Path) -> list[dict[str, Any]]:
    """A conversation written by /save: a JSON list of messages with a role and a text content."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraphLLMError(f"cannot read {path}: {e}") from None
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in data):
        raise GraphLLMError(f"{path} is not a conversation: expected a JSON list of "
                            f"{{\"role\": {'|'.join(ROLES)}, \"content\": TEXT}} messages")
    return data


@contextlib.contextmanager
def line_editing() -> Iterator[None]:
    """readline's line editing, with the history read from and written back to GRAPHLLM_HOME/chat_history."""
    import readline

    path = graphllm_home() / HISTORY_FILE
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def chat_loop(llm: Any, params: SamplingParams, *, system: str | None = None, stdin: TextIO | None = None,
              stdout: TextIO | None = None) -> int:
    """Read user turns and /commands, stream replies; the KV cache keeps the conversation's prefix between turns."""
    stdin = stdin or sys.stdin
    chat = Chat(llm, params, system, stdout or sys.stdout)
    terminal = stdin is sys.stdin and stdin.isatty()
    chat.note("type /help for the commands")
    with line_editing() if terminal else contextlib.nullcontext():
        while True:
            try:
                line = _prompt() if terminal else _read_line(stdin)
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 130
            if line is None:
                print("error: that line is not valid UTF-8; type it again", file=sys.stderr)
                continue
            if not line:
                return 0
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                if text.startswith("/") and not chat.command(text):
                    return 0
                if not text.startswith("/"):
                    chat.reply(text)
            except GraphLLMError as e:
                print(f"error: {e}", file=sys.stderr)


def _prompt() -> str:
    """One line typed at the terminal (with readline's editing), newline-terminated; '' at Ctrl-D."""
    try:
        return input("> ") + "\n"
    except EOFError:
        print(file=sys.stderr)
        return ""


def _read_line(stdin: TextIO) -> str | None:
    """One line of input ('' at the end), or None when its bytes are not UTF-8 (the session goes on)."""
    if not hasattr(stdin, "buffer"):
        return stdin.readline()
    try:
        return stdin.buffer.readline().decode("utf-8")
    except UnicodeDecodeError:
        return None


DESCRIPTION = ("interactive chat through the model's chat template; samples with the model's generation_config, "
               "else temperature {temperature}, top-p {top_p}, top-k {top_k}, repetition penalty "
               "{repetition_penalty}; /help lists the commands").format(**CHAT_SAMPLING)


def add_chat_args(p: argparse.ArgumentParser) -> None:
    """Model and sampling flags plus the system message."""
    p.add_argument("--system", default=None, type=text_arg, help="system message (default: none)")
    add_model_args(p)
    add_sampling_args(p, max_tokens=CHAT_MAX_TOKENS, chat=True)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `chat` to the subcommands."""
    p = add_command(sub, "chat", DESCRIPTION)
    add_chat_args(p)
    p.set_defaults(func=chat)


def chat(a: argparse.Namespace) -> int:
    """Load the model and chat on stdin/stdout."""
    sampling_from_args(a)  # bad values are refused before the slow part
    llm = load_llm(a)
    params = sampling_from_args(a, chat_sampling(llm.generation_config))
    return chat_loop(llm, params, system=escaped(a, a.system))


def main(argv: list[str] | None = None) -> int:
    """fastllm-style entry point: -p/--path MODEL, -t THREADS, --custom FILE."""
    parser = argparse.ArgumentParser(prog="python -m graphllm.chat", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    add_chat_args(parser)
    a = parser.parse_args(argv)
    return run_main(lambda: chat(a))
