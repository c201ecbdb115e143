"""The OpenAI-compatible server as a real process on loopback, driven by the official `openai` client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
def running_server(log: Path, *args: str, model: Path = TINY, executor: str = "reference") -> Iterator[str]:
    """Start `python -m graphllm.server` on a free loopback port; yield its base URL; stop it."""
    cmd = [sys.executable, "-m", "graphllm.server", "-p", str(model), "--executor", executor, "--port", "0", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(base: str, key: str | None = KEY) -> openai.OpenAI:
    """A client that talks to loopback directly (no proxy from the environment, no retries)."""
    return openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0, timeout=60,
                         http_client=httpx.Client(trust_env=False))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("server") / "server.log", "--api-key", KEY,
                        "--max-batch", "16") as base:
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


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_generation(server, api, stream):
    before = health(server)["steps"]
    request = {"prompt": "Hi", "max_tokens": 240, "stream": stream, "temperature": 0, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    if stream:
        with httpx.stream("POST", server + "/v1/completions", json=request, headers=headers, trust_env=False) as r:
            assert sum(1 for _, line in zip(range(4), r.iter_lines())) == 4
    else:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server + "/v1/completions", json=request, headers=headers, trust_env=False, timeout=0.05)
    deadline = time.monotonic() + 10
    while (h := health(server))["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h["running"] == 0 and h["steps"] - before < 120  # far fewer than the 240 asked for
    assert api.completions.create(model="tiny_llama", prompt="Hi", max_tokens=3).usage.completion_tokens <= 3


def test_serve_and_webui_subcommands_default_to_loopback():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    for command in ("serve", "webui"):
        a = parser.parse_args([command, "-m", "x", "--max-batch", "4"])
        assert (a.host, a.port, a.max_batch, a.api_key) == ("127.0.0.1", 8080, 4, None) and callable(a.func)


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
