"""A/B of serving setups with benchmarks/load_test.py, alternating: each round starts every setup in turn (the
order reversed on odd rounds), runs 1, 8 and 32 concurrent clients of 64-token completions, and stops it.

    python benchmarks/replicas_ab.py [-m MODEL] [--rounds 2] [--out DIR]

Setups: one process (`--max-batch 8 -t 2`, and `-t 1`) and `--replicas 2 --threads-per-replica 1` (8 slots
each). Prints one line per measurement (with the 1-minute load average beside it) and writes DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SETUPS = {"1 process, -t 2": ["--max-batch", "8", "-t", "2"],
          "2 replicas x 1 thread": ["--max-batch", "8", "--replicas", "2", "--threads-per-replica", "1"],
          "1 process, -t 1": ["--max-batch", "8", "-t", "1"]}
LOADS = [(1, 8), (8, 32), (32, 64)]  # (clients, requests)
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
    p.add_argument("--out", type=Path, default=Path("replicas_ab"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rnd in range(a.rounds):
        for i, (name, flags) in enumerate(list(SETUPS.items())[::1 if rnd % 2 == 0 else -1]):
            proc, url = start(a.model, flags, a.out / f"server-{rnd}-{i}.log")
            try:
                measure(url, 2, 4, a.out / "warmup.json")
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
