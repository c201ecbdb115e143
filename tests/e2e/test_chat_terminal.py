"""`graphllm chat` at a terminal (a pseudo-terminal driven by pexpect): readline history kept across sessions,
Ctrl-C stopping a reply and then quitting, the context overflowing, and the /commands."""

import json
import os
import sys
import time
from pathlib import Path

import pexpect
import pytest

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
UP = "\x1b[A"  # the up-arrow key
# the chat with every streamed chunk delayed, so that a reply lasts long enough to be interrupted
SLOW_CHAT = """
import sys, time
from graphllm.runtime.llm import LLM
stream = LLM.stream
def slow(self, *args, **kwargs):
    for chunk in stream(self, *args, **kwargs):
        time.sleep(0.05)
        yield chunk
LLM.stream = slow
from graphllm.cli import main
sys.exit(main(["chat", *sys.argv[1:]]))
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def chat(*args: str, slow: bool = False) -> pexpect.spawn:
    """A greedy chat on the tiny model in a pseudo-terminal, waiting at its first prompt."""
    flags = ["-m", str(TINY), "--executor", "reference", "--temperature", "0", *args]
    argv = ["-c", SLOW_CHAT, *flags] if slow else ["-m", "graphllm.cli", "chat", *flags]
    child = pexpect.spawn(sys.executable, argv, encoding="utf-8", timeout=60, env=dict(os.environ),
                          dimensions=(24, 200))
    child.expect("type /help for the commands")
    child.expect_exact("> ")
    return child


def send(child: pexpect.spawn, line: str) -> str:
    """Type a line, wait for the next prompt; what was printed in between."""
    child.sendline(line)
    child.expect_exact("\r\n> ")
    return child.before


def finish(child: pexpect.spawn) -> int:
    """End the session with /exit; its exit status."""
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_history_is_kept_across_sessions(home):
    first = chat("-n", "3")
    reply = send(first, "remember this line")
    assert "tokens/s" in reply  # the dim statistics line after each reply
    assert finish(first) == 0
    assert "remember this line" in (home / "chat_history").read_text().splitlines()
    second = chat("-n", "3")
    second.send(UP)
    second.expect_exact("/exit")  # readline recalls the last session's lines, newest first
    second.send(UP)
    second.expect_exact("remember this line")
    assert "tokens/s" in send(second, "")
    assert finish(second) == 0


def test_ctrl_c_stops_the_reply_then_quits_at_the_prompt(home, tmp_path):
    child = chat("-n", "2000", "--ignore-eos", slow=True)
    child.sendline("tell me everything")
    child.expect_exact("tell me everything\r\n")
    time.sleep(1)  # some 20 tokens into a reply of 2000 (those of the 256-token context)
    child.sendintr()
    child.expect_exact("(reply interrupted)")
    child.expect_exact("> ")
    assert "tokens/s" in send(child, "and now?")  # the session goes on
    send(child, "/save talk.json")
    talk = json.loads((tmp_path / "talk.json").read_text())
    assert [m["role"] for m in talk] == ["user", "assistant", "user", "assistant"]
    assert talk[1]["interrupted"] is True and talk[1]["content"] and "interrupted" not in talk[3]
    child.sendintr()  # at the prompt: quit, as llama-cli does
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


def test_context_overflow_drops_the_oldest_turns(home):
    child = chat("--max-context", "128", "-n", "8", "--system", "be brief")
    said = "".join(send(child, "hi") for _ in range(4))
    assert "the conversation outgrew the 128-token context: dropped the" in said
    assert "error" not in said
    too_long = send(child, "x" * 400)
    assert "error: that message alone" in too_long and "does not fit the 128-token context" in too_long
    assert "tokens/s" in send(child, "hi")  # still chatting
    send(child, "/system")
    assert "system: be brief" in child.before  # the system message was never dropped
    assert finish(child) == 0


def test_commands(home, tmp_path):
    child = chat("-n", "3")
    assert "/save FILE" in send(child, "/help")
    hint = send(child, "/bogus")
    assert "unknown command /bogus; /help lists the commands" in hint and "tokens/s" not in hint
    assert "(system message set)" in send(child, "/system You are a pirate.")
    send(child, "ahoy")
    send(child, "/save one.json")
    saved = json.loads((tmp_path / "one.json").read_text())
    assert saved[0] == {"role": "system", "content": "You are a pirate."} and saved[1]["content"] == "ahoy"
    assert "(conversation cleared)" in send(child, "/reset")
    send(child, "/save empty.json")
    assert json.loads((tmp_path / "empty.json").read_text()) == saved[:1]
    assert "loaded 3 messages from one.json" in send(child, "/load one.json")
    send(child, "/save two.json")
    assert json.loads((tmp_path / "two.json").read_text()) == saved
    (tmp_path / "bad.json").write_text('{"role": "user"}')
    assert "is not a conversation" in send(child, "/load bad.json")
    assert "needs a file name" in send(child, "/save")
    assert "error: cannot write no/such/folder.json" in send(child, "/save no/such/folder.json")
    assert finish(child) == 0
