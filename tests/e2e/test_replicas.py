"""`graphllm serve --replicas 2` on a local Ray cluster: the single-process server's client tests, run again
against the replicas, plus what only replicas do (both answer, one compiled build loaded without compiling,
a killed replica replaced, clean teardown)."""

from __future__ import annotations

import collections
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'graphllm[ray]'")

from graphllm.runtime.llm import LLM  # noqa: E402
from test_server import (KEY, TINY, client, server_process, test_bad_requests_are_400,  # noqa: E402,F401 - rerun here
                         test_chat_matches_the_library, test_completion_matches_the_library,
                         test_hostile_input_is_400_naming_the_field_and_the_connection_stays_usable,
                         test_host_header_must_name_this_server_and_bearer_is_case_insensitive,
                         test_large_bodies_get_413_while_health_answers_at_once,
                         test_malformed_json_is_400_in_openai_format, test_missing_or_wrong_key_is_401,
                         test_models_health_and_page, test_seeded_sampling_is_repeatable,
                         test_special_tokens_are_skipped_unless_asked, test_stop_strings,
                         test_streaming_equals_the_whole_response, test_unknown_model_is_404)

REPLICA = "x-graphllm-replica"
PROMPTS = ["Once upon a time", "Hello", "The capital of France is", "1, 2, 3,"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """tiny_llama compiled once, as `graphllm compile` writes it."""
    out = tmp_path_factory.mktemp("artifact") / "tiny_llama"
    subprocess.run([sys.executable, "-m", "graphllm.cli", "compile", "-m", str(TINY), "-o", str(out)], check=True,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory, artifact) -> Iterator[Path]:
    """An empty GRAPHLLM_HOME for the servers: a build cache that must stay empty (nothing is compiled)."""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRAPHLLM_HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, artifact, home) -> Iterator[tuple[str, psutil.Process]]:
    """Two replicas on a local Ray cluster started by the server; on exit, SIGTERM stops it all."""
    log = tmp_path_factory.mktemp("replicas") / "server.log"
    with server_process(log, "--artifact", str(artifact), "--replicas", "2", "--threads-per-replica", "1",
                        "--api-key", KEY, "--max-batch", "16", "--default-max-tokens", "20",
                        executor="tvm") as (base, proc):
        driver = psutil.Process(proc.pid)
        yield base, driver
        started = driver.children(recursive=True)  # raylet, gcs_server, the replicas, ...
        names = set()
        for p in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.add(p.name())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    assert {"raylet", "gcs_server"} <= names, names
    time.sleep(1)
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"Ray processes left running: {[p.cmdline()[:1] for p in left]}"
    assert "Traceback" not in log.read_text()
    assert not (home / "builds").exists()  # neither the server nor a replica compiled


@pytest.fixture(scope="module")
def server(replicas) -> str:
    return replicas[0]


@pytest.fixture(scope="module")
def api(server) -> openai.OpenAI:
    return client(server)


@pytest.fixture(scope="module")
def solo(artifact) -> LLM:
    """The library on the replicas' build."""
    return LLM.load(TINY, artifact=artifact, threads=1)


def completion(base: str, prompt: str) -> tuple[str, str]:
    """A greedy completion's text and the replica that answered."""
    r = httpx.post(base + "/v1/completions", json={"prompt": prompt, "max_tokens": 16, "temperature": 0,
                                                   "ignore_eos": True},
                   headers={"Authorization": f"Bearer {KEY}"}, trust_env=False, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], r.headers.get(REPLICA, "")


