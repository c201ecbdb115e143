"""The OpenAI-compatible server as a real process on loopback, driven by the official `openai` client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams
from graphllm.commands.serve import register as add_serve_parser

TINY = Path(__file__).parents[1] / "fixtures" / "tiny_llama"
KEY = "test-key"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@contextlib.contextmanager
def server_process(log: Path, *args: str, model: Path = TINY,
                   executor: str = "reference") -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `python -m graphllm.server` on a free loopback port; yield its base URL and process; stop it."""
    cmd = [sys.executable, "-m", "graphllm.server", "-p", str(model), "--executor", executor, "--port", "0", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield m.group(1), proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_server(log: Path, *args: str, model: Path = TINY, executor: str = "reference") -> Iterator[str]:
    """Start `python -m graphllm.server` on a free loopback port; yield its base URL; stop it."""
    with server_process(log, *args, model=model, executor=executor) as (base, _):
        yield base


def client(base: str, key: str | None = KEY) -> openai.OpenAI:
    """A client that talks to loopback directly (no proxy from the environment, no retries)."""
    return openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0, timeout=60,
                         http_client=httpx.Client(trust_env=False))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("server") / "server.log", "--api-key", KEY,
                        "--max-batch", "16",
                        "--default-max-tokens", "20") as base:
        yield base


@pytest.fixture(scope="module")
def api(server) -> openai.OpenAI:
    return client(server)


@pytest.fixture(scope="module")
def solo() -> LLM:
    return LLM.load(TINY, executor="reference")


def health(base: str) -> dict:
    return httpx.get(base + "/health", trust_env=False).json()


def alone(llm: LLM, prompt: str, n: int, **kw) -> str:
    """What the library generates for one greedy request by itself."""
    return llm.complete(prompt, SamplingParams(max_tokens=n, ignore_eos=True, **kw)).text


def test_models_health_and_page(api, server):
    assert [m.id for m in api.models.list().data] == ["tiny_llama"]
    assert health(server)["status"] == "ok"
    page = httpx.get(server + "/", trust_env=False)
    assert page.status_code == 200 and "<textarea" in page.text


def test_completion_matches_the_library(api, solo):
    r = api.completions.create(model="tiny_llama", prompt="Once upon a time", max_tokens=12, **GREEDY)
    assert r.choices[0].text == alone(solo, "Once upon a time", 12)
    assert r.choices[0].finish_reason == "length"
    n_prompt = len(solo.tokenizer.encode("Once upon a time"))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    ids = solo.tokenizer.encode("Once upon a time")
    by_ids = api.completions.create(model="tiny_llama", prompt=ids, max_tokens=12, **GREEDY)
    assert by_ids.choices[0].text == r.choices[0].text


def test_chat_matches_the_library(api, solo):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    r = api.chat.completions.create(model="tiny_llama", messages=messages, max_tokens=10, **GREEDY)
    prompt = solo.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == alone(solo, prompt, 10)
    assert r.usage.prompt_tokens == len(solo.tokenizer.encode(prompt)) and r.usage.completion_tokens == 10


def test_streaming_equals_the_whole_response(api):
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = api.chat.completions.create(model="tiny_llama", messages=messages, max_tokens=15, **GREEDY)
    chunks = list(api.chat.completions.create(model="tiny_llama", messages=messages, max_tokens=15, stream=True,
                                              stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 15
    counts = [c.usage.completion_tokens for c in api.chat.completions.create(
        model="tiny_llama", messages=messages, max_tokens=15, stream=True,
        stream_options={"continuous_usage_stats": True}, **GREEDY) if c.usage]
    assert counts == sorted(counts) and counts[-1] == 15  # running token counts (the page's tokens/s)

    text = "".join(c.choices[0].text for c in api.completions.create(
        model="tiny_llama", prompt="Hello", max_tokens=9, stream=True, **GREEDY))
    assert text == api.completions.create(model="tiny_llama", prompt="Hello", max_tokens=9, **GREEDY).choices[0].text


def test_stop_strings(api, solo):
    full = alone(solo, "Hello", 16)
    stop = full[6:8]
    r = api.completions.create(model="tiny_llama", prompt="Hello", max_tokens=16, stop=[stop, "zz"], **GREEDY)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (full[:full.find(stop)], "stop")
    streamed = api.completions.create(model="tiny_llama", prompt="Hello", max_tokens=16, stop=stop, stream=True,
                                      **GREEDY)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.find(stop)]


def test_seeded_sampling_is_repeatable(api):
    def sample(seed: int) -> str:
        return api.completions.create(model="tiny_llama", prompt="Hello", max_tokens=12, temperature=1.2, top_p=0.95,
                                      seed=seed, extra_body={"ignore_eos": True}).choices[0].text
    assert sample(5) == sample(5) != sample(6)


@pytest.mark.parametrize("kwargs, needle", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n=1"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x " * 400}]}, "context holds 256"),
])
def test_bad_requests_are_400(api, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model="tiny_llama", **kwargs)
    assert exc.value.status_code == 400 and needle in exc.value.message


