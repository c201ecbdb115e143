"""serve --stream-interval: a stream's events are at least that far apart and carry the same text."""

from __future__ import annotations

import json
import time

import httpx

from test_server import running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)

INTERVAL = 0.25


def test_events_are_an_interval_apart_and_the_text_is_unchanged(tmp_path):
    body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with running_server(tmp_path / "server.log", "--stream-interval", str(INTERVAL)) as base, \
            httpx.Client(base_url=base, trust_env=False, timeout=60) as http:
        whole = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
        start = time.perf_counter()
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        elapsed = time.perf_counter() - start
    texts = [e["choices"][0]["text"] for e in events if e["choices"][0]["text"]]
    assert "".join(texts) == whole
    assert len(texts) <= 1 + elapsed / INTERVAL < 40  # the server sent them >= INTERVAL apart: several tokens each
    assert events[-1]["choices"][0]["finish_reason"] == "length"
