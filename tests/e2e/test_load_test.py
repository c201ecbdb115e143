"""benchmarks/load_test.py against the tiny model's server: its counts, percentiles and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_server import KEY, running_server  # tests/e2e is on sys.path (pytest's rootdir-relative import)

LOAD_TEST = Path(__file__).parents[2] / "benchmarks" / "load_test.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("load") / "server.log", "--api-key", KEY) as base:
        yield base


def load_test(tmp_path: Path, base: str, *args: str) -> tuple[int, dict, str]:
    """Run the script; its exit status, JSON report and printed summary."""
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(LOAD_TEST), "--url", base, "--json", str(out), *args],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(out.read_text()), done.stdout


@pytest.mark.parametrize("extra", [(), ("--no-stream",), ("--chat",)])
def test_every_request_is_counted_with_its_tokens_and_latencies(server, tmp_path, extra):
    code, report, text = load_test(tmp_path, server, "--clients", "3", "--requests", "7", "--max-tokens", "5",
                                   "--api-key", KEY, *extra)
    assert code == 0, text
    assert (report["ok"], report["completion_tokens"], report["errors"]) == (7, 35, {})
    assert report["tokens_per_s"] == pytest.approx(35 / report["wall_s"])
    assert 0 < report["latency"]["p50"] <= report["latency"]["p95"] <= report["latency"]["p99"] <= report["wall_s"]
    if "--no-stream" in extra:
        assert report["ttft"] == {}
    else:
        assert 0 < report["ttft"]["p50"] <= report["ttft"]["p95"] <= report["latency"]["p99"]
    assert "7/7 ok" in text


def test_all_failed_exits_1_with_errors_by_status(server, tmp_path):
    code, report, text = load_test(tmp_path, server, "--clients", "2", "--requests", "3", "--api-key", "wrong")
    assert code == 1 and report["ok"] == 0 and report["errors"] == {"401": 3}
    assert "401: 3" in text
