"""GET /metrics and the per-request log lines of a real server, after a known set of requests."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_server import KEY, running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    r = httpx.get(base + "/metrics", trust_env=False)  # no API key: /metrics is open like /health
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def stream_usage(http: httpx.Client, path: str, body: dict) -> tuple[str, dict]:
    """A streamed request's id and final usage."""
    with http.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return events[0]["id"], events[-1]["usage"]


def test_counters_tokens_histograms_and_log_lines_match_the_requests_sent(tmp_path: Path):
    log = tmp_path / "server.log"
    with running_server(log, "--api-key", KEY) as base:
        before = scrape(base)
        assert before[("graphllm_requests_running", ())] == 0 and before[("graphllm_kv_slots", ())] == 8
        assert not any(name == "graphllm_requests_total" for name, _ in before)
        info = [labels for name, labels in before if name == "graphllm_server_info"]
        assert len(info) == 1 and dict(info[0])["model"] == "tiny_llama" and dict(info[0])["instance"]

        greedy = {"temperature": 0, "ignore_eos": True}
        sent: dict[str, tuple[int, str]] = {}  # id -> (completion tokens, endpoint)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False) as http:
            for path, body in [("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4, **greedy}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 6, **greedy})]:
                rid, u = stream_usage(http, path, body)
                sent[rid] = (u["completion_tokens"], path)
                for k in usage:
                    usage[k] += u[k]
            r = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, **greedy}).json()
            sent[r["id"]] = (r["usage"]["completion_tokens"], "/v1/completions")
            for k in usage:
                usage[k] += r["usage"][k]
            assert http.post("/v1/completions", json={"prompt": "Hello", "n": 2}).status_code == 400
            assert http.get("/v1/models").status_code == 200
        assert httpx.post(base + "/v1/completions", json={"prompt": "Hello"}, trust_env=False).status_code == 401
        after = scrape(base)

    def requests(endpoint: str, status: str) -> float:
        return after.get(("graphllm_requests_total", (("endpoint", endpoint), ("status", status))), 0)

    assert (requests("/v1/completions", "200"), requests("/v1/chat/completions", "200"),
            requests("/v1/completions", "400"), requests("/v1/completions", "401"), requests("/v1/models", "200")) \
        == (2, 1, 1, 1, 1)
    assert sum(v for (name, _), v in after.items() if name == "graphllm_requests_total") == 6
    assert usage["completion_tokens"] == 4 + 6 + 3
    assert after[("graphllm_prompt_tokens_total", ())] == usage["prompt_tokens"]
    assert after[("graphllm_completion_tokens_total", ())] == usage["completion_tokens"]
    assert after[("graphllm_time_to_first_token_seconds_count", ())] == 3  # the three generations
    assert after[("graphllm_time_per_output_token_seconds_count", ())] == 3
    assert after[("graphllm_e2e_request_latency_seconds_count", ())] == 6
    assert 0 < after[("graphllm_time_to_first_token_seconds_sum", ())] < after[
        ("graphllm_e2e_request_latency_seconds_sum", ())]
    assert after[("graphllm_engine_steps_total", ())] >= 13 and after[("graphllm_kv_slots_used", ())] == 0

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert sorted(line["status"] for line in lines) == [200, 200, 200, 200, 400, 401]
    generated = {line["id"]: line for line in lines if line["completion_tokens"]}
    assert {i: (line["completion_tokens"], line["endpoint"]) for i, line in generated.items()} == sent
    for line in generated.values():
        assert line["finish_reason"] == "length" and line["prompt_tokens"] > 0
        assert 0 < line["ttft_s"] <= line["total_s"]
        assert line["tokens_per_s"] == pytest.approx(line["completion_tokens"] / line["total_s"], rel=1e-3)
