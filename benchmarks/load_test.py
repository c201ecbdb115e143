"""Load test of an OpenAI-compatible server: N concurrent clients send M requests in all; throughput and latency.

    python benchmarks/load_test.py --url http://127.0.0.1:8080 --clients 8 --requests 64 [--max-tokens 64]
        [--api-key K] [--no-stream] [--chat] [--prompt TEXT] [--model NAME] [--json results.json]

Each client sends its next request when the previous one ends (closed loop), streaming by default so the time to
the first token is measured; greedy with ``ignore_eos`` so every request generates ``--max-tokens`` tokens
(graphllm, vLLM and llama.cpp's server accept it). Reports completion tokens/s and requests/s over the wall time,
latency p50/p95/p99, time to first token p50/p95 and errors by HTTP status; exits 1 when every request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

PROMPT = "Write a short story about a robot who learns to paint."


@dataclass
class Outcome:
    """One request: its status ('ok', an HTTP status or an exception name), tokens and times in seconds."""

    status: str
    completion_tokens: int = 0
    latency: float = 0.0
    ttft: float | None = None


@dataclass
class Report:
    """The run's figures (latencies in seconds)."""

    clients: int
    requests: int
    ok: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    requests_per_s: float
    latency: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def _body(a: argparse.Namespace, i: int) -> dict[str, Any]:
    """The request body of request ``i``."""
    body: dict[str, Any] = {"max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True, "stream": a.stream}
    if a.model:
        body["model"] = a.model
    if a.stream:
        body["stream_options"] = {"include_usage": True}
    if a.chat:
        body["messages"] = [{"role": "user", "content": a.prompt}]
    else:
        body["prompt"] = a.prompt
    return body


async def _one(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Outcome:
    """Send one request and time it; streaming: the first event carrying text is the first token."""
    start = time.perf_counter()
    try:
        if not body["stream"]:
            r = await http.post(path, json=body)
            if r.status_code != 200:
                return Outcome(str(r.status_code))
            return Outcome("ok", r.json()["usage"]["completion_tokens"], time.perf_counter() - start)
        ttft, tokens = None, 0
        async with http.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return Outcome(str(r.status_code))
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Outcome("stream_error")
                if ttft is None and any(c.get("text") or c.get("delta", {}).get("content")
                                        for c in event.get("choices", ())):
                    ttft = time.perf_counter() - start
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return Outcome("ok", tokens, time.perf_counter() - start, ttft)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Outcome(type(exc).__name__)


def _percentiles(values: list[float], qs: tuple[int, ...]) -> dict[str, float]:
    """{'p50': ..} of the values ({} when there are none)."""
    return {f"p{q}": float(np.percentile(values, q)) for q in qs} if values else {}


async def run(a: argparse.Namespace) -> Report:
    """Run the load: ``a.clients`` workers take request numbers from a shared counter until ``a.requests``."""
    path = "/v1/chat/completions" if a.chat else "/v1/completions"
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    numbers = iter(range(a.requests))
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=a.clients, max_keepalive_connections=a.clients)
    async with httpx.AsyncClient(base_url=a.url.rstrip("/"), headers=headers, timeout=a.timeout, limits=limits,
                                 trust_env=False) as http:
        async def client() -> None:
            for i in numbers:
                outcomes.append(await _one(http, path, _body(a, i)))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(a.clients)))
        wall = time.perf_counter() - start
    ok = [o for o in outcomes if o.status == "ok"]
    tokens = sum(o.completion_tokens for o in ok)
    return Report(clients=a.clients, requests=a.requests, ok=len(ok), wall_s=wall, completion_tokens=tokens,
                  tokens_per_s=tokens / wall, requests_per_s=len(ok) / wall,
                  latency=_percentiles([o.latency for o in ok], (50, 95, 99)),
                  ttft=_percentiles([o.ttft for o in ok if o.ttft is not None], (50, 95)),
                  errors=dict(Counter(o.status for o in outcomes if o.status != "ok")))


def summary(r: Report) -> str:
    """The report as a few human-readable lines."""
    def ms(d: dict[str, float]) -> str:
        return "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in d.items()) or "-"

    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "none"
    return (f"{r.clients} clients, {r.ok}/{r.requests} ok in {r.wall_s:.2f} s: {r.tokens_per_s:.1f} tokens/s, "
            f"{r.requests_per_s:.2f} requests/s\n"
            f"latency  {ms(r.latency)}\nTTFT     {ms(r.ttft)}\nerrors   {errors}")


def positive(value: str) -> int:
    """A positive integer argument."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the load, print (and optionally write) the report; 1 when nothing succeeded."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server's base URL (without /v1)")
    p.add_argument("--clients", type=positive, default=1, help="concurrent clients")
    p.add_argument("--requests", type=positive, default=16, help="requests in all")
    p.add_argument("--max-tokens", type=positive, default=64, help="completion tokens per request")
    p.add_argument("--api-key", default=None)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True, help="stream (measures TTFT)")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default: /v1/completions)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--model", default=None, help="the model field (default: omitted)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    a = p.parse_args(argv)
    report = asyncio.run(run(a))
    print(summary(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(asdict(report), f, indent=1)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
