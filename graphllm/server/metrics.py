"""Operators' view of a server: Prometheus metrics (`GET /metrics`) and one JSON log line per API request.

Each app has its own registry (two apps in one process, e.g. replicas, never clash) holding: requests by
endpoint and status, prompt and completion tokens, time to first token, time per output token and end-to-end
latency histograms (recorded once per request, when it ends), the engine's running/waiting requests and KV
slots (read from ``Engine.stats`` at scrape time), and an info metric naming the instance and model.
Only /v1/ requests are counted and logged (not /health, /metrics or the page). A replica given its peers'
latest metrics answers a scrape with every replica's series, each labelled ``replica="<instance>"``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
RECORD = "graphllm_record"  # the key of a request's RequestRecord in the ASGI scope's state
ENDPOINTS = frozenset(("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/graphllm/defaults"))
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
log = logging.getLogger("graphllm.server")


def log_requests() -> None:
    """Send the per-request JSON lines (INFO on the graphllm.server logger) to stderr, one per line (once)."""
    if any(h.name == "graphllm.requests" for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.name = "graphllm.requests"
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the lines are whole already: no root handler repeats them


def default_instance() -> str:
    """This process' name among replicas: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RequestRecord:
    """One API request as it goes: set by the middleware (start, status) and the handler (its generation)."""

    endpoint: str
    start: float
    status: int = 500  # until the response starts
    id: str | None = None
    prompt_tokens: int = 0
    generation: Any = None  # the engine's Request, once submitted: completion_tokens, finish_reason
    first_token: float | None = None  # perf_counter() when the server got the first generated token

    def attach(self, request_id: str, prompt_tokens: int, generation: Any) -> None:
        """The handler submitted ``generation`` for this request."""
        self.id, self.prompt_tokens, self.generation = request_id, prompt_tokens, generation

    def token_arrived(self) -> None:
        """A generated token reached the handler (only the first one is kept)."""
        if self.first_token is None:
            self.first_token = time.perf_counter()


class _EngineCollector:
    """The engine's gauges, read when scraped (not tracked per step)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats()
        yield GaugeMetricFamily("graphllm_requests_running", "Requests generating (each holds a KV slot)",
                                value=s["running"])
        yield GaugeMetricFamily("graphllm_requests_waiting", "Requests queued for a free KV slot", value=s["waiting"])
        yield GaugeMetricFamily("graphllm_kv_slots_used", "KV-cache slots in use", value=s["running"])
        yield GaugeMetricFamily("graphllm_kv_slots", "KV-cache slots (--max-batch)", value=s["slots"])
        yield CounterMetricFamily("graphllm_engine_steps", "Batched forward steps run", value=s["steps"])
        yield CounterMetricFamily("graphllm_requests_cancelled", "Requests whose client left before the end",
                                  value=s["cancelled"])


class _Replicas(Collector):
    """Several replicas' metric families as one set: every sample labelled with its replica, same-named
    families joined (the text format allows one family per name)."""

    def __init__(self, by_replica: Mapping[str, Iterable[Metric]]) -> None:
        self.by_replica = by_replica

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for replica, families in sorted(self.by_replica.items()):
            for f in families:
                into = merged.setdefault(f.name, Metric(f.name, f.documentation, f.type, f.unit))
                into.samples.extend(s._replace(labels={**s.labels, "replica": replica}) for s in f.samples)
        yield from merged.values()


class ServerMetrics:
    """The metrics of one app; ``middleware`` records every /v1/ request, ``exposition`` renders them.
    ``peers`` (replicas only) returns the other replicas' latest ``families()`` by instance, for ``exposition``."""

    def __init__(self, stats: Callable[[], dict[str, int]], model: str, instance: str | None = None,
                 peers: Callable[[], Mapping[str, list[Metric]]] | None = None) -> None:
        self.instance = instance or default_instance()
        self.peers = peers
        self.registry = r = CollectorRegistry()
        self.requests = Counter("graphllm_requests", "API requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("graphllm_prompt_tokens", "Prompt tokens of the requests generated for",
                                     registry=r)
        self.completion_tokens = Counter("graphllm_completion_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("graphllm_time_to_first_token_seconds", "Request arrival to its first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("graphllm_time_per_output_token_seconds",
                              "Mean time between a request's generated tokens after the first", buckets=TPOT_BUCKETS,
                              registry=r)
        self.latency = Histogram("graphllm_e2e_request_latency_seconds", "Request arrival to the end of its response",
                                 buckets=LATENCY_BUCKETS, registry=r)
        Info("graphllm_server", "This server instance (replica) and its model",
             registry=r).info({"instance": self.instance, "model": model})
        r.register(_EngineCollector(stats))

    def families(self) -> list[Metric]:
        """This app's metric families now (plain, picklable data: what a replica publishes to its peers)."""
        return list(self.registry.collect())

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format: this app's, or with peers every replica's, labelled by replica
        (this one's read now, the others' as last published)."""
        if self.peers is None:
            return generate_latest(self.registry)
        return generate_latest(_Replicas({**self.peers(), self.instance: self.families()}))

    def middleware(self, app: Any) -> Any:
        """ASGI wrapper: each /v1/ request gets a RequestRecord (in scope['state']), finished when it is answered."""

        async def wrapped(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
                await app(scope, receive, send)
                return
            record = RequestRecord(scope["path"] if scope["path"] in ENDPOINTS else "other", time.perf_counter())
            scope.setdefault("state", {})[RECORD] = record

            async def send_noting_status(message: dict) -> None:
                if message["type"] == "http.response.start":
                    record.status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_noting_status)
            finally:
                self.finish(record)

        return wrapped

    def finish(self, record: RequestRecord) -> None:
        """Count the request, observe its times and tokens, and log its line."""
        end = time.perf_counter()
        total = end - record.start
        gen = record.generation
        completion = gen.completion_tokens if gen is not None else 0
        ttft = None if record.first_token is None else record.first_token - record.start
        self.requests.labels(record.endpoint, str(record.status)).inc()
        self.latency.observe(total)
        if gen is not None:
            self.prompt_tokens.inc(record.prompt_tokens)
            self.completion_tokens.inc(completion)
        if ttft is not None:
            self.ttft.observe(ttft)
            if completion > 1:
                self.tpot.observe((end - record.first_token) / (completion - 1))
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps({
                "id": record.id or "req-" + uuid.uuid4().hex, "endpoint": record.endpoint, "status": record.status,
                "prompt_tokens": record.prompt_tokens, "completion_tokens": completion,
                "ttft_s": None if ttft is None else round(ttft, 6), "total_s": round(total, 6),
                "tokens_per_s": round(completion / total, 3) if total > 0 else None,
                "finish_reason": getattr(gen, "finish_reason", None), "instance": self.instance}))

