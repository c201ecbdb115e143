"""Decode tokens/s of one sequence: the bare step loop vs the engine, read synchronously and asynchronously.

    python benchmarks/engine_single_stream.py [-m MODEL] [--tokens 128] [--rounds 7] [--threads N]

`step loop` is `graphllm bench`'s decode loop (raw executor step + argmax, no text): the ceiling.
`engine sync` is `LLM.stream` (what `graphllm run` and `chat` use: the engine steps in the reader's
thread); `engine async` is the server's way (the engine's background thread, an asyncio reader woken
per step). Greedy, ignore_eos; the clock starts at the first generated token, so prefill is left out.
The three alternate within each round; medians at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Callable

import numpy as np

from graphllm.runtime.llm import LLM
from graphllm.runtime.sampling import SamplingParams

PROMPT = "The history of the Roman Empire"


def step_loop(llm: LLM, ids: list[int], tokens: int) -> float:
    """tokens/s of raw decode steps with argmax."""
    token = int(np.argmax(llm.prefill(ids)))
    start = time.perf_counter()
    for i in range(tokens - 1):
        token = int(np.argmax(llm.decode(token, len(ids) + i)))
    return (tokens - 1) / (time.perf_counter() - start)


def engine_sync(llm: LLM, ids: list[int], tokens: int) -> float:
    """tokens/s of LLM.stream after its first chunk."""
    chunks = llm.stream(ids, SamplingParams(max_tokens=tokens, ignore_eos=True))
    next(chunks)
    start = time.perf_counter()
    n = sum(chunk.token is not None for chunk in chunks)
    return n / (time.perf_counter() - start)


def engine_async(llm: LLM, ids: list[int], tokens: int) -> float:
    """tokens/s of the engine read with ``async for`` (background thread) after the first chunk."""
    async def main() -> float:
        request = llm.engine.submit(ids, SamplingParams(max_tokens=tokens, ignore_eos=True))
        await request.__anext__()
        start = time.perf_counter()
        n = 0
        async for chunk in request:
            n += chunk.token is not None
        return n / (time.perf_counter() - start)
    return asyncio.run(main())


def main() -> None:
    """Load the model, warm up, run the rounds, print each round and the medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=None, help="model path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    llm = LLM.load(a.model, max_context=512, threads=a.threads)
    ids = llm.tokenizer.encode(PROMPT)
    ways: dict[str, Callable[[LLM, list[int], int], float]] = {
        "step loop": step_loop, "engine sync": engine_sync, "engine async": engine_async}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for way in ways.values():
        way(llm, ids, 16)  # warm-up: bindings, thread pools
    for r in range(a.rounds):
        for name, way in ways.items():
            rates[name].append(way(llm, ids, a.tokens))
        print(f"round {r}: " + "  ".join(f"{n} {v[-1]:6.1f}" for n, v in rates.items()), flush=True)
    base = statistics.median(rates["step loop"])
    print("median tok/s: " + "  ".join(f"{n} {statistics.median(v):6.1f} ({statistics.median(v) / base:.2f}x)"
                                       for n, v in rates.items()))
    llm.engine.close()


if __name__ == "__main__":
    main()
