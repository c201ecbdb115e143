"""Aggregate streaming throughput of the server at 1, 4 and 16 concurrent clients (tiny model, loopback).

Run with `pytest -m benchmark tests/benchmarks/test_serving_throughput.py -s`; GRAPHLLM_BENCH_EXECUTOR
picks the executor (default: reference). Reports the median tokens/s per concurrency and the 16-vs-1
ratio; no timed assertion.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from test_server import KEY, running_server  # noqa: E402  (the server launcher lives with the e2e tests)

pytestmark = pytest.mark.benchmark
EXECUTOR = os.environ.get("GRAPHLLM_BENCH_EXECUTOR", "reference")
TOKENS = 128  # per client
CLIENTS = (1, 4, 16)
ROUNDS = 5


async def _round(base: str, clients: int) -> float:
    """`clients` concurrent streaming completions of TOKENS tokens each; aggregate tokens/s."""
    async with httpx.AsyncClient(trust_env=False) as http:
        api = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300, http_client=http)

        async def one(i: int) -> int:
            stream = await api.completions.create(model="tiny_llama", prompt=f"Client {i} writes", max_tokens=TOKENS,
                                                  temperature=0, stream=True, stream_options={"include_usage": True},
                                                  extra_body={"ignore_eos": True})
            return [c.usage.completion_tokens async for c in stream if c.usage][-1]

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(clients))))
        assert tokens == clients * TOKENS
        return tokens / (time.perf_counter() - start)


def test_aggregate_tokens_per_second_at_1_4_16_clients(benchmark, tmp_path):
    """Rounds interleave the concurrencies, so load from elsewhere on the machine skews them alike."""
    rates: dict[int, list[float]] = {c: [] for c in CLIENTS}

    def one_round() -> None:
        for clients in CLIENTS:
            rates[clients].append(asyncio.run(_round(base, clients)))

    with running_server(tmp_path / "server.log", "--api-key", KEY, "--max-batch", "16", executor=EXECUTOR) as base:
        asyncio.run(_round(base, 16))  # warm-up
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    median = {c: statistics.median(r) for c, r in rates.items()}
    benchmark.extra_info.update({"executor": EXECUTOR, "tokens_per_client": TOKENS,
                                 **{f"tokens_per_s_{c}_clients": median[c] for c in CLIENTS}})
    print(f"\nserving throughput ({EXECUTOR} executor, tiny_llama, {TOKENS} tokens/client, median of {ROUNDS}):")
    for c in CLIENTS:
        print(f"  {c:2d} clients: {median[c]:8.1f} tokens/s aggregate  (runs: {', '.join(f'{r:.0f}' for r in rates[c])})")
    print(f"  16 vs 1: {median[16] / median[1]:.1f}x")
