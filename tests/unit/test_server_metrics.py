"""graphllm.server.metrics without a server: per-app registries, scrape-time engine gauges, the middleware."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle

from prometheus_client.parser import text_string_to_metric_families

from graphllm.server.metrics import RECORD, ServerMetrics


def samples(metrics: ServerMetrics) -> dict[str, float]:
    """Unlabelled samples by name, labelled ones as name{k=v,...}."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class FakeGeneration:
    completion_tokens = 5
    finish_reason = "length"


def call(metrics: ServerMetrics, path: str, status: int, generate: bool) -> None:
    """One request through the middleware to an app that answers ``status`` (after 'generating' when asked)."""
    async def app(scope: dict, receive, send) -> None:
        if generate:
            record = scope["state"][RECORD]
            record.attach("cmpl-1", 7, FakeGeneration())
            record.token_arrived()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict) -> None:
        pass

    asyncio.run(metrics.middleware(app)({"type": "http", "path": path, "headers": []}, None, send))


def test_two_apps_in_one_process_count_apart_and_read_their_engines_when_scraped():
    stats = {"running": 2, "waiting": 1, "slots": 8, "steps": 40, "cancelled": 0}
    a = ServerMetrics(lambda: stats, "m", instance="replica-a")
    b = ServerMetrics(lambda: {**stats, "running": 0}, "m", instance="replica-b")
    call(a, "/v1/completions", 200, generate=True)
    call(a, "/v1/nope", 404, generate=False)
    call(a, "/health", 200, generate=False)  # not an API request: not counted
    sa, sb = samples(a), samples(b)
    assert sa["graphllm_requests_total{endpoint=/v1/completions,status=200}"] == 1
    assert sa["graphllm_requests_total{endpoint=other,status=404}"] == 1
    assert sum(v for k, v in sa.items() if k.startswith("graphllm_requests_total")) == 2
    assert (sa["graphllm_prompt_tokens_total"], sa["graphllm_completion_tokens_total"]) == (7, 5)
    assert sa["graphllm_time_to_first_token_seconds_count"] == sa["graphllm_time_per_output_token_seconds_count"] == 1
    assert not any(k.startswith("graphllm_requests_total") for k in sb) and sb["graphllm_completion_tokens_total"] == 0
    assert (sa["graphllm_requests_running"], sa["graphllm_kv_slots_used"], sa["graphllm_requests_waiting"]) == (2, 2, 1)
    assert sb["graphllm_kv_slots_used"] == 0
    stats["running"] = 5  # read at scrape time
    assert samples(a)["graphllm_requests_running"] == 5
    assert sa["graphllm_server_info{instance=replica-a,model=m}"] == 1 == sb["graphllm_server_info{instance=replica-b,model=m}"]


def test_one_json_log_line_per_api_request(caplog):
    metrics = ServerMetrics(lambda: {"running": 0, "waiting": 0, "slots": 1, "steps": 0, "cancelled": 0}, "m", "i")
    with caplog.at_level(logging.INFO, logger="graphllm.server"):
        call(metrics, "/v1/chat/completions", 200, generate=True)
        call(metrics, "/v1/completions", 401, generate=False)
    ok, refused = (json.loads(r.getMessage()) for r in caplog.records)
    assert {k: ok[k] for k in ("id", "endpoint", "status", "prompt_tokens", "completion_tokens", "finish_reason")} == \
        {"id": "cmpl-1", "endpoint": "/v1/chat/completions", "status": 200, "prompt_tokens": 7,
         "completion_tokens": 5, "finish_reason": "length"}
    assert 0 <= ok["ttft_s"] <= ok["total_s"] and ok["tokens_per_s"] > 0 and ok["instance"] == "i"
    assert (refused["status"], refused["completion_tokens"], refused["ttft_s"], refused["finish_reason"]) == \
        (401, 0, None, None)
    assert refused["id"].startswith("req-")


def test_a_replica_given_its_peers_exposes_every_replicas_series_labelled_by_replica():
    stats = {"running": 0, "waiting": 0, "slots": 8, "steps": 3, "cancelled": 0}
    a = ServerMetrics(lambda: stats, "m", instance="a")
    b = ServerMetrics(lambda: {**stats, "running": 1}, "m", instance="b")
    call(b, "/v1/completions", 200, generate=True)
    published = {"b": pickle.loads(pickle.dumps(b.families())), "a": []}  # as the board sends them (a's is stale)
    a.peers = lambda: published
    call(a, "/v1/completions", 200, generate=True)
    call(a, "/v1/completions", 400, generate=False)
    merged = samples(a)
    assert merged["graphllm_requests_total{endpoint=/v1/completions,replica=a,status=200}"] == 1  # a's read now
    assert merged["graphllm_requests_total{endpoint=/v1/completions,replica=a,status=400}"] == 1
    assert merged["graphllm_requests_total{endpoint=/v1/completions,replica=b,status=200}"] == 1
    assert (merged["graphllm_requests_running{replica=a}"], merged["graphllm_requests_running{replica=b}"]) == (0, 1)
    assert merged["graphllm_server_info{instance=b,model=m,replica=b}"] == 1
    assert all("replica=" in k for k in merged)
    a.peers = None  # the single-process form: no replica label
    assert not any("replica=" in k for k in samples(a))
