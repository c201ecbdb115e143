"""Aggregate streaming throughput of the server at 1, 4 and 16 concurrent clients (tiny model, loopback).

Run with `pytest -m benchmark tests/benchmarks/test_serving_throughput.py -s`; GRAPHLLM_BENCH_EXECUTOR
picks the executor (default: reference). Reports tokens/s per concurrency and the 16-vs-1 ratio; no
timed assertion.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from test_server import KEY, running_server  # noqa: E402  (the server launcher lives with the e2e tests)

pytestmark = pytest.mark.benchmark
EXECUTOR = os.environ.get("GRAPHLLM_BENCH_EXECUTOR", "reference")
TOKENS = 128  # per client
RESULTS: dict[int, float] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("bench") / "server.log"
    with running_server(log, "--api-key", KEY, "--max-batch", "16", executor=EXECUTOR) as base:
        yield base
    if RESULTS:
        print("\nserving throughput (" + EXECUTOR + " executor, tiny_llama, " + str(TOKENS) + " tokens/client):")
        for clients, rate in sorted(RESULTS.items()):
            print(f"  {clients:2d} clients: {rate:8.1f} tokens/s aggregate")
        if 1 in RESULTS and 16 in RESULTS:
            print(f"  16 vs 1: {RESULTS[16] / RESULTS[1]:.1f}x")


async def _round(base: str, clients: int) -> int:
    """`clients` concurrent streaming completions; returns the tokens received."""
    async with httpx.AsyncClient(trust_env=False) as http:
        api = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300, http_client=http)

        async def one(i: int) -> int:
            stream = await api.completions.create(model="tiny_llama", prompt=f"Client {i} writes", max_tokens=TOKENS,
                                                  temperature=0, stream=True, stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True})
            return [c.usage.completion_tokens async for c in stream if c.usage][-1]

        return sum(await asyncio.gather(*(one(i) for i in range(clients))))


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_aggregate_tokens_per_second(benchmark, server, clients):
    asyncio.run(_round(server, clients))  # warm-up

    tokens = benchmark.pedantic(lambda: asyncio.run(_round(server, clients)), rounds=3, iterations=1)
    assert tokens == clients * TOKENS
    rate = tokens / benchmark.stats.stats.median
    RESULTS[clients] = rate
    benchmark.extra_info.update({"clients": clients, "executor": EXECUTOR, "tokens_per_s": rate})