def test_malformed_json_is_400_in_openai_format(server):
    r = httpx.post(server + "/v1/completions", content=b"{not json", trust_env=False,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_missing_or_wrong_key_is_401(server):
    for key in (None, "wrong"):
        with pytest.raises(openai.AuthenticationError) as exc:
            client(server, key).models.list()
        assert exc.value.status_code == 401
    assert httpx.get(server + "/health", trust_env=False).status_code == 200


def test_unknown_model_is_404(api):
    with pytest.raises(openai.NotFoundError) as exc:
        api.completions.create(model="gpt-9", prompt="x", max_tokens=2)
    assert exc.value.status_code == 404 and "gpt-9" in exc.value.message


def test_16_concurrent_streams_each_get_their_solo_text(server, solo):
    prompts = [f"Client {i} says " + "hello " * (i % 5) for i in range(16)]
    steps = health(server)["steps"]

    async def one(api: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await api.completions.create(model="tiny_llama", prompt=prompt, max_tokens=24, stream=True,
                                              **GREEDY)
        return "".join([c.choices[0].text async for c in stream])

    async def main() -> list[str]:
        async with httpx.AsyncClient(trust_env=False) as http:
            api = openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120,
                                     http_client=http)
            return await asyncio.wait_for(asyncio.gather(*(one(api, p) for p in prompts)), 120)

    texts = asyncio.run(main())
    assert texts == [alone(solo, p, 24) for p in prompts]
    assert health(server)["steps"] - steps < 16 * 24 / 2  # decode steps were shared


def address(base: str) -> tuple[str, int]:
    """Host and port of a base URL."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_request(body: dict[str, Any], path: str = "/v1/completions") -> bytes:
    """An HTTP/1.1 POST with a JSON body, as bytes."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def wait_for(base: str, done: Callable[[dict], bool], seconds: float = 10) -> dict:
    """Poll /health until ``done`` holds for it (bounded); its last answer."""
    deadline = time.monotonic() + seconds
    while not done(h := health(base)):
        assert time.monotonic() < deadline, h
        time.sleep(0.002)
    return h


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_generation(server, api, stream):
    """The client leaves while its generation runs (250 tokens cannot finish in the moment between): the engine
    drops it unfinished (finish "cancelled", counted in /health) and frees its slot."""
    cancelled = health(server)["cancelled"]
    request = {"prompt": "Hi", "max_tokens": 250, "stream": stream, "temperature": 0, "ignore_eos": True}
    with socket.create_connection(address(server)) as sock:
        sock.sendall(raw_request(request))
        wait_for(server, lambda h: h["running"] > 0)
    h = wait_for(server, lambda h: h["running"] == 0)
    assert h["cancelled"] == cancelled + 1
    assert api.completions.create(model="tiny_llama", prompt="Hi", max_tokens=3).usage.completion_tokens <= 3


def test_hostile_input_is_400_naming_the_field_and_the_connection_stays_usable(server):
    conn = http.client.HTTPConnection(*address(server), timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(path: str, body: bytes) -> tuple[int, dict]:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    status, reply = post("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "Hi"}], "seed": -1}')
    assert status == 200 and reply["usage"]["completion_tokens"] <= 20  # the server's --default-max-tokens
    local = conn.sock.getsockname()
    user = '{"role": "user", "content": "x"}'
    for body, param, message in [
        ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content",
         "messages[0].content is not valid text: it holds a lone surrogate (\\ud800) at character 0"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role",
         "messages[0].role must be one of 'system', 'user', 'assistant', 'tool', got 'wizard'"),
        ('{"messages": [{"role": "user", "content": null}]}', "messages[0].content",
         "messages[0].content must be a string or a list of text parts, got null"),
        (f'{{"messages": [{user}, {{"role": "assistant", "content": null, "tool_calls": [{{"id": "c"}}]}}]}}',
         "messages[1].tool_calls", "messages[1].tool_calls: this model's chat template does not support tools"),
        (f'{{"messages": [{user}], "tools": [{{"type": "function", "function": {{"name": "f"}}}}]}}', "tools",
         "this model's chat template does not support tools"),
        (f'{{"messages": [{user}], "function_call": "auto"}}', "function_call",
         "function_call is not supported (OpenAI's deprecated API): use tools and tool_choice"),
        (f'{{"messages": [{user}], "max_tokens": -5}}', None, "max_tokens must be >= 0, got -5"),
        (f'{{"messages": [{user}], "seed": -5}}', None, "seed must be >= 0 (or -1 for a random seed), got -5"),
    ]:
        status, reply = post("/v1/chat/completions", body.encode())
        assert (status, reply["error"]["message"], reply["error"]["param"]) == (400, message, param)
        assert reply["error"]["type"] == "invalid_request_error"
    status, reply = post("/v1/completions", b'{"prompt": "Hi", "stop": ["\\udc80"], "max_tokens": 2}')
    assert (status, reply["error"]["param"]) == (400, "stop[0]")
    status, reply = post("/v1/completions", b'{"prompt": "Hi", "seed": -1, "temperature": 1, "max_tokens": 2}')
    assert status == 200 and conn.sock.getsockname() == local  # the same keep-alive connection throughout
    conn.close()


def test_large_bodies_get_413_while_health_answers_at_once(server):
    polls: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(trust_env=False) as http:
            while not stop.is_set() and len(polls) < 5000:
                start = time.monotonic()
                assert http.get(server + "/health", timeout=30).status_code == 200
                polls.append(time.monotonic() - start)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with socket.create_connection(address(server), timeout=10) as sock:  # 50 MB announced, none sent
            sock.sendall(raw_request({}).replace(b"Content-Length: 2", b"Content-Length: 52428800"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        r = httpx.post(server + "/v1/completions", content=(b"x" * (1 << 20) for _ in range(50)), headers=headers,
                       trust_env=False, timeout=60)  # 50 MB without a length
        assert r.status_code == 413 and r.json()["error"]["message"] == (
            "the request body exceeds the server's limit of 4194304 bytes (--max-body-bytes)")
        prompt = "hello world " * 340_000  # 4 MB: under the limit, far over the context
        r = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}]},
                       headers=headers, trust_env=False, timeout=60)
        assert r.status_code == 400 and "the context of 256 tokens" in r.json()["error"]["message"]
        r = httpx.post(server + "/v1/completions", json={"prompt": "hello world " * 300}, headers=headers,
                       trust_env=False, timeout=60)
        assert r.status_code == 400 and "context holds 256" in r.json()["error"]["message"]
    finally:
        stop.set()
        poller.join()
    assert polls and max(polls) < 1.0


