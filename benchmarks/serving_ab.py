"""A/B of serving setups with benchmarks/load_test.py, alternating: each round starts every setup in turn (the
order reversed on odd rounds), runs 1, 8 and 32 concurrent clients of 64-token completions, and stops it.

    python benchmarks/serving_ab.py [-m MODEL] [--rounds 2] [--setups NAME,...] [--llama-server BIN] [--out DIR]

Setups: one process (`--max-batch 8 -t 2`, and `-t 1`), `--replicas 2 --threads-per-replica 1` (8 slots each)
and, with --llama-server, llama.cpp's `llama-server -np 8 -cb -t 2` on the same GGUF (-m required). Prints one line
per measurement (with the 1-minute load average beside it) and writes DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import socket
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {"process-t2": ["--max-batch", "8", "-t", "2"],  # graphllm serve flags of each setup
          "replicas-2x1": ["--max-batch", "8", "--replicas", "2", "--threads-per-replica", "1"],
          "process-t1": ["--max-batch", "8", "-t", "1"]}
LLAMA_SERVER = "llama-server"
LLAMA_SERVER_FLAGS = ["-np", "8", "-cb", "-t", "2", "-c", "4096"]  # 8 slots of 512 tokens, as graphllm's -c 512
LOADS = [(1, 8), (8, 32), (32, 64)]  # (clients, requests)
WARM_CLIENTS = 16  # at least every setup's slots (2 replicas x 8)
LOAD_TEST = Path(__file__).with_name("load_test.py")


def start(model: str | None, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`graphllm serve` on a free port; the process and its base URL once it serves."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graphllm.cli", "serve", *(["-m", model] if model else []),
                                 "--port", "0", "--no-request-log", *flags], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not (m := re.search(r"at (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, m.group(1)


def start_llama_server(binary: str, model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """llama.cpp's server on a free port; the process and its base URL once /health answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "-m", model, "--port", str(port), *LLAMA_SERVER_FLAGS], stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run(["curl", "-sf", url + "/health"], capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"llama-server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, url


def measure(url: str, clients: int, requests: int, report: Path) -> dict:
    """One load_test run's report."""
    subprocess.run([sys.executable, str(LOAD_TEST), "--url", url, "--clients", str(clients), "--requests",
                    str(requests), "--max-tokens", "64", "--json", str(report)], capture_output=True, check=True)
    return json.loads(report.read_text())


def main() -> None:
    """Run the rounds; print and write the measurements."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None, help="model (default: graphllm's default, SmolLM2-135M Q4_1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    p.add_argument("--llama-server", default=None, help="llama-server binary: adds the setup llama-server (-np 8 -cb -t 2)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "serving_ab")
    a = p.parse_args()
    names = [n.strip() for n in a.setups.split(",") if n.strip()]
    if unknown := [n for n in names if n not in SETUPS]:
        p.error(f"unknown setup(s): {', '.join(unknown)}")
    if a.llama_server:
        if not a.model:
            p.error("--llama-server needs -m FILE.gguf (the same file for both servers)")
        names.append(LLAMA_SERVER)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rnd in range(a.rounds):
        for i, name in enumerate(names[::1 if rnd % 2 == 0 else -1]):
            log = a.out / f"server-{rnd}-{i}.log"
            proc, url = (start_llama_server(a.llama_server, a.model, log) if name == LLAMA_SERVER
                         else start(a.model, SETUPS[name], log))
            try:
                # every KV slot once: a slot's first use pays the first touch of its cache pages (~250 ms a slot at
                # 4096 tokens on this VM); llama-server clears its whole cache at start, so it paid that already
                measure(url, WARM_CLIENTS, WARM_CLIENTS, a.out / "warmup.json")
                for clients, requests in LOADS:
                    load = os.getloadavg()[0]
                    r = measure(url, clients, requests, a.out / f"{rnd}-{i}-{clients}.json")
                    row = {"setup": name, "round": rnd, "clients": clients, "load": round(load, 1),
                           "tokens_per_s": round(r["tokens_per_s"], 1), "p50_s": round(r["latency"]["p50"], 2),
                           "p95_s": round(r["latency"]["p95"], 2), "ok": r["ok"], "errors": r["errors"]}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