def completions(base: str, prompts: list[str]) -> list[tuple[str, str]]:
    """``completion`` of each prompt, four at a time (so Ray's router, seeing queues, spreads them over the
    replicas; one at a time, its cached queue lengths may send a burst to one replica)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda prompt: completion(base, prompt), prompts))


def test_both_replicas_answer_as_the_single_process_server(server, artifact, home, tmp_path):
    answers = completions(server, PROMPTS * 4)
    assert len({replica for _, replica in answers}) == 2
    with server_process(tmp_path / "single.log", "--artifact", str(artifact), "-t", "1", "--api-key", KEY,
                        executor="tvm") as (single, _):
        expected = {prompt: completion(single, prompt)[0] for prompt in PROMPTS}
    assert [text for text, _ in answers] == [expected[prompt] for prompt in PROMPTS * 4]


def scrape(base: str) -> dict[str, dict[tuple[str, tuple], float]]:
    """One scrape of /metrics (whichever replica answers it): every replica's samples, by their replica label."""
    r = httpx.get(base + "/metrics", trust_env=False)
    assert r.status_code == 200
    by_replica: dict[str, dict[tuple[str, tuple], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = dict(s.labels)
            by_replica[labels.pop("replica")][(s.name, tuple(sorted(labels.items())))] = s.value
    assert r.headers[REPLICA] in by_replica
    return by_replica


def scrape_until(base: str, done: Callable[[dict[str, dict[tuple[str, tuple], float]]], bool]) \
        -> dict[str, dict[tuple[str, tuple], float]]:
    """/metrics scraped until ``done`` holds (the replicas publish their numbers to each other every second)."""
    deadline = time.monotonic() + 30
    while not done(seen := scrape(base)):
        assert time.monotonic() < deadline, f"/metrics never showed it: {seen}"
        time.sleep(0.2)
    return seen


def test_one_scrape_shows_each_replica_counting_the_requests_it_answered(server):
    key = ("graphllm_requests_total", (("endpoint", "/v1/completions"), ("status", "200")))
    before = scrape_until(server, lambda seen: len(seen) == 2)
    for _ in range(10):  # the earlier tests' requests: settled once two scrapes 3 publishing periods apart agree
        time.sleep(3)
        if (now := scrape(server)) == before:
            break
        before = now
    else:
        raise AssertionError(f"/metrics did not settle: {before}")
    for replica, samples in before.items():
        [info] = [dict(labels) for name, labels in samples if name == "graphllm_server_info"]
        assert info["instance"] == replica
    sent = PROMPTS * 3
    answered = collections.Counter(replica for _, replica in completions(server, sent))
    assert set(answered) <= set(before)

    def counted(seen: dict[str, dict[tuple[str, tuple], float]]) -> dict[str, float]:
        return {r: seen[r].get(key, 0) - before[r].get(key, 0) for r in seen}

    after = scrape_until(server, lambda seen: counted(seen) == {r: answered[r] for r in before})  # one scrape
    assert set(after) == set(before) and sum(counted(after).values()) == len(sent)


def stream_until(base: str, stop: threading.Event, outcomes: list[tuple[float, str, str]]) -> None:
    """Streamed completions back to back until ``stop``: (start time, replica or '', 'ok' or the error) each."""
    request = {"prompt": "Hi", "max_tokens": 40, "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.Client(trust_env=False, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        while not stop.is_set():
            start, replica = time.monotonic(), ""
            try:
                with http.stream("POST", base + "/v1/completions", json=request) as r:
                    replica = r.headers.get(REPLICA, "")
                    lines = [line for line in r.iter_lines() if line]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]" and '"error"' not in lines[-2]
                outcomes.append((start, replica, "ok" if ok else f"{r.status_code}: {lines[-2:]}"))
            except httpx.HTTPError as e:
                outcomes.append((start, replica, f"{type(e).__name__}: {e}"))


def test_a_killed_replica_is_replaced_and_only_its_requests_fail(replicas):
    base, driver = replicas
    workers = [p for p in driver.children(recursive=True) if "ServeReplica" in " ".join(p.cmdline())]
    assert len(workers) == 2
    stop, outcomes = threading.Event(), []
    clients = [threading.Thread(target=stream_until, args=(base, stop, outcomes)) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        deadline = time.monotonic() + 30
        while len({r for _, r, _ in outcomes}) < 2:
            assert time.monotonic() < deadline, "both replicas did not answer"
            time.sleep(0.05)
        before = {r for _, r, _ in outcomes}
        killed_at = time.monotonic()
        workers[0].kill()  # mid-run: four clients are streaming
        deadline = killed_at + 60
        while not (new := [t for t, r, _ in outcomes if r and r not in before]):
            assert time.monotonic() < deadline, "the killed replica was not replaced"
            time.sleep(0.1)
        replaced_at = min(new)
        time.sleep(2)  # requests to the new replica and the surviving one
    finally:
        stop.set()
        for c in clients:
            c.join(60)
    failed = [(t - killed_at, r, what) for t, r, what in outcomes if what != "ok"]
    assert len(failed) <= len(clients) and all(t < 1.0 for t, _, _ in failed), failed  # only requests it held
    after = collections.Counter(r for t, r, what in outcomes if t > replaced_at and what == "ok")
    assert len(after) == 2 and set(after) != before, after  # the survivor and the replacement both serve
    scrape_until(base, lambda seen: set(seen) == set(after))  # the killed replica's series are gone


def test_without_replicas_ray_is_not_imported(tmp_path):
    """The single-process path, run up to uvicorn's loop, never imports Ray."""
    script = ("import sys, uvicorn\n"
              "uvicorn.Server.run = lambda self, sockets=None: None\n"
              "from graphllm.cli import main\n"
              f"assert main(['serve', '-m', {str(TINY)!r}, '--executor', 'reference', '--port', '0']) == 0\n"
              "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_replicas_without_ray_is_one_error_line():
    script = ("import sys\nsys.modules['ray'] = None\nfrom graphllm.cli import main\n"
              f"sys.exit(main(['serve', '-m', {str(TINY)!r}, '--replicas', '2']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --replicas needs Ray Serve (ray is not installed): "
                                             "pip install 'graphllm[ray]'"]


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{port}", "error: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused): start one "
                         "there with `ray start --head`, or check --ray-address"),
    ("nowhere", "error: --ray-address must be HOST:PORT, ray://HOST:PORT or auto, got 'nowhere'"),
])
def test_an_unreachable_ray_address_is_one_error_line(address, message):
    """ray.init would retry an address nobody answers for minutes: it is checked first (before any compile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    address, message = address.format(port=port), message.format(port=port)
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", "serve", "-m", str(TINY), "--replicas", "2",
                        "--ray-address", address], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (2, message)


def test_replica_flags_need_replicas():
    r = subprocess.run([sys.executable, "-m", "graphllm.cli", "serve", "-m", str(TINY), "--threads-per-replica", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
        "error: --threads-per-replica and --ray-address go with --replicas N")


def test_the_driver_compiles_the_build_the_cache_loads(tmp_path, monkeypatch):
    """compiled_build (what `serve --replicas` compiles) makes the cache entry LLM.load then uses as it is."""
    import graphllm.codegen.compile
    from graphllm.pipeline import build
    from graphllm.runtime.builds import compiled_build

    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path))
    graph = build(TINY).graph
    folder = compiled_build(graph, threads=1, notes=[])
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [folder.name]

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(graphllm.codegen.compile, "compile_graph", no_compile)
    assert compiled_build(graph, threads=1, notes=[]) == folder
    assert LLM.load(TINY, threads=1).complete("Hi").text == LLM.load(TINY, artifact=folder, threads=1).complete("Hi").text