def test_host_header_must_name_this_server_and_bearer_is_case_insensitive(server):
    port = address(server)[1]
    for host, status in [("evil.example", 403), (f"evil.example:{port}", 403), (f"localhost:{port}", 200),
                         (f"127.0.0.1:{port}", 200), (f"[::1]:{port}", 200)]:
        r = httpx.get(server + "/health", headers={"Host": host}, trust_env=False)
        assert r.status_code == status, host
    r = httpx.get(server + "/v1/models", headers={"Host": "rebound.example"}, trust_env=False)
    assert r.json()["error"] == {"message": "the Host header 'rebound.example' is not allowed; start the server "
                                            "with --allowed-hosts naming it (or '*' for any)",
                                 "type": "permission_error", "param": None, "code": "host_not_allowed"}
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.get(server + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"}, trust_env=False)
        assert r.status_code == 200, scheme


def test_default_hosts():
    from graphllm.server.app import default_hosts

    assert default_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert default_hosts("127.0.0.2") == {"localhost", "127.0.0.1", "::1", "127.0.0.2"}
    assert default_hosts("0.0.0.0") is None and default_hosts("192.168.1.5") is None


def test_special_tokens_are_skipped_unless_asked(api):
    def text(**extra: Any) -> str:
        return api.completions.create(model="tiny_llama", prompt="Hi", max_tokens=200, temperature=50, seed=0,
                                      extra_body={"ignore_eos": True, **extra}).choices[0].text
    assert "<|endoftext|>" not in text() and "<|endoftext|>" in text(skip_special_tokens=False)


def read_stream(base: str, lines: list[str], started: list[int]) -> None:
    """One long streamed completion; its SSE data lines go to ``lines``; once its response has begun (the server
    read the request and queued the generation), a 1 goes to ``started``."""
    request = {"prompt": "Hi", "max_tokens": 250, "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", base + "/v1/completions", json=request, headers={"Authorization": f"Bearer {KEY}"},
                      trust_env=False, timeout=60) as r:
        started.append(1)
        lines.extend(line for line in r.iter_lines() if line.startswith("data: "))


@pytest.mark.parametrize("sig, grace, exit_code", [(signal.SIGTERM, 0, -signal.SIGTERM), (signal.SIGINT, 2, 130)])
def test_shutdown_ends_every_stream_and_exits_within_the_grace(tmp_path, sig, grace, exit_code):
    """Streams that cannot finish in the grace period (queued ones at once) end with an error event and [DONE]."""
    log = tmp_path / "server.log"
    with server_process(log, "--api-key", KEY, "--max-batch", "1", "--shutdown-grace", str(grace)) as (base, proc):
        streams: list[list[str]] = [[] for _ in range(12)]
        started: list[int] = []
        readers = [threading.Thread(target=read_stream, args=(base, lines, started)) for lines in streams]
        for reader in readers:
            reader.start()
        # every request is in (SIGTERM before the server read one would refuse it, not test the shutdown)
        deadline = time.monotonic() + 60
        while len(started) < len(streams):
            assert time.monotonic() < deadline, f"{len(started)} of {len(streams)} streams began"
            time.sleep(0.01)
        wait_for(base, lambda h: h["running"] and h["waiting"])
        proc.send_signal(sig)
        start = time.monotonic()
        assert proc.wait(grace + 5) == exit_code
        assert time.monotonic() - start < grace + 5
        for reader in readers:
            reader.join(10)
    ended = [json.loads(lines[-2][6:]) for lines in streams]
    assert all(lines[-1] == "data: [DONE]" for lines in streams)
    errors = [e["error"] for e in ended if "error" in e]
    assert errors and all(e == {"message": "the server is shutting down; the request was not completed",
                                "type": "server_error", "param": None, "code": "server_shutting_down"}
                          for e in errors)
    assert all(e["choices"][0]["finish_reason"] == "length" for e in ended if "error" not in e)
    assert "Traceback" not in log.read_text()


def test_serve_and_webui_subcommands_default_to_loopback():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    for command in ("serve", "webui"):
        a = parser.parse_args([command, "-m", "x", "--max-batch", "4"])
        assert (a.host, a.port, a.max_batch, a.api_key) == ("127.0.0.1", 8080, 4, None) and callable(a.func)
        assert (a.allowed_hosts, a.max_body_bytes, a.default_max_tokens, a.shutdown_grace) == (None, 4 << 20, 512, 5)
    a = parser.parse_args(["serve", "--allowed-hosts", "*", "--default-max-tokens", "-1", "--shutdown-grace", "0.5"])
    assert (a.allowed_hosts, a.default_max_tokens, a.shutdown_grace) == (["*"], None, 0.5)


def test_unusable_port_is_one_error_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "graphllm.server", "-p", str(TINY), "--executor", "reference",
                            "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.slow
def test_real_model_chat(smollm2_gguf, tmp_path):
    """SmolLM2-135M through the server equals the library's greedy reply."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with running_server(tmp_path / "server.log", "--max-batch", "2", model=smollm2_gguf) as base:
        r = client(base).chat.completions.create(model=smollm2_gguf.stem, messages=messages, max_tokens=12,
                                                 temperature=0)
    llm = LLM.load(smollm2_gguf, executor="reference")
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert r.choices[0].message.content == llm.complete(prompt, SamplingParams(max_tokens=12)).text


def test_errors_map_to_openai_statuses():
    from graphllm.errors import GenerationError
    from graphllm.server.app import APIError

    assert APIError.of(GenerationError("bad prompt")).payload() == {
        "error": {"message": "bad prompt", "type": "invalid_request_error", "param": None, "code": None}}
    failed = APIError.of(RuntimeError("kernel crashed"))
    assert (failed.status, failed.kind) == (500, "server_error") and "kernel crashed" in failed.message
