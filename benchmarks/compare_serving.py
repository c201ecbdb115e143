"""One client of `graphllm serve` vs `graphllm bench`'s decode loop on the same model and threads, alternately.

    python benchmarks/compare_serving.py [-m MODEL] [--threads 2] [--tokens 128] [--rounds 7] [-- SERVE FLAGS]

Each round runs the bare step loop in this process (the ceiling, as in engine_single_stream.py) and then one
greedy streaming completion of the same length from a `graphllm serve` subprocess (started once, same model,
same threads). The server's decode rate is the client's: tokens after the first over the time from the first
token to the end; its end-to-end rate includes the prompt and HTTP. Medians, bests (the least disturbed round on
a shared machine) and the server/bench ratios at the end.
Flags after `--` go to `graphllm serve` (e.g. `-- --stream-interval 0`). On a machine shared with other work,
`TVM_THREAD_POOL_SPIN_COUNT=0` (both processes inherit it) keeps TVM's idle workers from spinning on the cores
the other process needs: the figures vary far less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from engine_single_stream import PROMPT, step_loop  # this folder is on sys.path when run as a script
from load_test import _one

from graphllm.runtime.llm import LLM


def start_server(model: str | None, threads: int | None, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`graphllm serve` on a free loopback port; the process and its base URL once it listens."""
    cmd = [sys.executable, "-m", "graphllm.cli", "serve", "--port", "0", "--no-request-log", "-c", "512", *extra]
    cmd += ["-m", model] if model else []
    cmd += ["-t", str(threads)] if threads else []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, m.group(1)


async def served(http: httpx.AsyncClient, tokens: int) -> tuple[float, float]:
    """One streaming completion: (decode tokens/s after the first token, end-to-end tokens/s)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    o = await _one(http, "/v1/completions", body)
    if o.status != "ok" or o.ttft is None or o.completion_tokens != tokens:
        sys.exit(f"the server's request failed: {o}")
    return (tokens - 1) / (o.latency - o.ttft), tokens / o.latency


async def rounds(llm: LLM, base: str, a: argparse.Namespace) -> dict[str, list[float]]:
    """Alternate the step loop and one served request, ``a.rounds`` times after a warm-up of each."""
    ids = llm.tokenizer.encode(PROMPT)
    rates: dict[str, list[float]] = {"bench decode": [], "serve decode": [], "serve e2e": []}
    async with httpx.AsyncClient(base_url=base, timeout=600, trust_env=False) as http:
        step_loop(llm, ids, 16)
        await served(http, 16)
        for r in range(a.rounds):
            rates["bench decode"].append(step_loop(llm, ids, a.tokens))
            decode, e2e = await served(http, a.tokens)
            rates["serve decode"].append(decode)
            rates["serve e2e"].append(e2e)
            print(f"round {r}: " + "  ".join(f"{n} {v[-1]:6.1f}" for n, v in rates.items()), flush=True)
    return rates


def main() -> None:
    """Start the server, load the model here, alternate, print medians and the ratio."""
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=None, help="model path (default: SmolLM2-135M-Instruct)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "compare_serving.log"),
                   help="the server's output (default: compare_serving.log in the temporary folder)")
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    proc, base = start_server(a.model, a.threads, extra, Path(a.log))
    try:
        llm = LLM.load(a.model, max_context=512, threads=a.threads)
        rates = asyncio.run(rounds(llm, base, a))
    finally:
        proc.terminate()
        proc.wait(30)
    for label, pick in (("median", statistics.median), ("best", max)):  # best: the round least disturbed
        base_rate = pick(rates["bench decode"])
        print(f"{label} tok/s ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): " + "  ".join(
            f"{n} {pick(v):6.1f} ({pick(v) / base_rate:.2f}x)" for n, v in rates.items()))


if __name__ == "__main__":
    main()
